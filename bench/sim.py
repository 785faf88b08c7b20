"""Thin wrapper: ``python bench/sim.py --json bench/results/sim.json`` == ``action-images bench sim ...``."""
from action_images.benchmarks.sim import add_arguments, run
from action_images.cliflags import Parser

if __name__ == "__main__":
    p = Parser(description="simulator benchmark")
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
