"""The ``action-images`` command.

    action-images collect --tasks all --episodes 100 --out data/demos
    action-images train   --data data/demos --out runs/tiny --preset cpu-small --minutes 30
    action-images eval    --checkpoint runs/tiny --tasks reach,push --episodes 100 --out runs/tiny/eval
    action-images openloop --checkpoint runs/tiny --data data/demos_val --episodes 20 --json runs/tiny/ol.json
    action-images demo
    action-images bench codec --json bench/results/codec.json

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; this file only
routes, so importing the CLI stays fast and one broken extra does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from action_images.cliflags import Parser

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("action_images.data.collect", "run scripted experts (built-in sim or --suite metaworld) and write a "
                "LeRobot v3 dataset"),
    "train": ("action_images.train", "train the world action model"),
    "eval": ("action_images.evaluate", "closed-loop evaluation with an HTML report"),
    "openloop": ("action_images.openloop", "open-loop scores on held-out episodes (policy, world model, labeler, "
                                           "video) against 'nothing moves'"),
    "label": ("action_images.jobs.label", "label a dataset's videos with actions (the labeler job) into a new "
                                          "LeRobot dataset"),
    "imagine": ("action_images.jobs.imagine", "the multi-view video an action trajectory would produce (the "
                                              "world-model job)"),
    "generate": ("action_images.jobs.generate", "a multi-view video from start frames and an instruction (the video "
                                                "job)"),
    "demo": ("action_images.demo", "closed-loop demo of the shipped checkpoint"),
    "bench": ("action_images.benchmarks", "benchmarks writing JSON (codec, sim, train, policy, serve)"),
    "serve": ("action_images.serve", "the policy of a checkpoint as a websocket server (msgpack, GET /healthz)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="action-images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not e.name or not module_name.startswith(e.name):
                raise
            p.set_defaults(_missing=module_name)
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:            # reported by the command's parser, whose --help lists the flags it takes
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"action-images {args.command}: not available in this build ({args._missing} is missing)",
              file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
