"""Thin wrapper: ``python bench/sim.py --json bench/results/sim.json`` == ``action-images bench sim ...``."""
import argparse

from action_images.benchmarks.sim import add_arguments, run

if __name__ == "__main__":
    p = argparse.ArgumentParser(description="simulator benchmark")
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
