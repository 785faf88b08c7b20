"""Benchmarks: each ``action-images bench`` writes strict JSON with its arguments (smoke runs on tiny settings)."""

import argparse
import json


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
