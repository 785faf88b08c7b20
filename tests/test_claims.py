"""The claims table: commands that parse, cells only from measured runs, never an invented number."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
import torch

from action_images import claims, claims_runner, evaluate, train
from action_images.claims import CONDITIONS, METHODS, Method
from action_images.wam import WAMConfig, WorldActionModel


def tiny_run(path: Path, log: list[dict] | None = None) -> Path:
    """A run folder holding a cpu-tiny world action model (seed 0) and, when given, its training log rows."""
    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny")).save_pretrained(path)
    if log is not None:
        (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return path


def test_every_printed_command_parses():
    for m in METHODS:
        p = argparse.ArgumentParser()
        train.add_arguments(p)
        first, *rest = claims.train_command(m).split(" && ")
        p.parse_args(shlex.split(first)[2:])
        assert [r.split()[:4] for r in rest] == [["python", "-m", "action_images.decode_head", "train"]] * len(rest)
        for c in CONDITIONS:
            p = argparse.ArgumentParser()
            evaluate.add_arguments(p)
            args = p.parse_args(shlex.split(claims.eval_command(m, c, 5, 31337))[2:])
            assert args.seed == 31337 and args.episodes == 5 and args.tasks == "all"


def test_table_cells_come_from_metrics_files(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, [{"step": 40, "elapsed_s": 600.0}])
    ev = tmp_path / "ev" / "x_heldout_rigs"
    ev.mkdir(parents=True)
    tasks = {"reach_target": {"successes": 3, "episodes": 4}, "press_button": {"successes": 1, "episodes": 4}}
    ev.joinpath("metrics.json").write_text(json.dumps({"settings": {"episodes": 4, "seed": 7}, "overall": {
        "successes": 4, "episodes": 8, "success_rate": 0.5, "success_ci95": [0.2, 0.8],
        "latency": {"mean_ms": 12.3}}, "tasks": tasks}))
    methods = (Method("x", "model x", "r.json", str(run)), Method("y", "model y", "r.json", str(tmp_path / "none")))
    text = claims.table(str(tmp_path / "ev"), methods)
    row_x = next(line for line in text.splitlines() if line.startswith("| model x"))
    assert "**4/8** = 50 % (20 %–80 %)" in row_x and "40 steps, 10 min" in row_x and "12 ms" in row_x
    assert row_x.count("not measured") == len(CONDITIONS)             # 2 closed-loop conditions + open loop
    assert "| model y | – | not trained |" in text
    assert "| x | held-out rigs | 3/4 | 1/4 |" in text
    assert claims.table(str(tmp_path / "ev"), methods, episodes=4, seed=7) == text
    with pytest.raises(ValueError, match="ran episodes 4, not 20"):                # a cell never mixes settings
        claims.table(str(tmp_path / "ev"), methods, episodes=20, seed=7)


def test_table_fills_the_marked_block(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "METHODS", ())
    doc = tmp_path / "claims.md"
    doc.write_text("intro\n<!-- claims table -->\nold\n<!-- /claims table -->\nafter\n")
    assert claims.main(["table", "--eval-dir", str(tmp_path), "--out", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n<!-- claims table -->\nClosed loop, 20 episodes per task and camera condition, "
                           "seed 31337") and "| method" in text and "old" not in text and text.endswith("after\n")
    assert claims.main(["table", "--episodes", "0"]) == 2


def test_train_runs_only_what_is_missing(tmp_path, monkeypatch):
    """``claims train`` runs each missing row's commands (the model, then an extra head) and skips what exists."""
    calls = []
    monkeypatch.setattr(claims_runner.subprocess, "run", lambda argv: calls.append(argv) or argparse.Namespace(returncode=0))
    done = tmp_path / "done"
    done.mkdir()
    (done / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(claims, "METHODS", (
        Method("a", "a", "r.json", str(done)),
        Method("b", "b", "r.json", str(tmp_path / "missing")),
        Method("c", "c", "r.json", str(done), train_cmd=f"python -m action_images.decode_head train --out "
                                                        f"{tmp_path / 'head'}", extra=str(tmp_path / "head"))))
    assert claims.main(["train"]) == 0
    assert [c[1:4] for c in calls] == [["-m", "action_images.cli", "train"],
                                       ["-m", "action_images.decode_head", "train"]]
    assert calls[0][calls[0].index("--out") + 1] == str(tmp_path / "missing")
    assert "--resume" not in calls[0]


def test_train_resumes_a_run_that_stopped_before_its_end(tmp_path, monkeypatch):
    """A run killed mid-way has exported weights at its last checkpoint; ``claims train`` continues it."""
    calls = []
    monkeypatch.setattr(claims_runner.subprocess, "run", lambda argv: calls.append(argv) or argparse.Namespace(returncode=0))
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    (run / "train_config.json").write_text(json.dumps({"optim": {"steps": 100}}))
    (run / "log.jsonl").write_text(json.dumps({"step": 40, "elapsed_s": 60.0}) + "\n")
    monkeypatch.setattr(claims, "METHODS", (Method("a", "a", "r.json", str(run)),))
    assert claims.main(["train"]) == 0
    assert len(calls) == 1 and calls[0][-1] == "--resume" and calls[0][calls[0].index("--out") + 1] == str(run)
    (run / "log.jsonl").write_text(json.dumps({"step": 100, "elapsed_s": 150.0}) + "\n")
    assert claims.main(["train"]) == 0 and len(calls) == 1                    # finished: nothing to do


def test_run_evaluates_only_finished_runs_and_never_keeps_results_of_other_weights(tmp_path, monkeypatch, capsys):
    """``claims run`` skips a run still training; an evaluation of other weights than the run holds now is done
    again (``--overwrite``), an interrupted one of the same weights continues (``--resume``), a finished one is
    kept."""
    calls = []
    monkeypatch.setattr(claims_runner.subprocess, "run", lambda argv: calls.append(argv) or argparse.Namespace(returncode=0))
    run = tmp_path / "run"
    tiny_run(run)
    (run / "train_config.json").write_text(json.dumps({"optim": {"steps": 100}}))
    (run / "log.jsonl").write_text(json.dumps({"step": 40, "elapsed_s": 60.0}) + "\n")
    m = Method("x", "x", "r.json", str(run))
    monkeypatch.setattr(claims, "METHODS", (m,))
    ev = tmp_path / "ev"
    assert claims.main(["run", "--eval-dir", str(ev), "--episodes", "4"]) == 0
    assert calls == [] and "still training (step 40 of 100)" in capsys.readouterr().err

    (run / "log.jsonl").write_text(json.dumps({"step": 100, "elapsed_s": 150.0}) + "\n")
    now = claims_runner.current_model_digest(m)
    metrics = {"settings": {"episodes": 4, "seed": 31337}, "overall": {}, "tasks": {}}
    for c, digest, done in (("train_rigs", now, True), ("heldout_rigs", "0" * 64, True), ("left_top", now, False)):
        (ev / f"x_{c}").mkdir(parents=True)
        (ev / f"x_{c}" / "episodes.jsonl").write_text(json.dumps({"model_sha256": digest}) + "\n")
        if done:
            (ev / f"x_{c}" / "metrics.json").write_text(json.dumps(metrics))
    assert claims.main(["run", "--eval-dir", str(ev), "--episodes", "4"]) == 0
    outs = {Path(c[c.index("--out") + 1]).name: c[-1] for c in calls}
    assert outs == {"x_heldout_rigs": "--overwrite", "x_left_top": "--resume"}
    assert "evaluated other weights" in capsys.readouterr().err


def test_training_minutes_add_up_over_resumed_runs(tmp_path):
    run = tiny_run(tmp_path / "run", [{"step": 10, "elapsed_s": 300.0}, {"step": 20, "elapsed_s": 600.0},  # first
                                      {"step": 30, "elapsed_s": 240.0}, {"step": 40, "elapsed_s": 480.0}])  # resumed
    # the first sitting logs 10 minutes, the resumed one 8 more: its clock starts again at 0
    facts = claims._run_facts(run)
    assert facts["steps"] == 40 and facts["minutes"] == pytest.approx(18.0)


def test_archive_copies_what_the_table_reads_and_the_table_reads_it_back(tmp_path):
    """``claims archive`` copies each trained row's facts, metrics and open loop; ``table --results`` then gives the
    same table as the run folders, and rows not run here keep their archived copies."""
    run = tmp_path / "run"
    tiny_run(run, [{"step": 40, "elapsed_s": 600.0}])
    ev = tmp_path / "ev"
    (ev / "x_left_top").mkdir(parents=True)
    (ev / "x_left_top" / "metrics.json").write_text(json.dumps({"settings": {"episodes": 4, "seed": 7}, "overall": {
        "successes": 1, "episodes": 4, "success_rate": 0.25, "success_ci95": [0.05, 0.7],
        "latency": {"mean_ms": 9.0}}, "tasks": {"reach_target": {"successes": 1, "episodes": 4}}}))
    results = tmp_path / "results"
    results.mkdir()
    (results / claims.RUNS_FILE).write_text(json.dumps({"rows": {"old": {
        "params": None, "params_millions": 3.21, "steps": 9, "minutes": 2.0, "source": "gone"}}}))
    methods = (Method("x", "model x", "r.json", str(run)), Method("old", "model old", "r.json", str(tmp_path / "no")))
    written = claims.archive(str(ev), str(results), methods)
    assert sorted(p.name for p in written) == [claims.RUNS_FILE, "x_left_top.json"]
    rows = json.loads((results / claims.RUNS_FILE).read_text())["rows"]
    assert rows["x"]["steps"] == 40 and rows["x"]["minutes"] == 10.0 and rows["old"]["params_millions"] == 3.21
    from_runs = claims.table(str(ev), methods[:1], episodes=4, seed=7)
    assert claims.table("/nonexistent", methods[:1], episodes=4, seed=7, results=str(results)) == from_runs
    archived = claims.table("/nonexistent", methods, results=str(results))
    assert "| model old | 3.21 M | 9 steps, 2 min |" in archived and "**1/4** = 25 %" in archived
    assert "| model old | – | not trained |" in claims.table(str(ev), methods)       # the run folders know less


def test_archive_rows_copies_only_the_rows_named(tmp_path, monkeypatch, capsys):
    """``archive --rows a``: a retrained run of another row (here b) leaves b's archived facts as they are."""
    runs = {}
    for key in ("a", "b"):
        runs[key] = run = tmp_path / key
        tiny_run(run, [{"step": 5, "elapsed_s": 60.0}])
    results = tmp_path / "results"
    results.mkdir()
    (results / claims.RUNS_FILE).write_text(json.dumps({"rows": {"b": {
        "params": None, "params_millions": 3.21, "steps": 9, "minutes": 2.0, "source": "the first run"}}}))
    monkeypatch.setattr(claims, "METHODS", (Method("a", "a", "r.json", str(runs["a"])),
                                            Method("b", "b", "r.json", str(runs["b"]))))
    assert claims.main(["archive", "--rows", "a", "--results", str(results), "--eval-dir", str(tmp_path)]) == 0
    rows = json.loads((results / claims.RUNS_FILE).read_text())["rows"]
    assert rows["a"]["steps"] == 5 and rows["b"]["source"] == "the first run" and rows["b"]["steps"] == 9
    assert claims.main(["archive", "--rows", "a,zz", "--results", str(results)]) == 2
    assert "--rows: no row is named zz" in capsys.readouterr().err


def test_the_published_table_is_what_the_archive_gives():
    """docs/claims.md's table regenerates, character for character, from the committed bench/results/claims."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "claims.md").read_text()
    block = doc.split("<!-- claims table -->\n", 1)[1].split("<!-- /claims table -->", 1)[0]
    results = str(root / claims.RESULTS_DIR)
    text = claims.table(str(root / "nonexistent"), METHODS, episodes=20, seed=31337, results=results)
    assert block.endswith(text)
    caption = claims.openloop_caption(claims.openloop_results("/nonexistent", METHODS, results))
    assert caption and caption in block


def test_a_run_started_from_another_counts_both_stages(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for run, steps, secs in ((first, 100, 1200.0), (second, 30, 300.0)):
        tiny_run(run, [{"step": steps, "elapsed_s": secs}])
    (second / "train_config.json").write_text(json.dumps({"model": {"init_from": str(first)}}))
    facts = claims._run_facts(second)
    assert facts["steps"] == 130 and facts["minutes"] == pytest.approx(25.0)
    (first / "log.jsonl").unlink()
    with pytest.raises(ValueError, match="log.jsonl is missing"):
        claims._run_facts(second)


def test_archive_keeps_an_open_loop_on_other_windows_out(tmp_path, capsys):
    """A dataset collected again under the same name holds other windows: its open loop is not mixed into the column."""
    run = tmp_path / "run"
    tiny_run(run, [{"step": 4, "elapsed_s": 60.0}])
    same = {"data": "d", "episodes": 2, "starts": 1, "seed": 0, "steps": 6, "views": ["a"], "keyframe_steps": [2]}
    results, ev = tmp_path / "results", tmp_path / "ev"
    results.mkdir()
    ev.mkdir()
    (results / "openloop_old.json").write_text(json.dumps({**same, "still_baseline_cm_median": 9.3}))
    (ev / "x_openloop.json").write_text(json.dumps({**same, "still_baseline_cm_median": 9.2}))
    written = claims.archive(str(ev), str(results), (Method("x", "x", "r.json", str(run)),))
    assert not (results / "openloop_x.json").exists() and len(written) == 1
    assert "openloop_old.json" in capsys.readouterr().err
    (ev / "x_openloop.json").write_text(json.dumps({**same, "still_baseline_cm_median": 9.3}))
    claims.archive(str(ev), str(results), (Method("x", "x", "r.json", str(run)),))
    assert (results / "openloop_x.json").exists()


def test_a_run_still_training_is_not_a_row_yet(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, [{"step": 40, "elapsed_s": 600.0}])
    (run / "train_config.json").write_text(json.dumps({"optim": {"steps": 100}}))
    m = Method("x", "model x", "r.json", str(run))
    assert claims.row_facts(m) is None and "| model x | – | not trained |" in claims.table(str(tmp_path), (m,))
    (run / "log.jsonl").write_text(json.dumps({"step": 100, "elapsed_s": 1500.0}) + "\n")
    assert claims.row_facts(m)["steps"] == 100


@pytest.mark.parametrize("argv, message", [
    (["openloop", "--rows", ""], "--rows: name at least one row"),
    (["openloop", "--rows", ","], "--rows: name at least one row"),
    (["openloop", "--threads", "0"], "--threads must be >= 1"),
    (["openloop", "--starts", "0"], "--starts must be >= 1"),
    (["openloop", "--sampler-steps", "0"], "--sampler-steps must be >= 1"),
    (["commands", "--rows", "nope"], "--rows: no row is named nope"),
    (["table", "--rows", "wam"], "--rows: the table always shows every row"),
    (["run", "--episodes", "0"], "--episodes must be >= 1"),
    (["run", "--seed", "-1"], "--seed must be >= 0"),
])
def test_bad_flags_fail_before_any_work_with_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(claims_runner.subprocess, "run", lambda argv: pytest.fail(f"started {argv}"))
    assert claims.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_broken_archive_is_refused_not_rewritten(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    broken = '{"rows": {"bc": {"steps": 1'
    (results / claims.RUNS_FILE).write_text(broken)
    assert claims.main(["archive", "--results", str(results), "--eval-dir", str(tmp_path)]) == 2
    assert claims.main(["table", "--results", str(results)]) == 2
    assert (results / claims.RUNS_FILE).read_text() == broken
    assert claims.main(["table", "--results", str(tmp_path / "none")]) == 2          # not an archive: no table
    assert claims.main(["archive", "--results", str(results / claims.RUNS_FILE)]) == 2   # a file
    (results / claims.RUNS_FILE).write_text(json.dumps({"rows": {"x": {"params_millions": 1.0, "steps": 1,
                                                                         "minutes": 1.0}}}))
    (results / "x_train_rigs.json").write_text("{not json")
    with pytest.raises(ValueError, match="x_train_rigs.json: not JSON"):
        claims.table(str(tmp_path), (Method("x", "x", "r.json", str(tmp_path)),), results=str(results))
    doc = tmp_path / "doc"
    doc.mkdir()
    assert claims.main(["table", "--results", str(results), "--out", str(doc)]) == 2
    assert "is a folder" in capsys.readouterr().err
