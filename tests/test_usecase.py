"""The labeler's use case driver: its commands parse, it skips finished steps, and its summary reads their files."""

import argparse
import json
import shlex
from pathlib import Path

from action_images.jobs import usecase
from action_images.jobs.usecase import Plan


def test_commands_parse_with_the_real_parsers():
    from action_images.cli import build_parser

    parser = build_parser()
    plan = Plan()
    names = [n for n, _, _ in plan.steps()]
    assert names == ["collect", "label", "train_labeled", "train_true", "eval_labeled", "eval_true"]
    for name, _, cmd in plan.steps():
        words = shlex.split(cmd)
        assert words[0] == "action-images"
        args = parser.parse_args(words[1:])
        assert args.command == name.split("_")[0]
    # the two policies differ only in their data and output folder
    tl, tt = (shlex.split(c) for n, _, c in plan.steps() if n.startswith("train_"))
    diff = [(a, b) for a, b in zip(tl, tt) if a != b]
    assert diff == [(plan.labeled_data, plan.true_data), (f"{plan.run_root}/bc_labeled", f"{plan.run_root}/bc_true")]


def test_run_skips_done_steps_and_summarises(tmp_path, monkeypatch, capsys):
    p = Plan(data_root=str(tmp_path / "d"), run_root=str(tmp_path / "r"))
    label_json = Path(p.labeled_data) / "meta" / "label.json"
    for name, done, _ in p.steps():                      # every step but "label" has finished
        path = Path(done)
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("eval_"):
            path.write_text(json.dumps({"overall": {"successes": 3, "episodes": 4, "success_rate": 0.75,
                                                    "success_ci95": [0.3, 0.95]}}))
        elif name != "label":
            path.write_text("{}")
    rows = [{"frames": 10, "disagree_fraction": 0.1, "vs_original": {"position_cm_median": 1.0,
                                                                      "state_position_cm_median": 3.0,
                                                                      "gripper_agreement": 1.0}},
            {"frames": 30, "disagree_fraction": 0.0, "vs_original": {"position_cm_median": 2.0,
                                                                      "state_position_cm_median": 5.0,
                                                                      "gripper_agreement": 0.5}}]
    calls = []

    def fake_run(argv):                                  # the label step writes its summary
        calls.append(argv[3])
        label_json.write_text(json.dumps({"episodes": rows, "valid_fraction": 0.9, "seconds": 12.0}))
        return argparse.Namespace(returncode=0)

    monkeypatch.setattr(usecase.subprocess, "run", fake_run)
    out = tmp_path / "s.json"
    assert usecase.main(["run", "--data-root", p.data_root, "--run-root", p.run_root, "--json", str(out)]) == 0
    assert calls == ["label"]
    s = json.loads(out.read_text())
    assert s["policies"]["labeled"]["successes"] == 3 and s["labels"]["frames"] == 40
    assert abs(s["labels"]["position_cm_median_per_episode_mean"] - 1.75) < 1e-9
    assert abs(s["labels"]["disagree_fraction"] - 0.025) < 1e-9
    capsys.readouterr()
    assert usecase.main(["commands", "--train-steps", "0"]) == 2
    assert "--train-steps" in capsys.readouterr().err
