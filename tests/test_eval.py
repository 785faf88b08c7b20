"""``action-images eval`` / ``demo``: valid metrics.json, a self-contained HTML report, seeds, CLI routing."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from action_images import demo, evaluate
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny")).save_pretrained(path)
    return path


def parse(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href")]


def check_report(out: Path) -> Links:
    """Every referenced file exists, relative to the report's folder; strict JSON."""
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    links = Links()
    links.feed((out / "report.html").read_text())
    assert "table" in links.tags and links.refs
    for ref in links.refs:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref
        assert (out / ref).is_file(), ref
    return metrics, links


@pytest.fixture(scope="module")
def eval_run(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    args = parse(evaluate, ["--checkpoint", str(checkpoint), "--tasks", "reach_target,press_button", "--episodes",
                            "2", "--out", str(out), "--image-size", "32", "--steps", "1", "--max-steps", "4",
                            "--videos", "1", "--seed", "7", "--no-progress", "--threads", "1",
                            "--disagree-px", "2.5"])
    assert evaluate.run(args) == 0
    return out


def test_eval_writes_valid_metrics_and_report(eval_run):
    metrics, links = check_report(eval_run)
    assert metrics["command"] == "eval" and metrics["seed"] == 7 and metrics["arguments"]["episodes"] == 2
    assert set(metrics["tasks"]) == {"reach_target", "press_button"}
    for m in metrics["tasks"].values():
        assert m["episodes"] == 2 and 0.0 <= m["success_ci95"][0] <= m["success_ci95"][1] <= 1.0
        assert m["latency"]["count"] >= 2 and m["latency"]["p95_ms"] >= m["latency"]["p50_ms"] > 0
        assert m["mean_episode_length"] <= 4
    assert metrics["overall"]["episodes"] == 4 and metrics["open_loop"] is None
    assert metrics["policy"]["disagree_px"] == 2.5
    seeds = [e["seed"] for e in metrics["episodes"]]
    assert len(set(seeds)) == 4
    assert seeds[:2] == [evaluate.episode_seed(7, "reach_target", k) for k in range(2)]
    assert set(links.refs) >= {"success.png", "metrics.json", "videos/reach_target_ep000.gif",
                               "videos/press_button_ep000.gif"}
    assert metrics["videos"] == {"reach_target": ["videos/reach_target_ep000.gif"],
                                 "press_button": ["videos/press_button_ep000.gif"]}


def test_report_folder_can_move(eval_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(eval_run, moved)
    check_report(moved)


def test_rollout_strip_from_an_eval_video(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    from action_images import report

    video = np.zeros((7, 4, 6, 3), np.uint8)
    video[:, 0, 0, 0] = np.arange(7) * 10                                      # frame index, readable back
    iio.imwrite(tmp_path / "ep.gif", video, loop=0)
    idx = report.save_rollout_strip(tmp_path / "ep.gif", tmp_path / "strip.png", frames=3, zoom=2)
    assert idx == [0, 3, 6]
    strip = iio.imread(tmp_path / "strip.png")
    assert strip.shape == (3 * 4 * 2, 6 * 2, 3)
    assert [strip[k * 8, 0, 0] for k in range(3)] == [0, 30, 60]
    assert report.main(["strip", str(tmp_path / "missing.gif"), str(tmp_path / "x.png")]) == 2


def test_eval_jobs_split_gives_the_same_episodes(checkpoint, tmp_path):
    """--jobs 2 runs the (task, episode) pairs in two worker processes; every record matches the serial run."""
    def run(jobs, out):
        args = parse(evaluate, ["--checkpoint", str(checkpoint), "--tasks", "reach_target,press_button", "--episodes",
                                "2", "--out", str(out), "--image-size", "32", "--steps", "1", "--max-steps", "3",
                                "--videos", "1", "--seed", "3", "--no-progress", "--jobs", str(jobs)])
        assert evaluate.run(args) == 0
        return json.loads((out / "metrics.json").read_text())

    serial, parallel = run(1, tmp_path / "serial"), run(2, tmp_path / "parallel")
    drop = ("wall_s", "latency_parts_s")                                       # timings differ, nothing else may
    assert [{k: v for k, v in e.items() if k not in drop} for e in serial["episodes"]] == \
        [{k: v for k, v in e.items() if k not in drop} for e in parallel["episodes"]]
    assert serial["videos"] == parallel["videos"]
    assert (tmp_path / "parallel" / parallel["videos"]["press_button"][0]).is_file()
    assert parallel["policy"]["views"] == serial["policy"]["views"] and parallel["policy"]["jobs"] == 2
    assert parallel["tasks"]["press_button"]["decisions"] == serial["tasks"]["press_button"]["decisions"]


def test_eval_rejects_bad_input(checkpoint, tmp_path, capsys):
    assert evaluate.run(parse(evaluate, ["--checkpoint", str(checkpoint), "--tasks", "fly", "--out",
                                         str(tmp_path)])) == 2
    assert "unknown task" in capsys.readouterr().err
    assert evaluate.run(parse(evaluate, ["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path)])) == 2
    assert evaluate.run(parse(evaluate, ["--checkpoint", str(checkpoint), "--out", str(tmp_path),
                                         "--disagree-px", "0"])) == 2
    assert "--disagree-px" in capsys.readouterr().err
    assert evaluate.run(parse(evaluate, ["--checkpoint", str(checkpoint), "--out", str(tmp_path),
                                         "--jobs", "0"])) == 2
    assert "--jobs" in capsys.readouterr().err


def test_perturbed_cameras_episode_seeds_are_reproducible(checkpoint, tmp_path):
    metrics = evaluate.evaluate(WorldActionModel.from_pretrained(checkpoint), ["reach_target"], 1, tmp_path / "a",
                                seed=1, image_size=32, perturb_cameras=True, steps=1, max_steps=2, videos=0,
                                progress=False)
    again = evaluate.evaluate(WorldActionModel.from_pretrained(checkpoint), ["reach_target"], 1, tmp_path / "b",
                              seed=1, image_size=32, perturb_cameras=True, steps=1, max_steps=2, videos=0,
                              progress=False)
    assert metrics["episodes"][0]["seed"] == again["episodes"][0]["seed"]
    assert metrics["episodes"][0]["success"] == again["episodes"][0]["success"]


def test_demo_quick_with_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.run(parse(demo, ["--quick", "--checkpoint", str(checkpoint), "--out", str(out),
                                 "--no-progress"])) == 0
    text = capsys.readouterr().out
    assert "reach_target" in text and "report:" in text and str(out.resolve() / "report.html") in text
    metrics, _ = check_report(out)
    assert metrics["command"] == "demo" and metrics["overall"]["episodes"] == 1


def test_demo_without_checkpoint_says_how_to_make_one(tmp_path, capsys):
    assert demo.run(parse(demo, ["--checkpoint", str(tmp_path / "missing")])) == 1
    err = capsys.readouterr().err
    assert "action-images train" in err and "checkpoints/cpu-small" in err


def test_cli_routes_eval_demo_and_bench_policy():
    from action_images.cli import build_parser

    p = build_parser()
    a = p.parse_args(["eval", "--checkpoint", "c", "--out", "o", "--perturb-cameras"])
    assert a._run is evaluate.run and a.perturb_cameras
    assert p.parse_args(["demo", "--quick"])._run is demo.run
    b = p.parse_args(["bench", "policy", "--preset", "cpu-tiny"])
    from action_images.benchmarks import policy
    assert b._bench is policy.run


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(eval_run):
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--dump-dom", (eval_run / "report.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "closed-loop evaluation" in dom.stdout and "reach_target" in dom.stdout
    shot = eval_run / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--screenshot={shot}", "--window-size=1200,1600", (eval_run / "report.html").resolve().as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
