"""Thin wrapper: ``python bench/codec.py --json bench/results/codec.json`` == ``action-images bench codec ...``."""
from action_images.benchmarks.codec import add_arguments, run
from action_images.cliflags import Parser

if __name__ == "__main__":
    p = Parser(description="codec benchmark")
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
