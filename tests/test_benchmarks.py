"""Benchmarks: each ``action-images bench`` writes strict JSON with its arguments (smoke runs on tiny settings)."""

import argparse
import json

import pytest


def test_benchmark_smoke(tmp_path):
    from action_images.benchmarks import train as bench
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "b.json"
    args = p.parse_args(["--presets", "cpu-tiny", "--steps", "2", "--warmup-steps", "1", "--sample-repeats", "1",
                         "--json", str(out), "--in-process"])
    assert bench.run(args) == 0
    res = json.loads(out.read_text())
    r = res["results"][0]
    assert r["preset"] == "cpu-tiny" and r["train_tokens_per_s"] > 0 and r["sample_latency_s"] > 0


def test_bench_sim_quick_run_writes_json(tmp_path):
    import re

    from action_images.benchmarks import sim as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "sim.json"
    args = p.parse_args(["--episodes", "2", "--tasks", "reach_target,press_button", "--sizes", "16",
                         "--camera-counts", "0,1", "--speed-steps", "5", "--repeats", "1", "--collect-episodes", "2",
                         "--collect-task", "reach_target", "--json", str(out)])
    assert bench.run(args) == 0
    res = json.loads(out.read_text())
    assert res["seed"] == 0 and res["arguments"]["episodes"] == 2
    assert [r["cameras"] for r in res["speed"]] == [0, 1] and all(r["steps_per_s"] > 0 for r in res["speed"])
    assert res["expert"]["press_button"]["successes"] == 2 and res["calibration"]["mean_px"] < 1.0
    assert res["collect"]["episodes"] == 2 and res["collect"]["seconds"] > 0

    def keys(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from keys(v)
        elif isinstance(x, list):
            for v in x:
                yield from keys(v)

    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in keys(res) if k not in res["expert"])
    assert bench.run(p.parse_args(["--tasks", "nope", "--collect-episodes", "0"])) == 2


def test_bench_policy_json(tmp_path, capsys):
    from action_images.benchmarks import policy as bench

    p = argparse.ArgumentParser(prog="bench policy")
    bench.add_arguments(p)
    out = tmp_path / "p.json"
    args = p.parse_args(["--preset", "cpu-tiny", "--task", "reach_target", "--image-size", "32", "--sampler-steps",
                         "1,2", "--replans", "1", "--threads", "1", "--json", str(out)])
    assert bench.run(args) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "policy" and res["arguments"]["preset"] == "cpu-tiny" and res["seed"] == 0
    assert [r["sampler_steps"] for r in res["results"]] == [1, 2]
    # the old name still works for one release, with a one-line note
    capsys.readouterr()
    assert p.parse_args(["--steps", "4"]).sampler_steps == "4"
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "--steps is deprecated, use --sampler-steps" in note[0]
    assert bench.run(p.parse_args(["--preset", "cpu-tiny", "--sampler-steps", "0"])) == 2
    assert "--sampler-steps" in capsys.readouterr().err
    assert all(r["latency"]["mean_ms"] > 0 for r in res["results"])
    rig = tmp_path / "rig.json"                      # a random rig of 3 cameras, all of them seen
    assert bench.run(p.parse_args(["--preset", "cpu-tiny", "--task", "reach_target", "--image-size", "32",
                                   "--sampler-steps", "1", "--replans", "1", "--rig-views", "3",
                                   "--json", str(rig)])) == 0
    assert json.loads(rig.read_text())["results"][0]["views"] == ["rig0", "rig1", "rig2"]
    assert bench.run(p.parse_args(["--preset", "cpu-tiny", "--rig-views", "9"])) == 2
    assert "--rig-views" in capsys.readouterr().err


def test_bench_codec_writes_strict_json_and_checks_its_flags(tmp_path, capsys):
    from action_images.benchmarks import codec as bench
    p = argparse.ArgumentParser(prog="bench codec")
    bench.add_arguments(p)
    out = tmp_path / "c.json"
    args = p.parse_args(["--poses", "3", "--num-views", "2", "--sizes", "32", "--noise", "0.05", "--repeats", "1",
                         "--throughput-frames", "4", "--json", str(out)])
    assert bench.run(args) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    res = json.loads(text)
    assert res["seed"] == 0 and {r["views"] for r in res["accuracy"]} == {2}
    assert p.parse_args(["--views", "3"]).num_views == "3"                 # the old spelling still parses
    for argv, flag in ((["--poses", "0"], "--poses"), (["--poses", "1e9"], "--poses"), (["--repeats", "0"], "--repeats"),
                       (["--num-views", "9"], "--num-views")):
        assert bench.run(p.parse_args(argv + ["--json", str(tmp_path / "x.json")])) == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bench_dataset_decodes_the_same_pixels_and_times_a_dataset(tmp_path, capsys, lerobot_root):
    from action_images.benchmarks import dataset as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "d.json"
    args = p.parse_args(["--sizes", "16,32", "--frames", "3", "--videos", "1", "--repeats", "1",
                         "--data", str(lerobot_root), "--episodes", "2", "--json", str(out)])
    assert bench.run(args) == 0
    res = json.loads(out.read_text())
    assert [r["image_size"] for r in res["sizes"]] == [16, 32] and all(r["same_pixels"] for r in res["sizes"])
    assert all(r[k] > 0 for r in res["sizes"] for k in ("default_ms", "one_thread_ms", "context_per_frame_ms"))
    d = res["dataset"]
    assert d["episodes"] == 2 and d["frames"] > 0 and d["ms_per_episode"] > 0
    assert d["videos_checked"] == 2 * d["cameras"] and d["videos_same_pixels"] == d["videos_checked"]
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    (broken / "meta" / "info.json").write_text("{")
    for bad, flag in ((["--sizes", "8"], "--sizes"), (["--sizes", "a"], "--sizes"), (["--sizes", ",,"], "--sizes"),
                      (["--repeats", "0"], "--repeats"), (["--seed", "-1"], "--seed"),
                      (["--data", str(tmp_path)], "--data"), (["--data", str(broken)], "--data")):
        assert bench.run(p.parse_args(bad)) == 2
        assert flag in capsys.readouterr().err


def test_bench_refuses_an_output_path_it_cannot_write_before_measuring(tmp_path, capsys, monkeypatch):
    """``--json`` is checked before a benchmark runs (a folder, a path under a file, an empty name); a write that
    still fails prints the results instead of losing them."""
    from action_images import benchmarks
    from action_images.cli import build_parser

    (tmp_path / "afile").write_text("")
    for path in (str(tmp_path), str(tmp_path / "afile" / "x.json"), ""):
        args = build_parser().parse_args(["bench", "dataset", "--sizes", "16", "--json", path])
        args._bench = lambda a: pytest.fail("the benchmark ran")
        assert benchmarks.run(args) == 2
        assert "--json" in capsys.readouterr().err
    assert benchmarks.json_path_error(str(tmp_path / "new" / "folder" / "x.json")) == ""

    def refuse(path, payload):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(benchmarks, "atomic_write_json", refuse)
    with pytest.raises(SystemExit) as e:
        benchmarks.write_json(tmp_path / "r.json", {"answer": 42})
    out = capsys.readouterr()
    assert e.value.code == 2 and json.loads(out.out) == {"answer": 42} and "Permission denied" in out.err
