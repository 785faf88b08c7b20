"""The shipped checkpoint's recipe, as written in the Makefile and the demo's help, is the one that made it.

Guards against docs drifting from the weights: the train flags of ``make checkpoint`` must give the same trajectory
arguments and model config as ``checkpoints/cpu-small/train_args.json`` / ``config.json``, and the step count must
be the last step of its training log.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from action_images import demo, train
from action_images.wam import WAMConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "cpu-small"
# arguments that define the run (not where it writes, how it reports, or how long a wall-clock budget was)
DEFINING = ("data", "preset", "seed", "image_size", "views", "horizon", "stride", "task_mix", "p_drop_text", "t_mean",
            "loss_target", "refine_channels", "camera_names", "batch_size", "lr", "warmup",
            "weight_decay", "ema", "grad_clip", "threads")


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def makefile_train_argv() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    steps = re.search(r"^CKPT_STEPS \?= (\d+)$", text, re.M).group(1)
    line = next(ln for ln in _logical_lines(text) if "action-images train" in ln)
    line = line.split("action-images train", 1)[1].replace("$(CKPT_STEPS)", steps)
    return shlex.split(line)


def howto_train_argv() -> list[str]:
    line = next(ln for ln in _logical_lines(demo.HOW_TO) if "action-images train" in ln)
    return shlex.split(line.split("action-images train", 1)[1])


def parse_train(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(argv)


pytestmark = pytest.mark.skipif(not (SHIPPED / "train_args.json").exists(), reason="no shipped checkpoint")


def test_makefile_recipe_matches_shipped_run():
    args = parse_train(makefile_train_argv())
    args.batch_size = args.batch_size or train.PRESETS[args.preset]["batch_size"]   # as train.run resolves it
    shipped = json.loads((SHIPPED / "train_args.json").read_text())
    assert {k: getattr(args, k) for k in DEFINING} == {k: shipped[k] for k in DEFINING}
    last_step = json.loads((SHIPPED / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert args.steps == last_step


def test_makefile_recipe_builds_shipped_config():
    built = train.build_config(parse_train(makefile_train_argv()))
    shipped = WAMConfig.from_dict(json.loads((SHIPPED / "config.json").read_text())["config"])
    assert built.to_dict() == shipped.to_dict()


def test_demo_howto_is_the_makefile_recipe():
    make = vars(parse_train(makefile_train_argv()))
    howto = vars(parse_train(howto_train_argv()))
    assert make == howto
