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


def add_policy_arguments(g: Any) -> None:
    """The closed-loop policy's flags from ``--cfg-scale`` to ``--position``, shared by ``eval`` and ``serve`` so that
    both read them alike (:class:`action_images.policy.PolicySettings` checks their ranges)."""
    from action_images.policy import DISAGREE_CHOICES, GRIPPER_MODES, METHODS, NOISE_MODES, ORIENTATIONS, POSITIONS

    g.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale, finite, >= 0")
    g.add_argument("--horizon", type=whole_number, default=None,
                   help="keyframes per chunk, >= 1 (default: the model's; at most the model's frames - 1)")
    g.add_argument("--execute-k", type=whole_number, default=None,
                   help="control steps executed per chunk, 1..stride x horizon (default half of that)")
    g.add_argument("--on-disagree", default="replan", choices=DISAGREE_CHOICES)
    g.add_argument("--disagree-px", type=float, default=None,
                   help="views disagree above this RMS reprojection error, in model pixels, > 0 (default 2 sigma = "
                        "0.1 x the model's image size)")
    g.add_argument("--gripper", default="linear", choices=GRIPPER_MODES)
    g.add_argument("--max-resamples", type=whole_number, default=2,
                   help="immediate resamples when the first keyframe disagrees, >= 0 (default 2)")
    g.add_argument("--method", default="euler", choices=METHODS, help="ODE sampler (default euler)")
    g.add_argument("--ensemble", type=whole_number, default=1,
                   help="samples per replanning step, 1..64, drawn in one model call; their action images are "
                        "averaged before decoding (default 1)")
    g.add_argument("--orientation", default="free", choices=ORIENTATIONS,
                   help="free: decode any tool rotation (default); topdown: only a yaw, the tool pointing straight "
                        "down (for robots whose grasps are all top-down)")
    g.add_argument("--zoom", type=float, default=1.0,
                   help=">= 1; above 1 the model also sees each view zoomed this much on the hand, as a virtual "
                        "camera (larger input images give the zoomed squares more pixels: in eval, a larger "
                        "--image-size; default 1: off)")
    g.add_argument("--noise", default="fresh", choices=NOISE_MODES,
                   help="the sampler's starting noise: fresh, a new draw at every replanning step (default); episode, "
                        "one draw per episode, so nearby observations get nearby plans")
    g.add_argument("--position", default="fit", choices=POSITIONS,
                   help="where a keyframe's position comes from: fit, the rigid fit of the three decoded points "
                        "(default); point, the triangulated position point alone")
