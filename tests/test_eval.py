"""``action-images eval``: valid metrics.json, a self-contained HTML report, seeds, cameras, videos, CLI routing."""

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
from action_images.evaluate import EvalSettings
from action_images.policy import PolicySettings
from action_images.seeds import episode_seed
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
                            "2", "--out", str(out), "--image-size", "32", "--sampler-steps", "1", "--max-steps", "4",
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
    header = json.loads((eval_run / "episodes.jsonl").read_text().splitlines()[0])
    assert len(metrics["model_sha256"]) == 64 and metrics["model_sha256"] == header["model_sha256"]
    assert metrics["policy"]["disagree_px"] == 2.5 and metrics["policy"]["sampler_steps"] == 1
    assert metrics["settings"]["policy"]["sampler_steps"] == 1 and metrics["settings"]["max_steps"] == 4
    seeds = [e["seed"] for e in metrics["episodes"]]
    assert len(set(seeds)) == 4
    assert seeds[:2] == [episode_seed(7, "reach_target", k) for k in range(2)]
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
                                "2", "--out", str(out), "--image-size", "32", "--sampler-steps", "1", "--max-steps",
                                "3",
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
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    (broken / "meta" / "info.json").write_text("{")
    (tmp_path / "lpips.pt").write_bytes(b"not weights")
    for extra, flag in ((["--open-loop-data", str(broken)], "--open-loop-data"),
                        (["--lpips-weights", str(tmp_path / "lpips.pt")], "--lpips-weights")):
        assert evaluate.run(parse(evaluate, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                                             *extra])) == 2               # before any episode: nothing written
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and not (tmp_path / "o").exists(), err


def test_eval_never_writes_over_files_it_did_not_make(checkpoint, tmp_path, capsys):
    """--out an existing file, or a folder with files but no episodes.jsonl, is refused before any episode runs;
    --overwrite is the way to say yes."""
    flags = ["--checkpoint", str(checkpoint), "--tasks", "reach_target", "--episodes", "1", "--image-size", "32",
             "--sampler-steps", "1", "--max-steps", "2", "--videos", "0", "--no-progress", "--threads", "1"]
    (tmp_path / "afile").write_text("keep")
    assert evaluate.run(parse(evaluate, [*flags, "--out", str(tmp_path / "afile")])) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "keep"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "metrics.json").write_text("keep")
    assert evaluate.run(parse(evaluate, [*flags, "--out", str(theirs)])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and (theirs / "metrics.json").read_text() == "keep"
    assert evaluate.run(parse(evaluate, [*flags, "--out", str(theirs), "--overwrite"])) == 0
    assert json.loads((theirs / "metrics.json").read_text())["overall"]["episodes"] == 1


def test_perturbed_cameras_move_every_episode_reproducibly(checkpoint, tmp_path):
    """--perturb-cameras: each episode's cameras stand elsewhere than the nominal rig and than the other episode's,
    and a rerun puts them in the same places."""
    model = WorldActionModel.from_pretrained(checkpoint)

    def positions(perturb, out):
        s = EvalSettings(tasks=("reach_target",), episodes=2, seed=1, image_size=32, perturb_cameras=perturb,
                         max_steps=1, videos=0, policy=PolicySettings(sampler_steps=1))
        m = evaluate.evaluate(model, s, tmp_path / out, progress=False)
        return [e["camera_positions"] for e in m["episodes"]], [e["seed"] for e in m["episodes"]]

    nominal, _ = positions(False, "nominal")
    moved, seeds = positions(True, "a")
    again, seeds_again = positions(True, "b")
    assert moved == again and seeds == seeds_again
    assert nominal[0] == nominal[1] and set(nominal[0]) == {"front", "left", "right"}
    for ep in moved:
        for name, pos in ep.items():
            assert max(abs(a - b) for a, b in zip(pos, nominal[0][name])) > 1e-3, name
    assert moved[0] != moved[1]


def test_eval_cameras_follow_the_checkpoint(tmp_path, capsys):
    """A checkpoint that names its cameras: the policy sees them and only they are rendered (no warning); --cameras
    adds rendered views without changing what the model sees; a policy camera that is not rendered is refused."""
    torch.manual_seed(0)
    ckpt = tmp_path / "named"
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["left", "right"])).save_pretrained(ckpt)
    base = ["--checkpoint", str(ckpt), "--tasks", "reach_target", "--episodes", "1", "--image-size", "32",
            "--sampler-steps", "1", "--max-steps", "1", "--videos", "0", "--no-progress"]
    capsys.readouterr()
    assert evaluate.run(parse(evaluate, base + ["--out", str(tmp_path / "a")])) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["policy"]["views"] == ["left", "right"] and m["policy"]["cameras"] == ["left", "right"]
    assert set(m["episodes"][0]["camera_positions"]) == {"left", "right"}
    assert "warning" not in capsys.readouterr().err
    assert evaluate.run(parse(evaluate, base + ["--out", str(tmp_path / "b"), "--cameras", "front,left,right"])) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["policy"]["views"] == ["left", "right"] and m["policy"]["cameras"] == ["front", "left", "right"]
    assert evaluate.run(parse(evaluate, base + ["--out", str(tmp_path / "c"), "--cameras", "front,left"])) == 2
    assert "--policy-cameras" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_eval_old_flag_names_still_work_with_a_note(checkpoint, capsys):
    a = parse(evaluate, ["--checkpoint", str(checkpoint), "--out", "o", "--steps", "3", "--policy-views", "left,top"])
    assert a.sampler_steps == 3 and a.policy_cameras == "left,top"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--steps is deprecated, use --sampler-steps" in err[0]
    assert "--policy-views is deprecated, use --policy-cameras" in err[1]
    a = parse(evaluate, ["--checkpoint", str(checkpoint), "--out", "o"])
    assert a.sampler_steps == 10 and a.policy_cameras is None and capsys.readouterr().err == ""


def test_eval_videos_are_upscaled_nearest_neighbour(eval_run):
    """Each 32 px view becomes 256 px (x8 blocks): two rows (real + generated) of three views."""
    import imageio.v3 as iio

    frames = iio.imread(eval_run / "videos" / "reach_target_ep000.gif", index=None)
    assert frames.shape[1:3] == (2 * 256, 3 * 256)
    top = frames[0, :256, :256]
    assert (top.reshape(32, 8, 32, 8, -1) == top[::8, ::8][:, None, :, None]).all()   # 8 x 8 constant blocks


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


def test_rollout_renders_only_what_the_policy_or_the_video_reads(checkpoint):
    """Rendering is most of a simulated step's cost, so a rollout turns the env's images off between replanning
    steps. The episode is the same as when every step is rendered, and only planning steps (or, when a video is
    recorded, every step) are rendered."""
    from action_images.codec import ActionImageCodec
    from action_images.policy import ActionImagesPolicy
    from action_images.rollout import rollout
    from action_images.sim import make_env

    model = WorldActionModel.from_pretrained(checkpoint)

    class AlwaysRender:
        """The env with images on every step, whatever the rollout asks."""
        def __init__(self, env):
            self.env = env

        def __getattr__(self, name):
            return getattr(self.env, name)

    def run(always: bool, record: bool):
        env = make_env("reach_target", cameras=("left", "right"), image_size=32)
        rendered = []
        real_render = env._renderer.render
        env._renderer.render = lambda *a: rendered.append(env.step_count) or real_render(*a)
        policy = ActionImagesPolicy(model, PolicySettings(sampler_steps=1, execute_k=3), seed=5)
        rec = rollout(AlwaysRender(env) if always else env, policy, 11, 10, record, ActionImageCodec(), 64)
        env.close()
        return rec, rendered

    (fast, rendered), (slow, every) = run(False, False), run(True, False)
    drop = ("wall_s", "latency_parts_s", "latency_s", "_frames")
    assert {k: v for k, v in fast.items() if k not in drop} == {k: v for k, v in slow.items() if k not in drop}
    assert fast["length"] == 10 and every == list(range(11))             # reset + 10 steps, every one rendered
    assert rendered == [0, 3, 6, 9]                                       # reset and the steps that plan (every 3)
    video, rendered_video = run(False, True)
    assert rendered_video == list(range(11)) and len(video["_frames"]) == 10
    # a model that reads past frames records every step's observation: every step is rendered
    cfg = WorldActionModel.from_pretrained(checkpoint).config
    cfg.history, cfg.history_gap = 1, 2
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    torch.manual_seed(0)
    model = WorldActionModel(cfg)
    past, rendered_past = run(False, False)
    assert rendered_past == list(range(11)) and past["length"] == 10


def test_start_jitter_starts_each_episode_elsewhere_reproducibly(checkpoint, tmp_path, capsys):
    """--start-jitter: each episode's record says where the hand started, away from the home pose and from the other
    episode's, the same on a rerun; metrics and report name it; a resume without it is refused; out of range and
    with Meta-World it is refused in one line naming the flag."""
    from action_images.sim.robot import START_POS

    base = ["--checkpoint", str(checkpoint), "--tasks", "reach_target", "--episodes", "2", "--image-size", "32",
            "--sampler-steps", "1", "--max-steps", "1", "--videos", "0", "--seed", "5", "--no-progress"]

    def starts(out, *extra):
        assert evaluate.run(parse(evaluate, [*base, "--out", str(tmp_path / out), *extra])) == 0
        m = json.loads((tmp_path / out / "metrics.json").read_text())
        return m, [e["start_position"] for e in m["episodes"]]

    _, home = starts("home")
    m, moved = starts("a", "--start-jitter", "0.08")
    _, again = starts("b", "--start-jitter", "0.08")
    assert moved == again and moved[0] != moved[1]
    for h, s in zip(home, moved):
        assert max(abs(a - b) for a, b in zip(h, START_POS)) < 0.02
        assert 0.005 < max(abs(a - b) for a, b in zip(s, START_POS)) <= 0.085
    assert m["start_jitter"] == 0.08
    assert "hand start jittered by up to 0.08 m" in (tmp_path / "a/report.html").read_text()
    capsys.readouterr()
    assert evaluate.run(parse(evaluate, [*base, "--out", str(tmp_path / "a"), "--resume", "--episodes", "3"])) == 2
    assert "start_jitter" in capsys.readouterr().err
    for bad, why in (("0.5", "--start-jitter must be in 0.0..0.12 (metres); got 0.5"),
                     ("-1", "--start-jitter must be in 0.0..0.12 (metres); got -1.0")):
        assert evaluate.run(parse(evaluate, [*base, "--out", str(tmp_path / "bad"), "--start-jitter", bad])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0]
    with pytest.raises(ValueError, match="--start-jitter is not supported with --suite metaworld: it moves"):
        EvalSettings(suite="metaworld", tasks="reach-v3", start_jitter=0.05)
