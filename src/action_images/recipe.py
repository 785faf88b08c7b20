"""The training recipe: one dataclass (model, data, optimisation, run) from which ``action-images train`` builds its
flags, saved beside the weights as ``train_config.json`` and read back by ``--config FILE``.

    action-images train --config recipes/cpu-small.json --out runs/cpu-small          # the shipped checkpoint
    action-images train --config recipes/cpu-small.json --out runs/x --lr 2e-3         # a flag overrides the file

Precedence: the dataclass defaults, then the ``--config`` file, then the flags given on the command line. Sections:

* ``model``: the preset and its overrides -- everything that shapes :class:`~action_images.wam.WAMConfig`;
* ``data``: the dataset(s), the cameras trained on, and how to collect the dataset when it is missing;
* ``optim``: seed, batch, optimiser, EMA and the step / minute budget;
* ``run``: how the run executes and reports (threads, logging, checkpoints) -- free to change on ``--resume``.

Everything in ``model``, ``data`` (except ``collect``) and ``optim`` (except the budget) defines the training
trajectory; ``--resume`` refuses a run whose defining settings differ from the checkpoint's.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from action_images.runfiles import loads, split_list

RECIPE_NAME = "train_config.json"
SECTIONS = ("model", "data", "optim", "run")
BUDGET_KEYS = ("steps", "minutes")           # how long to train: never part of the trajectory check


def _f(default: Any, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (), choices: Any = None,
       lo: float | None = None, hi: float | None = None, lo_open: bool = False, kind: str | None = None) -> Any:
    """A recipe field with what the CLI needs: help text, flag name, deprecated aliases, allowed values."""
    meta = {"help": help, "flag": flag, "aliases": aliases, "choices": choices, "lo": lo, "hi": hi,
            "lo_open": lo_open, "kind": kind}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelRecipe:
    method: str = _f("wam", "wam: the world action model; bc: image behaviour cloning; dp: image diffusion policy; "
                            "tokens: the world action model's video DiT with actions as tokens, not images (the "
                            "baselines, action_images.baselines; --preset and the WAM-only settings do not apply)",
                     choices=("wam", "bc", "dp", "tokens"))
    preset: str = _f("cpu-small", "model size and data shape preset (action_images.models.PRESETS)", kind="preset")
    image_size: int | None = _f(None, "model resolution in pixels (default: the preset's)", lo=8, hi=1024)
    num_views: int | None = _f(None, "views per training window, a random subset of the cameras (default: the "
                                     "preset's)", aliases=("--views",), lo=2, hi=8)
    horizon: int | None = _f(None, "future keyframes H (default: the preset's)", lo=1, hi=31)
    stride: int | None = _f(None, "control steps between keyframes (default: the preset's)", lo=1, hi=100)
    task_mix: dict | None = _f(None, "job mix, e.g. policy=0.85,world_model=0.05,labeler=0.05,video=0.05 "
                                     "(default: that)", kind="mix")
    p_drop_text: float | None = _f(None, "instruction dropout for classifier-free guidance (default 0.1)", lo=0, hi=1)
    t_mean: float | None = _f(None, "mean of the logit-normal training noise level (default 0; > 0 trains more at "
                                    "high noise)", lo=-10, hi=10)
    action_loss_weight: float | None = _f(None, "loss weight of the action stream relative to the RGB stream (default "
                                                "4; larger spends more of each window's loss on the action)",
                                          lo=0, lo_open=True, hi=1e4)
    act_peak_weight: float | None = _f(None, "extra loss weight on the action images' blob pixels (default 10; 0 = "
                                             "uniform)", lo=0, hi=1e4)
    act_keypoint_weight: float | None = _f(None, "loss weight of the squared distance, in blob widths, between the "
                                                 "predicted and true blob centroids of the action images (default "
                                                 "0: logged as loss_keypoint, not trained on)", lo=0, hi=1e4)
    loss_target: str | None = _f(None, "x0 (default): clean-clip error, every noise level weighted alike; velocity: "
                                       "the flow-matching velocity error (= x0 error / t^2)", choices=("x0", "velocity"))
    crop: str = _f("center", "crop of each view before the resize: the centred square, or the square around the "
                             "projected workspace box (more pixels where the robot works)",
                   choices=("center", "workspace"))
    workspace: list | None = _f(None, "world box of --crop workspace: --workspace=x0,y0,z0,x1,y1,z1 in metres", kind="box")
    depth: int | None = _f(None, "DiT only: transformer blocks (default: the preset's); with --init-from a run of "
                                 "fewer blocks, the blocks it lacks are appended after its own and start as the "
                                 "identity (adaLN-Zero), so the stage starts from that run's function", lo=1, hi=64)
    refine_channels: int | None = _f(None, "DiT only: full-resolution conv refinement head with this many channels "
                                           "(0 = off)", lo=0, hi=512)
    stem_channels: int | None = _f(None, "DiT only: full-resolution conv stem with this many channels before the "
                                         "patch embedding (0 = off)", lo=0, hi=512)
    context_channels: int | None = _f(None, "DiT only: a strided CNN (this many channels in its first stage) reads "
                                            "each view's current frame and adds its features to that view's tokens "
                                            "(0 = off)", lo=0, hi=512)
    history: int | None = _f(None, "DiT with --context-channels only: past frames per view (RGB and the action image "
                                   "of the pose then) the context encoder reads beside the current one (default 0)",
                             lo=0, hi=4)                 # wam.MAX_HISTORY (this module stays free of torch)
    history_gap: int | None = _f(None, "control steps between the current frame and each past one (--history; "
                                       "default 4)", lo=1, hi=1000)
    text_layers: int | None = _f(None, "hashed-word instruction encoder: transformer layers over the words before "
                                       "they are pooled (default 0: the pooled words are a bag, the same for 'the "
                                       "red cube on the blue cube' and its reverse); they start as the identity, "
                                       "so --init-from a model without them starts from its function", lo=0,
                                 hi=8)   # text.MAX_TEXT_LAYERS
    baseline: dict = _f({}, "bc/dp/tokens only: overrides of the baseline's config, e.g. {\"plucker\": false, "
                            "\"pool\": \"avg\"} (recipe file only)", kind="file_only")
    pretrained: str | None = _f(None, "wan presets: a local diffusers pipeline folder to start from (transformer/, and "
                                      "vae/ for the latent presets; safetensors; nothing is downloaded)")
    text_encoder: str | None = _f(None, "wan presets: a local UMT5 folder (text_encoder/ + tokenizer/) encoding the "
                                        "instructions; features cached per dataset")
    finetune: str = _f("full", "wan presets: train every weight (full) or LoRA adapters (lora; --lora-rank, "
                               "--lora-alpha)", choices=("full", "lora"))
    lora_rank: int = _f(32, "LoRA rank (--finetune lora)", lo=1, hi=4096)
    lora_alpha: float | None = _f(None, "LoRA alpha (default: the rank)", lo=0, lo_open=True, hi=1e6)
    gradient_checkpointing: bool = _f(False, "wan presets: recompute each block's activations in the backward pass "
                                             "(less memory, ~30 % more compute)")
    init_from: str | None = _f(None, "start from another run's exported weights (RUN/model.safetensors; the same "
                                     "model config, but for the cameras, views per window, loss weights, training "
                                     "noise levels, image size, keyframe stride, and past frames or DiT blocks "
                                     "this recipe adds), with a fresh optimizer and EMA: a second stage "
                                     "of a recipe")


@dataclass
class DataRecipe:
    data: list = _f([], "dataset dir(s), comma separated; or 'synthetic[:N]'", kind="list")
    cameras: list | None = _f(None, "train on these cameras only (comma separated names; default: all of the "
                                    "dataset's)", aliases=("--camera-names",), kind="list")
    calibration: str | None = _f(None, "camera calibration file (meta/cameras.json format) for every --data "
                                       "dataset, in place of its own: for a dataset written by LeRobot itself, "
                                       "which has none (docs/robot.md)")
    collect: dict = _f({}, "how to collect the dataset when it is missing: action-images collect options; with "
                           "several datasets, 'out' names the one it collects (recipe file only)", kind="file_only")
    current_noise: float = _f(0.0, "wam only: σ (m, per axis) of noise on the current pose drawn as frame 0's given "
                                    "action image of training windows, in --current-noise-prob of them; the targets "
                                    "stay the demos', so a plan cannot copy the drawn pose (default 0: off)",
                              lo=0, hi=1)
    current_noise_prob: float = _f(0.5, "share of training windows whose drawn current pose carries --current-noise",
                                   lo=0, hi=1)
    exclude_tasks: dict = _f({}, "episodes to leave out, by the task that collected them: {dataset dir: [task "
                                 "names]}, e.g. a task's demos replaced by another dataset's (recipe file only)",
                             kind="file_only")


@dataclass
class OptimRecipe:
    seed: int = _f(0, "seed of the weights, batches and noise draws", lo=0, hi=2 ** 63 - 1)
    steps: int | None = _f(None, "stop after this many optimizer steps (total over resumes)", lo=1, hi=10 ** 9)
    minutes: float | None = _f(None, "stop after this many minutes (this invocation)", lo=0, lo_open=True, hi=1e6)
    batch_size: int | None = _f(None, "samples per step and process (default: the preset's)", lo=1, hi=4096)
    lr: float = _f(5e-4, "peak learning rate (AdamW)", lo=0, lo_open=True, hi=10)
    warmup: int = _f(200, "linear warm-up steps", lo=0, hi=10 ** 9)
    weight_decay: float = _f(0.01, "AdamW weight decay on matrices", lo=0, hi=10)
    ema: float = _f(0.999, "EMA decay of the exported weights", lo=0, hi=1)
    grad_clip: float = _f(1.0, "gradient norm clip", lo=0, lo_open=True, hi=1e6)
    schedule: str = _f("constant", "learning rate after the warm-up: constant, or linear decay to 0 at --steps",
                       choices=("constant", "linear"))


@dataclass
class RunRecipe:
    threads: int | None = _f(None, "torch threads per process (default: cores/processes, 1 if the machine is busy)",
                             lo=1, hi=1024)
    workers: int = _f(0, "data loader processes", lo=0, hi=64)
    compile: bool = _f(False, "torch.compile the backbone in place (about 1 min to compile; no measurable gain for "
                              "cpu-small on this CPU, docs/method.md)")
    mixed_precision: str = _f("no", "autocast on GPU (bf16 for the wan presets); a CPU run stays fp32",
                              choices=("no", "bf16", "fp16"))
    log_every: int = _f(10, "steps between log lines", lo=1, hi=10 ** 9)
    checkpoint_every: int = _f(500, "steps between checkpoints", lo=1, hi=10 ** 9)
    checkpoint_minutes: float = _f(10.0, "minutes between checkpoints", lo=0, lo_open=True, hi=1e6)
    keep_checkpoints: int = _f(2, "checkpoints kept (the newest)", lo=1, hi=1000)
    no_progress: bool = _f(False, "no progress bar")


@dataclass
class TrainRecipe:
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    run: RunRecipe = field(default_factory=RunRecipe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "recipe") -> "TrainRecipe":
        """Build from a (possibly partial) dict; unknown sections or keys and wrong types raise naming ``source``."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a recipe is a JSON object with sections {SECTIONS}; got {type(d).__name__}")
        unknown = sorted(set(d) - set(SECTIONS) - {"comment"})
        if unknown:
            raise ValueError(f"{source}: unknown sections {unknown}; known {list(SECTIONS)}")
        recipe = cls()
        for name in SECTIONS:
            part = d.get(name, {})
            if not isinstance(part, dict):
                raise ValueError(f"{source}: section {name!r} must be an object")
            section = getattr(recipe, name)
            known = {f.name: f for f in fields(section)}
            bad = sorted(set(part) - set(known))
            if bad:
                raise ValueError(f"{source}: unknown keys {bad} in section {name!r}; known {sorted(known)}")
            for key, value in part.items():
                setattr(section, key, _coerce(value, known[key], f"{source}: {name}.{key}"))
        recipe.validate(source)
        return recipe

    @classmethod
    def load(cls, path: str | Path) -> "TrainRecipe":
        path = Path(path)
        try:
            d = loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such recipe file") from None
        except ValueError as e:           # not JSON, not text, or NaN / Infinity (not strict JSON)
            raise ValueError(f"{path}: not a JSON recipe ({e})") from None
        return cls.from_dict(d, str(path))

    def validate(self, source: str = "recipe") -> None:
        """Every value within its range; the budget and the data are given."""
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                _check_range(getattr(section, f.name), f, f"{source}: {name}.{f.name}")
        if self.model.task_mix is not None:
            _check_mix(self.model.task_mix, f"{source}: model.task_mix")
        if self.model.baseline and self.model.method == "wam":
            raise ValueError(f"{source}: model.baseline applies to model.method bc, dp or tokens only")
        if self.data.collect:
            collect_argv(self.data.collect, f"{source}: data.collect")
        for root, names in self.data.exclude_tasks.items():
            if root not in self.data.data:
                raise ValueError(f"{source}: data.exclude_tasks names {root!r}, which is not in data.data")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{source}: data.exclude_tasks[{root!r}]: expected a list of task names; "
                                 f"got {names!r}")
        if self.data.current_noise and self.model.method != "wam":
            raise ValueError(f"{source}: data.current_noise draws the world action model's current action image; "
                             f"model.method {self.model.method!r} has none")
        if self.optim.schedule == "linear" and self.optim.steps is None:
            raise ValueError(f"{source}: optim.schedule 'linear' decays to 0 at optim.steps; set --steps N")
        if self.model.crop == "workspace" and self.model.workspace is None:
            raise ValueError(f"{source}: model.crop 'workspace' needs model.workspace (--workspace x0,y0,z0,x1,y1,z1)")

    def collect_out(self) -> str | None:
        """The dataset folder ``data.collect`` collects: its ``out``, else the recipe's only dataset (None: the recipe
        lists several and does not say which)."""
        if "out" in self.data.collect:
            return self.data.collect["out"]
        return self.data.data[0] if len(self.data.data) == 1 else None

    def defining(self) -> dict[str, Any]:
        """The settings that shape the training trajectory (compared on ``--resume``)."""
        d = self.to_dict()
        d["data"].pop("collect", None)
        for k in BUDGET_KEYS:
            if not (k == "steps" and self.optim.schedule != "constant"):    # a decay to 0 is shaped by its steps
                d["optim"].pop(k, None)
        d.pop("run")
        return d


# data.collect keys of older recipes (and of the train_config.json saved beside older checkpoints) -> today's names
COLLECT_RENAMED = {"random_rig": "rig_distribution"}


def collect_argv(options: dict[str, Any], where: str = "data.collect") -> list[str]:
    """The ``action-images collect`` arguments of a recipe's ``data.collect`` section: every key must be one of
    collect's options (spelled out, no prefixes); true/false options become a bare flag or nothing. ``out`` (the
    dataset folder, :meth:`TrainRecipe.collect_out`) is checked to be a string and left to the caller."""
    from action_images.data import collect

    parser = argparse.ArgumentParser(prog="action-images collect", allow_abbrev=False)
    collect.add_arguments(parser)
    known = {a.dest: a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS}
    argv: list[str] = []
    for key, value in options.items():
        key = COLLECT_RENAMED.get(key, key)           # recipes saved before an option was renamed still load
        if key == "out":
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}.out: expected a dataset folder; got {value!r}")
            continue
        action = known.get(key)
        if action is None or key == "help":
            raise ValueError(f"{where}.{key}: not an option of action-images collect; known "
                             f"{sorted(k for k in known if k != 'help')}")
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{key}: expected true or false; got {value!r}")
            argv += [flag] if value else []
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value != value:
            raise ValueError(f"{where}.{key}: expected a string or a number; got {value!r}")
        argv += [flag, str(value)]
    return argv


def collect_missing(r: TrainRecipe) -> None:
    """Run ``action-images collect`` with the recipe's ``data.collect`` options for the dataset they describe
    (:meth:`TrainRecipe.collect_out`) when it does not exist (``train --collect-missing``)."""
    from action_images.cliflags import Parser
    from action_images.data import collect

    todo = [d for d in r.data.data if not d.startswith("synthetic") and not (Path(d) / "meta" / "info.json").exists()]
    if not todo:
        return
    if not r.data.collect:
        raise ValueError(f"--collect-missing: {todo} missing and the recipe has no data.collect section")
    target = r.collect_out()
    if target is not None and target not in r.data.data:       # --data replaced the datasets the section describes
        raise ValueError(f"--collect-missing: {todo} missing, and data.collect collects {target!r}, which is not one "
                         f"of data.data {r.data.data}")
    if target is None:
        raise ValueError(f"--collect-missing: {todo} missing, and data.collect does not say which of data.data "
                         f"{r.data.data} it collects: add \"out\": \"<folder>\" to it")
    others = [d for d in todo if d != target]
    if others:
        raise ValueError(f"--collect-missing: {others} missing, and data.collect collects {target} only")
    argv = ["--out", target, *collect_argv(r.data.collect)]
    print("collecting: action-images collect " + " ".join(argv), file=sys.stderr)
    parser = Parser(prog="action-images collect")
    collect.add_arguments(parser)
    if collect.run(parser.parse_args(argv)) != 0:
        raise ValueError(f"--collect-missing: collecting {target} failed")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _coerce(value: Any, f: Any, where: str) -> Any:
    """A recipe-file value checked against the field's type (ints stay ints, lists may be given as strings)."""
    kind = f.metadata.get("kind")
    if value is None:
        return None
    if kind == "list":
        if isinstance(value, str):
            value = split_list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}: expected a list of names; got {value!r}")
        return value
    if kind == "mix":
        return parse_mix(value, where) if isinstance(value, str) else _check_mix(value, where)
    if kind == "box":
        return parse_box(value, where)
    if kind == "file_only":
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object; got {value!r}")
        return value
    annotation = str(f.type)
    if "bool" in annotation:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false; got {value!r}")
        return value
    if annotation.startswith("int"):
        if not (_is_number(value) and float(value).is_integer()):
            raise ValueError(f"{where}: expected an integer; got {value!r}")
        return int(value)
    if annotation.startswith("float"):
        if not _is_number(value):
            raise ValueError(f"{where}: expected a number; got {value!r}")
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string; got {value!r}")
        return value
    return value


def _check_range(value: Any, f: Any, where: str) -> None:
    m = f.metadata
    if value is None:
        return
    if m.get("choices") is not None and value not in m["choices"]:
        raise ValueError(f"{where}: {value!r} is not one of {list(m['choices'])}")
    if m.get("kind") == "preset":
        from action_images.models import PRESETS
        if value not in PRESETS:
            raise ValueError(f"{where}: unknown preset {value!r}; choose one of {sorted(PRESETS)}")
    if _is_number(value):
        lo, hi = m.get("lo"), m.get("hi")
        if not math.isfinite(value):
            raise ValueError(f"{where}: must be a finite number; got {value}")
        too_low = lo is not None and (value <= lo if m.get("lo_open") else value < lo)
        if too_low or (hi is not None and value > hi):
            left = "(" if m.get("lo_open") else "["
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise ValueError(f"{where}: {value:g} is outside {left}{lo_s}, {hi_s}]")


def parse_mix(spec: str, where: str = "--task-mix") -> dict[str, float]:
    """``"policy=0.85,world_model=0.05"`` -> dict, checked by :func:`_check_mix`."""
    mix: dict[str, Any] = {}
    for item in split_list(spec, where):
        key, sep, val = item.partition("=")
        try:
            mix[key.strip()] = float(val) if sep else None
        except ValueError:
            mix[key.strip()] = None
        if mix[key.strip()] is None:
            raise ValueError(f"{where}: {item!r} is not job=weight (e.g. policy=0.85)")
    return _check_mix(mix, where)


def parse_box(value: Any, where: str) -> list[list[float]]:
    """``"x0,y0,z0,x1,y1,z1"``, six numbers or ``[[x0, y0, z0], [x1, y1, z1]]`` -> the low and high corners."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in split_list(value, where)]
        except ValueError:
            value = None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(c, list) for c in value):
        value = [*value[0], *value[1]]
    if not (isinstance(value, list) and len(value) == 6 and all(_is_number(v) and math.isfinite(v) for v in value)):
        raise ValueError(f"{where}: expected six numbers x0,y0,z0,x1,y1,z1; got {value!r}")
    lo, hi = [float(v) for v in value[:3]], [float(v) for v in value[3:]]
    if not all(a < b for a, b in zip(lo, hi)):
        raise ValueError(f"{where}: the low corner {lo} must be below the high corner {hi} on every axis")
    return [lo, hi]


def _check_mix(mix: Any, where: str) -> dict[str, float]:
    from action_images.flow import TASK_NAMES
    if not isinstance(mix, dict) or not mix:
        raise ValueError(f"{where}: expected job=weight pairs over {list(TASK_NAMES)}; got {mix!r}")
    bad = sorted(set(mix) - set(TASK_NAMES))
    if bad:
        raise ValueError(f"{where}: unknown jobs {bad}; known {list(TASK_NAMES)}")
    if not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"{where}: weights must be finite, >= 0 and not all 0; got {mix}")
    return {k: float(v) for k, v in mix.items()}


# ---- the command line ------------------------------------------------------------------------------------------------
def _flag(f: Any) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per recipe field (defaults suppressed, so only flags that were given override the file)."""
    p.add_argument("--config", default=None, help="recipe file (JSON, sections model/data/optim/run); flags given "
                                                   "on the command line override it")
    titles = {"model": "model (default: the preset's)", "data": "data", "optim": "optimisation and budget",
              "run": "running"}
    for name in SECTIONS:
        g = p.add_argument_group(titles[name])
        for f in fields(getattr(TrainRecipe(), name)):
            kind = f.metadata.get("kind")
            if kind == "file_only":
                continue
            dest = f"{name}.{f.name}"
            names = [_flag(f)]
            if name == "data" and f.name == "data":
                names = ["--data"]
            text = f.metadata["help"].replace("%", "%%")          # argparse formats help with %: "30 %" is text
            if "bool" in str(f.type):
                g.add_argument(*names, dest=dest, action="store_true", default=argparse.SUPPRESS, help=text)
            else:
                g.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=text, metavar=f.name.upper())
            for alias in f.metadata.get("aliases", ()):
                g.add_argument(alias, dest=f"_alias.{dest}.{alias}", default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)


def _parse_flag(text: str, f: Any, flag: str) -> Any:
    """A command-line string -> the field's type, with the flag named in errors."""
    kind, annotation = f.metadata.get("kind"), str(f.type)
    if kind == "list":
        return split_list(text, flag)
    if kind == "mix":
        return parse_mix(text, flag)
    if kind == "box":
        return parse_box(text, flag)
    try:
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"{flag}: expected {'an integer' if annotation.startswith('int') else 'a number'}; "
                         f"got {text!r}") from None
    return text


def from_args(args: argparse.Namespace, warn: Any = None) -> TrainRecipe:
    """The recipe of a parsed command line: defaults <- ``--config`` file <- flags given. Errors name the flag."""
    recipe = TrainRecipe.load(args.config) if getattr(args, "config", None) else TrainRecipe()
    given = vars(args)
    for name in SECTIONS:
        section = getattr(recipe, name)
        for f in fields(section):
            dest = f"{name}.{f.name}"
            flag = _flag(f) if dest != "data.data" else "--data"
            values = [(flag, given[dest])] if dest in given else []
            for alias in f.metadata.get("aliases", ()):
                key = f"_alias.{dest}.{alias}"
                if key in given:
                    if warn:
                        warn(f"{alias} is deprecated; use {flag}")
                    values.append((alias, given[key]))
            if len(values) > 1:
                raise ValueError(f"{values[0][0]} and {values[1][0]} name the same setting; give one")
            for fl, v in values:
                setattr(section, f.name, v if isinstance(v, bool) else _parse_flag(v, f, fl))
                _check_range(getattr(section, f.name), f, fl)
    recipe.validate("--config " + args.config if getattr(args, "config", None) else "train")
    return recipe
