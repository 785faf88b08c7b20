"""``action-images train``: train the world action model (AdamW + warmup, EMA, clipping, accelerate DDP or FSDP).

    action-images train --config recipes/cpu-small.json --out runs/cpu-small --collect-missing   # shipped checkpoint
    action-images train --data data/pick_cube --out runs/pick --preset cpu-small --minutes 30 --seed 0
    action-images train --data data/pick_cube --out runs/pick --preset cpu-small --minutes 30 --seed 0 --resume
    accelerate launch --multi_gpu --num_processes 2 -m action_images.train --data synthetic --out runs/ddp --steps 20

(on a machine without CUDA ``--multi_gpu`` starts 2 CPU processes over gloo; ``accelerate launch --cpu`` alone
starts only one, and ``python -m torch.distributed.run --nproc_per_node 2 -m action_images.train ...`` works too.)

Reproducibility by construction: batch b of step s on rank r is made of dataset keys ``(s * world + r) * B + j``
and all noise/task/dropout draws come from a generator seeded by (seed, step, rank). A checkpoint therefore only
needs weights, EMA, optimizer state and the step; ``--resume`` continues bit-for-bit (global RNG states are saved
as well, for anything outside that scheme). ``--data synthetic[:N]`` trains on generated scenes (N distinct).

The flags are generated from the recipe dataclass (:mod:`action_images.recipe`); the resolved recipe is saved as
``train_config.json`` beside the weights, and ``--resume`` compares its defining settings with the checkpoint's.
A non-finite loss or gradient stops the run with exit status 3 before anything is written: no checkpoint or export
ever holds non-finite weights.

Run directory: ``config.json`` + ``model.safetensors`` (EMA weights; ``WorldActionModel.from_pretrained(RUN)``),
``train_config.json`` (the recipe),
``checkpoints/step_XXXXXXXX/`` (raw + EMA weights, optimizer, trainer state; written to a temp dir, then renamed),
``log.jsonl`` (one line per logged step) and ``loss.png``.

Paper scale (docs/scale.md): ``--preset wan2.2-5b-latent`` (Wan2.2 VAE latents), ``--pretrained DIR`` (a local
diffusers folder), ``--text-encoder DIR`` (UMT5), ``--finetune full|lora`` with ``--lora-rank/--lora-alpha``,
``--gradient-checkpointing`` and ``--mixed-precision bf16`` (GPU only; CPU runs stay fp32). Frozen weights (the VAE, a
LoRA run's base) are neither optimised nor averaged. ``accelerate launch --config_file configs/accelerate/ddp.yaml``
(or ``fsdp.yaml``: parameters, gradients, AdamW moments and EMA sharded with ``fully_shard``, :mod:`action_images.
sharding`; checkpoints gathered on rank 0 into the same full layout) runs N processes; a checkpoint records its number
of processes, and ``--resume`` with another number needs ``--allow-world-size-change`` (the batch keys are per
(step, rank), so the data order changes). DeepSpeed is refused with a message (``DEEPSPEED_REFUSED``).

``--method bc|dp|tokens`` trains a baseline (:mod:`action_images.baselines`) in the same loop, on the same windows,
with the same optimiser, EMA, checkpoints and ``--resume``; ``action_images.baselines.load_model(RUN)`` loads any run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from action_images import recipe as recipes
from action_images import recorded_init, sharding
from action_images.checkpointing import (NonFiniteError, apply_checkpoint, checkpoint_tmp, checkpoints,
                                         init_weights, latest_intact_checkpoint, open_checkpoint, save_checkpoint,
                                         saved_recipe)
from action_images.cliflags import Parser
from action_images.data.windows import SyntheticWindows, WindowConfig, Windows, collate
from action_images.models import PRESETS
from action_images.recipe import RECIPE_NAME, TrainRecipe
from action_images.runfiles import atomic_write_json, atomic_write_text, read_jsonl
from action_images.wam import WAMConfig

EXIT_USAGE, EXIT_NONFINITE = 2, 3
DEEPSPEED_REFUSED = ("DeepSpeed is not supported by this trainer: its EMA, checkpoints and --resume hold full tensors, "
                     "and on a machine without CUDA accelerate 1.15.0 + deepspeed 0.19.8 do not start a DeepSpeed "
                     "group (every process reports rank 0 of 1; deepspeed.initialize fails: train_batch_size 1 != 1 "
                     "* 1 * 2), so it cannot be tested here. Use configs/accelerate/fsdp.yaml (sharded) or ddp.yaml "
                     "(docs/scale.md)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest intact checkpoint in --out")
    p.add_argument("--allow-world-size-change", action="store_true",
                   help="--resume with another number of processes than the checkpoint's (the data order then "
                        "differs from an uninterrupted run: batch keys are per (step, rank); docs/scale.md)")
    p.add_argument("--collect-missing", action="store_true",
                   help="collect the dataset first when --data does not exist yet (the recipe's data.collect)")
    recipes.add_arguments(p)


# ----------------------------------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------------------------------

def build_config(r: TrainRecipe, camera_names: list[str] | None = None) -> WAMConfig:
    """The model config of a recipe (``camera_names``: the cameras the windows come from)."""
    m = r.model
    if m.method != "wam":                                                # a baseline (action_images.baselines)
        from action_images import baselines
        return baselines.build_config(r, camera_names)
    cfg = WAMConfig.from_preset(m.preset, image_size=m.image_size, num_views=m.num_views, horizon=m.horizon,
                                stride=m.stride, task_mix=m.task_mix, p_drop_text=m.p_drop_text, t_mean=m.t_mean,
                                action_loss_weight=m.action_loss_weight, act_peak_weight=m.act_peak_weight,
                                act_keypoint_weight=m.act_keypoint_weight, loss_target=m.loss_target, crop=m.crop,
                                workspace=m.workspace)
    cfg.camera_names = list(camera_names or r.data.cameras or []) or None
    for name in ("depth", "refine_channels", "stem_channels", "context_channels"):
        value = getattr(m, name)
        if value is not None:
            if cfg.backbone_kind != "dit":
                raise ValueError(f"--{name.replace('_', '-')} applies to DiT presets only")
            cfg.backbone = {**cfg.backbone, name: int(value)}
    if m.history_gap is not None and not m.history:
        raise ValueError("--history-gap sets how far apart the past frames are: give --history N too")
    for name in ("history", "history_gap"):
        if getattr(m, name) is not None:
            setattr(cfg, name, int(getattr(m, name)))
    apply_scale_options(cfg, m)
    if m.text_layers:                               # 0 leaves the config as a model without layers writes it
        if cfg.text.get("kind", "hash") != "hash":
            raise ValueError(f"--text-layers applies to the hashed-word instruction encoder, not {cfg.text['kind']!r}")
        cfg.text = {**cfg.text, "layers": int(m.text_layers)}
    cfg.validate()
    return cfg


def apply_scale_options(cfg: WAMConfig, m: Any) -> None:
    """--pretrained, --text-encoder, --finetune lora and --gradient-checkpointing (wan presets; docs/scale.md)."""
    wan_only = [flag for flag, on in (("--pretrained", m.pretrained), ("--text-encoder", m.text_encoder),
                                      ("--finetune lora", m.finetune == "lora"),
                                      ("--gradient-checkpointing", m.gradient_checkpointing)) if on]
    if not wan_only:
        return
    if cfg.backbone_kind != "wan":
        raise ValueError(f"{', '.join(wan_only)}: apply to the wan presets only (not {cfg.preset!r})")
    from dataclasses import replace
    from action_images.models.wan import _ARCH_KEYS, WanBackboneConfig
    if m.pretrained:
        from action_images.models.latent import check_pretrained_folder, latent_config, vae_config_from_folder
        check_pretrained_folder(m.pretrained, ("transformer", "vae") if cfg.latent else ("transformer",))
        keep = {k: v for k, v in cfg.backbone.items() if k not in _ARCH_KEYS and k != "pretrained"}
        cfg.backbone = WanBackboneConfig.from_pretrained(m.pretrained, **keep).to_dict()
        if cfg.latent:
            cfg.latent = latent_config(vae_config_from_folder(m.pretrained), str(m.pretrained))
    bb = WanBackboneConfig(**cfg.backbone)
    if m.finetune == "lora":
        bb = replace(bb, lora_rank=int(m.lora_rank), lora_alpha=float(m.lora_alpha or m.lora_rank))
    if m.gradient_checkpointing:
        bb = replace(bb, gradient_checkpointing=True)
    cfg.backbone = bb.to_dict()
    if m.text_encoder:
        from action_images.models.umt5 import MAX_TOKENS, encoder_width
        from action_images.text import TextConfig
        width = encoder_width(m.text_encoder)
        if width != bb.text_dim:
            raise ValueError(f"--text-encoder {m.text_encoder}: d_model {width} != the backbone's text_dim "
                             f"{bb.text_dim}")
        cfg.text = TextConfig(kind="umt5", dim=width, max_tokens=MAX_TOKENS, path=str(m.text_encoder)).to_dict()


def text_cache_dir(r: TrainRecipe, out: Path) -> Path:
    """Where UMT5 features are cached: the first dataset's ``cache/text`` (``<out>/cache/text`` for synthetic)."""
    first = r.data.data[0]
    return (out if first.startswith("synthetic") else Path(first)) / "cache" / "text"


def dataset_instructions(dataset: Any) -> list[str]:
    """Every instruction a training batch can hold: the datasets' tasks (synthetic data: those of its scenes; endless
    synthetic scenes draw from a few colours, which 256 scenes show) and "", the instruction classifier-free guidance
    trains with."""
    if isinstance(dataset, Windows):
        texts = {t for ds in dataset.datasets for t in ds.tasks}
    elif isinstance(dataset, SyntheticWindows):
        texts = {dataset.episode(s)["instruction"] for s in range(dataset.num_scenes or 256)}
    else:
        texts = set()
    return sorted(texts | {""})


def share_instructions(encoder: Any, texts: list[str], main: bool, world: int, device: torch.device) -> None:
    """UMT5 features of ``texts`` on every rank before the first step: rank 0 reads them from the per-dataset cache or
    encodes them (the encoder loads there only, and is freed afterwards) and sends them, one instruction at a time,
    to the other ranks, which keep them in memory and never load UMT5 for them."""
    feats = encoder.features(texts) if main else {}
    if main:
        encoder.release()
    if world > 1:
        shapes = sharding.broadcast_json({s: list(f.shape) for s, f in feats.items()} if main else None, device)
        for s in sorted(shapes):
            t = sharding.broadcast_full(feats.get(s), shapes[s], torch.float32, device)
            if not main:
                encoder.remember({s: t.cpu()})


def check_current_noise(r: TrainRecipe) -> None:
    """--current-noise draws the current pose as a pixel action image, which a latent preset does not have."""
    if r.data.current_noise and r.model.method == "wam" and PRESETS.get(r.model.preset, {}).get("latent") is not None:
        raise ValueError("--current-noise: draws the current pose as a pixel action image; the latent preset "
                         f"{r.model.preset} has none")


def build_dataset(r: TrainRecipe, cfg: WAMConfig):
    check_current_noise(r)
    wcfg = replace(WindowConfig.from_model(cfg, views=r.data.cameras), current_noise=float(r.data.current_noise),
                   current_noise_prob=float(r.data.current_noise_prob))
    data = r.data.data
    if len(data) == 1 and data[0].startswith("synthetic"):
        spec = data[0]
        try:
            n = int(spec.split(":")[1]) if ":" in spec else 0
        except ValueError:
            raise ValueError(f"--data: {spec!r} is not synthetic or synthetic:N") from None
        if r.data.calibration is not None:
            raise ValueError("--calibration: synthetic data brings its own cameras; give it with a --data dataset")
        return SyntheticWindows(wcfg, seed=r.optim.seed, num_scenes=n)
    for d in data:
        if not (Path(d) / "meta" / "info.json").exists():
            raise ValueError(f"--data: {d} is not a dataset (no meta/info.json); collect it first "
                             "(action-images collect, or train --collect-missing with a recipe)")
    calibration = r.data.calibration
    if calibration is not None and not Path(calibration).is_file():
        raise ValueError(f"--calibration: no such file {calibration}")
    return Windows(data, wcfg, seed=r.optim.seed, cameras=calibration, exclude_tasks=r.data.exclude_tasks)


class StepBatches(torch.utils.data.Sampler):
    """Infinite batch sampler: step s, rank r -> keys [(s * world + r) * B + j for j < B]."""

    def __init__(self, start_step: int, batch_size: int, rank: int, world: int):
        self.start, self.B, self.rank, self.world = start_step, batch_size, rank, world

    def __iter__(self):
        s = self.start
        while True:
            base = (s * self.world + self.rank) * self.B
            yield list(range(base, base + self.B))
            s += 1


def default_threads(processes: int = 1) -> int:
    """Cores per process, but 1 when the machine is already busy: on a shared 2-core box two OpenMP threads that
    get descheduled wait on each other at every barrier (slower than one thread; docs/method.md)."""
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] > 0.5 * cores if hasattr(os, "getloadavg") else False
    return 1 if busy else max(1, cores // processes)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def compile_backbone(wam: torch.nn.Module) -> torch.nn.Module:
    """Compile the backbone in place (``nn.Module.compile``) and return ``wam``. The backbone sees fixed shapes each
    step; the rest of the loss (task sampling, tokenising instructions) is Python over strings, which makes a
    whole-model compile recompile for each batch's task names and give nothing. The state dict keeps its keys."""
    wam.backbone.compile()
    return wam


def make_optimizer(wam: torch.nn.Module, o: Any) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: weight decay on matrices except embeddings (``o``: the recipe's optim)."""
    trainable = [(n, p) for n, p in wam.named_parameters() if p.requires_grad]
    decay_params = [p for n, p in trainable if p.ndim >= 2 and "emb" not in n]
    other_params = [p for n, p in trainable if not (p.ndim >= 2 and "emb" not in n)]
    return torch.optim.AdamW([{"params": decay_params, "weight_decay": o.weight_decay},
                              {"params": other_params, "weight_decay": 0.0}], lr=o.lr, betas=(0.9, 0.99))


def lr_at(step: int, lr: float, warmup: int, schedule: str = "constant", steps: int | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based): a linear warm-up, then constant, or (``linear``) a
    straight line from the peak after the warm-up down to 0 at ``steps``."""
    rate = lr * min(1.0, (step + 1) / max(1, warmup))
    if schedule == "linear" and steps is not None and step >= warmup:
        rate *= max(0.0, (steps - step) / max(1, steps - warmup))
    return rate


def pretrained_folders(cfg: Any) -> list[str]:
    """The ``--pretrained`` folders a model config reads its weights from (none for most presets)."""
    parts = (getattr(cfg, part, None) for part in ("backbone", "latent"))
    return [d["pretrained"] for d in parts if isinstance(d, dict) and d.get("pretrained")]


def build_model(cfg: Any, meta: bool = False, buffers: bool = False) -> torch.nn.Module:
    """The model of ``cfg`` (any ``--method``). ``meta``: the same modules on PyTorch's meta device, without storage
    and without reading the ``--pretrained`` folders (the pretrained model has the names and shapes of the one built
    without them); the config keeps the folders. An FSDP rank other than 0 builds this skeleton (sharding.py).
    ``buffers`` (with ``meta``): parameters on meta, buffers computed (FSDP's rank 0 when it resumes: every weight
    comes from the checkpoint, the buffers a state dict leaves out from here)."""
    from action_images import baselines
    if not meta:
        return baselines.build_model(cfg)
    import copy
    skeleton = copy.deepcopy(cfg)
    for part in ("backbone", "latent"):
        d = getattr(skeleton, part, None)
        if isinstance(d, dict) and d.get("pretrained"):
            setattr(skeleton, part, {**d, "pretrained": None})
    if buffers:
        from accelerate import init_empty_weights
        context = init_empty_weights(include_buffers=False)
    else:
        context = torch.device("meta")
    with context:
        model = baselines.build_model(skeleton)
    if getattr(model, "config", None) is skeleton:
        model.config = cfg
    return model


def plot_log(out: Path) -> None:
    rows = read_log(out / "log.jsonl")
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 1, figsize=(7, 4))
    for key in ("loss", "loss_rgb", "loss_act", "loss_pos", "loss_rot", "loss_grip"):
        if all(key in r for r in rows):                                  # the baselines log other parts
            ax.plot(steps, [r[key] for r in rows], label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / ".loss.png.tmp.png", dpi=90)
    plt.close(fig)
    os.replace(out / ".loss.png.tmp.png", out / "loss.png")


def read_log(path: Path) -> list[dict]:
    return read_jsonl(path)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (the lines after the checkpoint a run resumes from are redone)."""
    rows = [r for r in read_log(path) if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """The ``train`` command: resolve the recipe (errors name the flag or file, exit 2), then :func:`train`."""
    try:
        recipe = recipes.from_args(args, warn=lambda m: print(f"action-images train: {m}", file=sys.stderr))
        if recipe.optim.steps is None and recipe.optim.minutes is None:
            raise ValueError("give --steps N and/or --minutes M (or set optim.steps / optim.minutes in --config)")
        if not recipe.data.data:
            raise ValueError("give --data DIR[,DIR] (or data.data in --config)")
        check_current_noise(recipe)                  # before --collect-missing spends minutes on data
        if args.collect_missing:
            recipes.collect_missing(recipe)
        return train(recipe, Path(args.out), resume=args.resume,
                     allow_world_size_change=getattr(args, "allow_world_size_change", False))
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"action-images train: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as e:
        print(f"action-images train: {e}", file=sys.stderr)
        return EXIT_NONFINITE


def train(recipe: TrainRecipe, out: Path, resume: bool = False, allow_world_size_change: bool = False) -> int:
    """Train from ``recipe`` into ``out`` (see the module docstring); returns the exit status."""
    from accelerate import Accelerator
    from tqdm import tqdm

    o, rr = recipe.optim, recipe.run
    cuda = torch.cuda.is_available()
    if rr.mixed_precision != "no" and not cuda:
        print(f"action-images train: --mixed-precision {rr.mixed_precision} applies on a GPU; this CPU run stays fp32",
              file=sys.stderr)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ValueError(DEEPSPEED_REFUSED)
    fsdp = sharding.requested()                      # accelerate launch --config_file configs/accelerate/fsdp.yaml
    fsdp_options = sharding.check_environment() if fsdp else {}
    accelerator = Accelerator(cpu=not cuda, mixed_precision=rr.mixed_precision if cuda else "no")
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if fsdp and not torch.distributed.is_initialized():
        raise ValueError("FSDP needs the processes started by accelerate launch --config_file "
                         "configs/accelerate/fsdp.yaml --num_processes N (without --cpu, which starts one "
                         "process without FSDP); this process has no process group")
    if accelerator.device.type == "cpu":
        torch.set_num_threads(rr.threads or default_threads(world))
    preset_cfg = build_config(recipe)
    dataset = build_dataset(recipe, preset_cfg)
    cfg = build_config(recipe, camera_names=recipe.data.cameras or dataset.camera_names)
    from action_images import baselines
    batch_size = o.batch_size or baselines.BATCH_SIZE.get(recipe.model.method) or \
        PRESETS[recipe.model.preset]["batch_size"]

    start = 0
    warn = (lambda m: print(m, file=sys.stderr)) if main else (lambda m: None)
    if fsdp and resume:     # rank 0 opens the checkpoint (its tensors are read as they are sent); the others get its
        # state and tensor shapes as JSON
        found = latest_intact_checkpoint(out, warn, read=open_checkpoint) if main else None
        head = sharding.broadcast_json(sharding.checkpoint_header(found) if main else None, accelerator.device)
        if head is not None and not main:
            found = Path(head["path"]), {"state": head["state"], "config": head["config"]}
    else:
        found = latest_intact_checkpoint(out, warn) if resume else None
    if found is not None:
        path, ck = found
        want = recipe.defining()
        have = saved_recipe(ck)
        diff = [f"config.{k}" for k in ck["config"] if ck["config"][k] != cfg.to_dict().get(k)]
        if have is not None:
            diff += [f"{sec}.{k}" for sec in have for k in have[sec] if have[sec][k] != want[sec].get(k)]
        if diff:
            raise ValueError(f"--resume {out}: settings differ from the checkpoint ({sorted(set(diff))}); use the "
                             "same recipe")
        saved_world = int(ck["state"].get("world_size", world))
        if saved_world != world and not allow_world_size_change:
            raise ValueError(f"--resume {out}: the checkpoint was trained on {saved_world} process(es), this run has "
                             f"{world}; batches are drawn per (step, rank), so the data order and the global batch "
                             "would change. Pass --allow-world-size-change to continue anyway")
        if saved_world != world:
            warn(f"action-images train: resuming a {saved_world}-process run on {world} process(es): same weights, "
                 "optimizer state and step; another data order and global batch from here on")
        start = int(ck["state"]["step"])
    elif resume:
        if main and (out / "log.jsonl").exists():   # killed before the first checkpoint: start over, cleanly
            _truncate_log(out / "log.jsonl", 0)
    elif main and (checkpoints(out) or (out / "log.jsonl").exists()):
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    torch.manual_seed(o.seed)
    # FSDP (sharding.py): ranks > 0 build on the meta device and receive their shards after sharding (below); rank 0
    # builds what it computes itself and leaves on meta what it reads from a file or computes from the recorded build,
    # tensor by tensor as it sends it: ``streamed`` maps those names to (source, name in the source)
    streamed: dict[str, Any] = {}
    if recipe.model.init_from and fsdp:
        raise ValueError("--init-from runs in one process or under DDP; under FSDP start from a --resume checkpoint")
    if not fsdp:
        wam = build_model(cfg)                                          # WorldActionModel for --method wam
        if recipe.model.init_from and found is None:                  # a resumed run has its own weights
            init_weights(wam, recipe.model.init_from)
    elif not main:
        wam = build_model(cfg, meta=True)
    elif found is not None:                                             # every weight comes from the checkpoint
        wam = build_model(cfg, meta=True, buffers=True)
        streamed = {k: (found[1]["weights"], k) for k in found[1]["weights"]}
    elif pretrained_folders(cfg):              # seeded init as one process; the folder's weights read when sent
        with sharding.pretrained_on_demand() as placeholders:
            wam = build_model(cfg)
        streamed = sharding.defer_to_files(wam, placeholders)
    else:                # the seeded init of one process, recorded on meta; each tensor computed when it is sent
        wam, streamed = recorded_init.build_recorded(lambda: build_model(cfg), warn)
    if getattr(getattr(wam, "text_encoder", None), "set_cache_dir", None):   # UMT5: features cached per dataset
        wam.text_encoder.set_cache_dir(text_cache_dir(recipe, out))
    # frozen weights (the VAE, a LoRA run's base) are neither averaged nor optimised; the export adds them back
    frozen = {n for n, p in wam.named_parameters() if not p.requires_grad}
    if not fsdp:                                          # FSDP: the EMA and the optimizer are built on the shards
        ema = {k: v.detach().clone().float() for k, v in wam.state_dict().items() if k not in frozen}
        opt = make_optimizer(wam, o)
        if found is not None:
            apply_checkpoint(found[1], wam, ema, opt)
    if found is not None and main:
        _truncate_log(out / "log.jsonl", start)
        print(f"resumed from {found[0]} (step {start})", file=sys.stderr)
    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RECIPE_NAME, recipe.to_dict())
    accelerator.wait_for_everyone()

    if fsdp:
        # shard first, then fill the shards from rank 0: its freshly built (or --pretrained) weights, or the resumed
        # checkpoint's; parameters are DTensors from here on, and the optimizer and EMA are built over them
        ck = found[1] if found is not None else None
        if ck is not None:
            sharding.check_checkpoint_shapes(head, wam, out)
        full = sharding.RankZeroState(sharding.own_tensors(wam), streamed) if main else None
        units = sharding.shard(wam, accelerator.device, **fsdp_options)
        sharding.materialise(wam, accelerator.device)
        sharding.load_full_state(wam, full, accelerator.device)
        opt = make_optimizer(wam, o)
        sd = wam.state_dict()
        ema = {k: v.detach().clone().float() for k, v in sd.items() if k not in frozen}
        if ck is not None:
            sharding.load_sharded_checkpoint(ck if main else None, head, ema, opt, sd, accelerator.device)
        else:                   # a meta build draws no random numbers: all ranks go on from rank 0's state, as in DDP
            rng = torch.get_rng_state()
            torch.set_rng_state(sharding.broadcast_full(rng if main else None, rng.shape, rng.dtype,
                                                        accelerator.device).cpu())
        del full, sd, ck, streamed
        found = None
        model = compile_backbone(wam) if rr.compile else wam
        if main:
            print(f"FSDP: {units} fully_shard units over {world} process(es)", file=sys.stderr)
    else:
        model = compile_backbone(wam) if rr.compile else wam
        model, opt = accelerator.prepare(model, opt)
        ema = {k: v.to(accelerator.device) for k, v in ema.items()}      # averaged where the weights are
    text_encoder = getattr(wam, "text_encoder", None)
    if hasattr(text_encoder, "remember"):   # UMT5: encoded once on rank 0, before the first step, and shared
        share_instructions(text_encoder, dataset_instructions(dataset), main, world, accelerator.device)
    # a prepared (DDP) model autocasts inside its forward; the sharded one is not prepared, so the loop does it
    autocast = accelerator.autocast if fsdp else contextlib.nullcontext
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepBatches(start, batch_size, rank, world),
                                         num_workers=rr.workers, collate_fn=collate,
                                         persistent_workers=rr.workers > 0)
    tokens_per_step = cfg.tokens_per_sample() * batch_size * world
    bar = tqdm(total=o.steps, initial=start, disable=not main or rr.no_progress, dynamic_ncols=True,
               desc=f"train {cfg.preset}")
    t_begin = t_last = t_ckpt = time.perf_counter()
    step, last_logged, log_f = start, start, (open(out / "log.jsonl", "a") if main else None)
    sums: dict[str, float] = {}
    it = iter(loader)
    try:
        while o.steps is None or step < o.steps:
            batch = next(it)
            lr = lr_at(step, o.lr, o.warmup, o.schedule, o.steps)
            for gr in opt.param_groups:
                gr["lr"] = lr
            with autocast():
                metrics = model(batch, generator=step_generator(o.seed, step, rank))
            if not torch.isfinite(metrics["loss"]).all():
                raise NonFiniteError(f"step {step + 1}: the loss is {metrics['loss'].item()}; stopped before the "
                                     f"update (lower --lr, now {o.lr:g}?). The last checkpoint is intact.")
            accelerator.backward(metrics["loss"])
            if fsdp:                                                     # a replicated DTensor -> its value
                grad_norm = sharding.full_tensor(torch.nn.utils.clip_grad_norm_(wam.parameters(), o.grad_clip))
            else:
                grad_norm = accelerator.clip_grad_norm_(wam.parameters(), o.grad_clip)
            if not torch.isfinite(grad_norm).all():
                raise NonFiniteError(f"step {step + 1}: the gradient norm is {float(grad_norm)}; stopped before the "
                                     f"update (lower --lr, now {o.lr:g}?). The last checkpoint is intact.")
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            d = min(o.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                sd = wam.state_dict()
                for k in ema:
                    ema[k].lerp_(sd[k].detach().float(), 1.0 - d)
            vals = torch.stack([metrics[k].detach().float() for k in sorted(metrics)] + [grad_norm.float()])
            vals = accelerator.reduce(vals, reduction="mean") if world > 1 else vals
            for k, v in zip(sorted(metrics) + ["grad_norm"], vals.tolist()):
                sums[k] = sums.get(k, 0.0) + v
            now = time.perf_counter()
            flags = torch.tensor([o.minutes is not None and now - t_begin >= 60 * o.minutes,
                                  now - t_ckpt >= 60 * rr.checkpoint_minutes], dtype=torch.float32,
                                 device=accelerator.device)
            if world > 1:  # every rank must agree on stopping/checkpointing
                flags = accelerator.reduce(flags, reduction="sum")
            stop, time_ckpt = bool(flags[0] > 0), bool(flags[1] > 0)
            if step % rr.log_every == 0 or stop or step == o.steps:
                n, dt = step - last_logged, now - t_last
                row = {"step": step, **{k: v / n for k, v in sums.items()}, "lr": lr,
                       "samples_per_s": n * batch_size * world / dt, "tokens_per_s": n * tokens_per_step / dt,
                       "elapsed_s": now - t_begin, "world_size": world}
                if main:
                    log_f.write(json.dumps(row, allow_nan=False) + "\n")
                    log_f.flush()
                    bar.set_postfix(loss=f"{row['loss']:.4f}", act=f"{row.get('loss_act', float('nan')):.4f}",
                                    tok_s=f"{row['tokens_per_s']:.0f}")
                sums, last_logged, t_last = {}, step, now
            bar.update(1)
            if step % rr.checkpoint_every == 0 or time_ckpt or stop or step == o.steps:
                if fsdp:        # every rank checks its shards, then gathers each tensor in turn: rank 0 streams
                    # it into the checkpoint's files, so no rank holds more than its shards and one full tensor
                    sd = wam.state_dict()
                    for name, part in (("weights", sd), ("EMA weights", ema)):
                        bad = sharding.nonfinite(part, accelerator.device)
                        if bad:
                            raise NonFiniteError(f"step {step}: non-finite {name} ({bad[:3]}); nothing was written")
                    sharding.write_checkpoint_tensors(checkpoint_tmp(out, step) if main else None, sd, ema, opt)
                    del sd
                if main:
                    save_checkpoint(out, step, wam, ema, opt, recipe, rr.keep_checkpoints, world, streamed=fsdp)
                    plot_log(out)
                accelerator.wait_for_everyone()
                t_ckpt = time.perf_counter()
            if stop:
                break
    finally:
        bar.close()
        if log_f:
            log_f.close()
    if main:
        print(f"done: step {step}, run in {out} ({(time.perf_counter() - t_begin) / 60:.1f} min)", file=sys.stderr)
    accelerator.end_training() if hasattr(accelerator, "end_training") else None
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="action-images train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
