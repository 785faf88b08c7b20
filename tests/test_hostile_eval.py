"""``action-images eval`` under hostile conditions: bad flags, missing files, untrusted TorchScript, a huge
--episodes, an interrupted run resumed, a worker process killed mid-run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time

import pytest
import torch

from action_images import evaluate, rollout
from action_images.runfiles import read_jsonl
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)


def parse(argv):
    p = argparse.ArgumentParser(prog="action-images eval")
    evaluate.add_arguments(p)
    return p.parse_args(argv)


def fast(checkpoint, out, *extra):
    return ["--checkpoint", str(checkpoint), "--out", str(out), "--tasks", "reach_target,press_button",
            "--episodes", "2", "--image-size", "32", "--sampler-steps", "1", "--max-steps", "2", "--videos", "0",
            "--no-progress", *extra]


class Alarm:
    """Fail (instead of hanging) when the block takes longer than ``seconds``."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def fire(*_):
            raise TimeoutError(f"took more than {self.seconds} s")
        self.old = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# ---- bad input: one line naming the flag, exit 2, nothing written ----------------------------------------------------
@pytest.mark.parametrize("extra, flag", [
    (["--max-steps", "0"], "--max-steps"), (["--max-steps", "-5"], "--max-steps"), (["--horizon", "0"], "--horizon"),
    (["--horizon", "99"], "--horizon"), (["--execute-k", "0"], "--execute-k"), (["--cfg-scale", "nan"], "--cfg-scale"),
    (["--episodes", "0"], "--episodes"), (["--jobs", "0"], "--jobs"), (["--seed", "-1"], "--seed"),
    (["--image-size", "0"], "--image-size"), (["--videos", "-1"], "--videos"), (["--tasks", "fly"], "--tasks"),
    (["--cameras", "front,moon"], "--cameras"), (["--policy-cameras", "left"], "--policy-cameras"),
    (["--disagree-px", "0"], "--disagree-px"), (["--zoom", "0.5"], "--zoom"), (["--open-loop-data", "/no/such/dataset"], "--open-loop-data"),
    (["--lpips-weights", "/no/such/lpips.pth"], "--lpips-weights"),
    (["--i3d-weights", "/no/such/i3d.pt", "--trust-i3d-torchscript"], "--i3d-weights")])
def test_bad_input_exits_2_before_any_work(checkpoint, tmp_path, capsys, extra, flag):
    out = tmp_path / "out"
    assert evaluate.run(parse(fast(checkpoint, out, *extra))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
    assert not out.exists()                                  # no episode ran, no file was written


def test_i3d_torchscript_needs_the_trust_flag(checkpoint, tmp_path, capsys):
    weights = tmp_path / "i3d.pt"
    weights.write_bytes(b"not even torchscript")
    out = tmp_path / "out"
    assert evaluate.run(parse(fast(checkpoint, out, "--i3d-weights", str(weights)))) == 2
    err = capsys.readouterr().err
    assert "--trust-i3d-torchscript" in err and "runs code" in err and not out.exists()
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert "--trust-i3d-torchscript" in p.format_help()


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert evaluate.run(parse(fast(tmp_path / "none", tmp_path / "out"))) == 2
    assert "--checkpoint" in capsys.readouterr().err


# ---- streaming and incremental records -------------------------------------------------------------------------------
class Stop(Exception):
    pass


def stop_after(monkeypatch, n, real=True):
    """EpisodeRunner.episode runs ``n`` episodes (real ones, or instant fakes), then raises Stop."""
    original = rollout.EpisodeRunner.episode
    calls = []

    def episode(self, task, k):
        if len(calls) >= n:
            raise Stop
        calls.append((task, k))
        if real:
            return original(self, task, k)
        return {"task": task, "episode": k, "seed": 0, "success": False, "length": 1, "wall_s": 0.0, "plans": 0,
                "samples": 0, "latency_s": [], "invalid_keyframes": 0,
                "latency_parts_s": dict.fromkeys(("observe", "generate", "decode", "chunk")),
                "decisions": dict.fromkeys(("execute", "replan", "hold", "hold_invalid"), 0),
                "disagree_keyframes": 0, "keyframes": 0, "reproj_error_px": [], "views": None}
    monkeypatch.setattr(rollout.EpisodeRunner, "episode", episode)
    return calls


def test_a_billion_episodes_start_at_once(checkpoint, tmp_path, monkeypatch):
    """--episodes 1e9 is accepted; the (task, k) pairs are generated as needed, so the first episodes run at once and
    each is on disk as soon as it finishes."""
    calls = stop_after(monkeypatch, 3, real=False)
    out = tmp_path / "out"
    with Alarm(20), pytest.raises(Stop):
        evaluate.run(parse(fast(checkpoint, out, "--episodes", "1e9")))
    assert calls == [("reach_target", 0), ("reach_target", 1), ("reach_target", 2)]
    rows = read_jsonl(out / "episodes.jsonl")
    assert rows[0]["settings"]["episodes"] == 10**9 and [r["episode"] for r in rows[1:]] == [0, 1, 2]


def test_resume_continues_an_interrupted_run(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    stop_after(monkeypatch, 2)
    with pytest.raises(Stop):
        evaluate.run(parse(fast(checkpoint, out)))
    rows = read_jsonl(out / "episodes.jsonl")
    assert len(rows) == 3 and not (out / "metrics.json").exists()        # header + the 2 finished episodes
    with open(out / "episodes.jsonl", "a") as f:                         # a crash mid-write leaves a torn line
        f.write('{"task": "press_button", "epis')
    monkeypatch.undo()

    # different settings, or different weights, are refused; nothing is run or rewritten
    before = (out / "episodes.jsonl").read_bytes()
    assert evaluate.run(parse(fast(checkpoint, out, "--resume", "--sampler-steps", "2"))) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "sampler_steps" in err
    other = tmp_path / "other"
    torch.manual_seed(1)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["left", "right"])).save_pretrained(other)
    assert evaluate.run(parse(fast(other, out, "--resume"))) == 2
    assert "weights differ" in capsys.readouterr().err
    assert (out / "episodes.jsonl").read_bytes() == before

    # a record whose policy settings lack "ensemble" reads as the default, 1: --ensemble 2 is refused here, and
    # the resume below (default settings) goes on from this record
    rows = read_jsonl(out / "episodes.jsonl")
    del rows[0]["settings"]["policy"]["ensemble"]
    (out / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"task": "press_button", "epis')
    assert evaluate.run(parse(fast(checkpoint, out, "--resume", "--ensemble", "2"))) == 2
    err = capsys.readouterr().err
    assert "'ensemble': 1" in err and "'ensemble': 2" in err

    calls = stop_after(monkeypatch, 99)
    assert evaluate.run(parse(fast(checkpoint, out, "--resume"))) == 0
    assert calls == [("press_button", 0), ("press_button", 1)]            # only the unfinished episodes ran
    resumed = json.loads((out / "metrics.json").read_text())
    assert evaluate.run(parse(fast(checkpoint, tmp_path / "straight"))) == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    drop = ("wall_s", "latency_parts_s")
    assert [{k: v for k, v in e.items() if k not in drop} for e in resumed["episodes"]] == \
        [{k: v for k, v in e.items() if k not in drop} for e in straight["episodes"]]
    assert len(read_jsonl(out / "episodes.jsonl")) == 5                   # the torn line is gone


def test_resume_with_more_episodes_extends_a_finished_run(checkpoint, tmp_path, monkeypatch, capsys):
    """--resume --episodes N (more than recorded) runs only the new episodes, and they are the episodes a straight
    N-episode run has; fewer episodes than recorded are refused, with nothing rewritten."""
    out = tmp_path / "out"
    assert evaluate.run(parse(fast(checkpoint, out, "--episodes", "1"))) == 0
    calls = stop_after(monkeypatch, 99)
    assert evaluate.run(parse(fast(checkpoint, out, "--episodes", "2", "--resume"))) == 0
    assert calls == [("reach_target", 1), ("press_button", 1)]
    monkeypatch.undo()
    assert read_jsonl(out / "episodes.jsonl")[0]["settings"]["episodes"] == 2
    assert evaluate.run(parse(fast(checkpoint, tmp_path / "straight", "--episodes", "2"))) == 0
    drop = ("wall_s", "latency_parts_s", "latency_s")
    key = lambda e: (e["task"], e["episode"])                                            # noqa: E731
    extended = sorted(json.loads((out / "metrics.json").read_text())["episodes"], key=key)
    straight = sorted(json.loads((tmp_path / "straight" / "metrics.json").read_text())["episodes"], key=key)
    assert [{k: v for k, v in e.items() if k not in drop} for e in extended] == \
        [{k: v for k, v in e.items() if k not in drop} for e in straight]
    before = (out / "episodes.jsonl").read_bytes()
    assert evaluate.run(parse(fast(checkpoint, out, "--episodes", "1", "--resume"))) == 2
    assert "episodes 2 -> 1" in capsys.readouterr().err
    assert (out / "episodes.jsonl").read_bytes() == before


def test_finished_records_are_kept_unless_overwrite(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    stop_after(monkeypatch, 99, real=False)
    assert evaluate.run(parse(fast(checkpoint, out))) == 0
    before = (out / "episodes.jsonl").read_text()
    assert evaluate.run(parse(fast(checkpoint, out, "--episodes", "1"))) == 2
    assert "already holds finished episodes" in capsys.readouterr().err
    assert (out / "episodes.jsonl").read_text() == before
    assert evaluate.run(parse(fast(checkpoint, out, "--episodes", "1", "--overwrite"))) == 0
    assert len(read_jsonl(out / "episodes.jsonl")) == 1 + 2
    assert json.loads((out / "metrics.json").read_text())["overall"]["episodes"] == 2


# ---- a worker process dies -------------------------------------------------------------------------------------------
def test_a_killed_worker_fails_the_run_within_seconds(checkpoint, tmp_path, capsys):
    """SIGKILL one of the --jobs 2 workers: the run stops with a message and exit 1 instead of waiting forever."""
    import multiprocessing

    killed: list[float] = []
    out = tmp_path / "out"

    def killer():                                            # once the workers are running episodes, kill one
        t_end = time.time() + 60
        while time.time() < t_end and not killed:
            children = multiprocessing.active_children()
            if children and len(read_jsonl(out / "episodes.jsonl")) >= 2:
                os.kill(children[0].pid, signal.SIGKILL)
                killed.append(time.perf_counter())
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    with Alarm(90):
        rc = evaluate.run(parse(fast(checkpoint, out, "--jobs", "2", "--episodes", "50", "--max-steps", "4")))
    t_end = time.perf_counter()
    thread.join(1)
    assert killed and rc == 1
    err = capsys.readouterr().err
    assert "worker process died" in err and "--resume" in err
    assert t_end - killed[0] < 10, t_end - killed[0]          # noticed at once, not after the remaining episodes
    assert t_end - t0 < 80
    rows = read_jsonl(out / "episodes.jsonl")
    assert rows[0]["format"] == evaluate.EPISODES_FORMAT and len(rows) >= 2   # finished episodes are kept
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]   # the other worker is gone too


def test_workers_die_with_a_killed_evaluation(tmp_path):
    """A worker process asks the kernel to end it when its parent dies, so SIGKILL on ``eval`` leaves no worker
    playing its queued episodes."""
    import subprocess
    import sys

    ready = tmp_path / "ready"
    script = tmp_path / "parent.py"
    script.write_text(f'''
import multiprocessing, sys, time
from action_images import rollout

def child():
    assert rollout.die_with_parent()
    open({str(ready)!r}, "w").close()
    time.sleep(120)

if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=child)
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
''')
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                return "\nState:\tZ" not in f.read()
        except FileNotFoundError:
            return False

    t_end = time.time() + 60
    while not ready.exists() and time.time() < t_end:
        time.sleep(0.1)
    assert ready.exists() and alive(child)
    parent.kill()
    parent.wait()
    t_end = time.time() + 10
    while alive(child) and time.time() < t_end:
        time.sleep(0.1)
    assert not alive(child)
