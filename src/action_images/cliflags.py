"""Command-line helpers the sub-commands share: one-line usage errors, whole numbers written as 1e3, deprecated flag
names, sampler steps."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line naming the flag (argparse prints the whole usage block
    first, which buries the line that matters); ``--help`` still prints everything."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} ({self.prog} --help lists the flags)", file=sys.stderr)
        sys.exit(2)


class DeprecatedAlias(argparse.Action):
    """An old flag name kept for one release: stores into the new flag's ``dest`` and prints a one-line note."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", note: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.note = new, note

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}{self.note}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def whole_number(text: str) -> int:
    """argparse type: an integer, also written as 1e3 (range checks are the settings' job)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}")
    return int(x)


def add_sampler_steps(p: Any, default: int | str, help: str, type: Any = whole_number) -> None:
    """``--sampler-steps`` and its deprecated alias ``--steps`` (which means optimizer steps in ``train``)."""
    p.add_argument("--sampler-steps", type=type, default=default, help=help)
    p.add_argument("--steps", dest="sampler_steps", type=type, default=argparse.SUPPRESS, action=DeprecatedAlias,
                   new="--sampler-steps", note=" (in train, --steps counts optimizer steps)",
                   help="deprecated alias of --sampler-steps")
