"""Two evaluations of the same episodes (same seed, tasks and rigs), compared episode by episode: per task, how many
episodes the second wins (succeeds where the first failed) and loses, and the exact two-sided sign test on those.

    python bench/paired_episodes.py bench/results/anneal/train_rigs_100.json \
        bench/results/push_more_demos/all_train_rigs_100.json
    python bench/paired_episodes.py bench/results/on_the_table/push_train_rigs_100.json \
        bench/results/history/push_stack_train_rigs_100.json --tasks push_cube
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from action_images.cliflags import Parser
from action_images.metrics import paired_outcomes


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the first evaluation's metrics.json")
    p.add_argument("new", help="the second evaluation's metrics.json (its episodes are looked up in base)")
    p.add_argument("--tasks", default=None,
                   help="compare these tasks only, e.g. push_cube (default: every task of new)")
    args = p.parse_args(argv)
    try:
        base, new = (json.loads(Path(f).read_text())["episodes"] for f in (args.base, args.new))
        if args.tasks is not None:
            keep = [t for t in args.tasks.split(",") if t]
            missing = sorted(set(keep) - {e["task"] for e in new})
            if missing or not keep:
                raise ValueError(f"--tasks: {missing or args.tasks!r} not among {args.new}'s tasks")
            new = [e for e in new if e["task"] in keep]
        tasks = list(dict.fromkeys(e["task"] for e in new))
        rows = {t: paired_outcomes(base, [e for e in new if e["task"] == t]) for t in tasks}
        rows["all"] = paired_outcomes(base, new)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"paired_episodes: {e}", file=sys.stderr)
        return 2
    print(f"{'task':<14} {'episodes':>8} {'both':>5} {'won':>4} {'lost':>5} {'sign test p':>12}")
    for t, r in rows.items():
        print(f"{t:<14} {r['episodes']:>8} {r['both']:>5} {r['won']:>4} {r['lost']:>5} {r['sign_test_p']:>12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
