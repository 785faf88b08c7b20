"""Does the model's instruction encoding tell the built-in tasks apart? Pooled text conditioning, task by task.

    OMP_NUM_THREADS=1 .venv/bin/python bench/text_separation.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-9k --json bench/results/cfg0/text_separation.json

Every instruction a task can draw (each template filled with every colour of the palette, distinct colours where a
template names two) goes through the checkpoint's text encoder and the backbone's text projection, then the mean over
its tokens: the vector the "adaln" text conditioning adds to the timestep embedding. Per task: its instructions'
centroid, their RMS distance to it (the spread the colours and templates make), the centroid's distance to the empty
instruction's vector and to every other task's centroid; overall: how often an instruction is nearest its own task's
centroid, the timestep embedding's norm (t = 0.5, the scale the text vector is added to), and any two instruction
words that share a hash bucket. For the tasks whose instructions name two colours (push_cube: the cube's and the
mark's; place_in_bin; stack_cube: the cube to move and the one it goes on): ``swap_rms``, the RMS distance between
each instruction's vector and that of the same instruction with its two colours exchanged, and ``swap_to_spread``,
that over the task's spread. A bag of words (the hashed encoder without ``--text-layers``) gives exactly 0: it
cannot say which colour is which object. Nothing runs in the simulator; a few seconds.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from string import Formatter

import numpy as np
import torch

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def fields_of(template: str) -> list[str]:
    """The colour fields of an instruction template, in order."""
    return [f for _, f, _, _ in Formatter().parse(template) if f]


def instructions(templates: tuple[str, ...], colours: list[str]) -> list[str]:
    """Every filling of each template: one palette colour per field, distinct within an instruction."""
    out = []
    for t in templates:
        names = fields_of(t)
        for combo in itertools.permutations(colours, len(names)):
            out.append(t.format(**dict(zip(names, combo))))
    return out


def swapped_pairs(templates: tuple[str, ...], colours: list[str]) -> tuple[list[str], list[str]]:
    """Every filling of each two-colour template, and the same filling with the two colours exchanged."""
    first, second = [], []
    for t in templates:
        names = fields_of(t)
        if len(names) != 2:
            continue
        for a, b in itertools.permutations(colours, 2):
            first.append(t.format(**{names[0]: a, names[1]: b}))
            second.append(t.format(**{names[0]: b, names[1]: a}))
    return first, second


def separation(pooled: dict[str, np.ndarray], null: np.ndarray) -> dict:
    """Centroids, spreads and distances of the per-task pooled vectors ``{task: [N, D]}``."""
    names = list(pooled)
    cent = {k: v.mean(0) for k, v in pooled.items()}
    tasks = {k: {"instructions": int(len(v)),
                 "spread_rms": float(np.sqrt(((v - cent[k]) ** 2).sum(1).mean())),
                 "to_empty": float(np.linalg.norm(cent[k] - null)),
                 "to_tasks": {o: float(np.linalg.norm(cent[k] - cent[o])) for o in names if o != k}}
             for k, v in pooled.items()}
    for k in names:
        tasks[k]["nearest_task"] = min(tasks[k]["to_tasks"], key=tasks[k]["to_tasks"].get)
    C = np.stack([cent[k] for k in names])
    hits = sum(int((np.argmin(((v[:, None] - C[None]) ** 2).sum(-1), 1) == i).sum())
               for i, v in enumerate(pooled.values()))
    return {"tasks": tasks, "nearest_centroid_accuracy": hits / sum(len(v) for v in pooled.values())}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/rig8-ctx-recover-noise-9k")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)

    from action_images.models.dit import timestep_embedding
    from action_images.sim.tasks import TASK_CLASSES
    from action_images.sim.tasks.base import COLORS
    from action_images.text import _WORD
    from action_images.wam import WorldActionModel

    wam = WorldActionModel.from_pretrained(a.checkpoint).eval()
    bb, text_cfg = wam.backbone, wam.text_encoder.config
    if getattr(bb.config, "text_conditioning", "adaln") != "adaln":
        p.error(f"{a.checkpoint}: text_conditioning is {bb.config.text_conditioning!r}; this probe reads the pooled "
                "vector of 'adaln'")
    colours = [c for c, _ in COLORS]
    texts = {name: instructions(cls.templates, colours) for name, cls in TASK_CLASSES.items()}

    def pooled(batch: list[str]) -> np.ndarray:
        tok, mask = wam.text_encoder(batch)
        m = mask.float()[..., None]
        return ((bb.text_proj(tok) * m).sum(1) / m.sum(1).clamp_min(1.0)).numpy()

    pairs = {name: swapped_pairs(cls.templates, colours) for name, cls in TASK_CLASSES.items()}
    with torch.no_grad():
        vectors = {k: pooled(v) for k, v in texts.items()}
        null = pooled([""])[0]
        swaps = {k: float(np.sqrt(((pooled(a) - pooled(b)) ** 2).sum(1).mean())) for k, (a, b) in pairs.items() if a}
        t_norm = float(bb.t_mlp(timestep_embedding(torch.tensor([0.5]), bb.config.width)).norm())
    words = sorted({w for v in texts.values() for s in v for w in _WORD.findall(s.lower())})   # as tokenize splits
    buckets: dict[int, list[str]] = {}
    if text_cfg.kind == "hash":
        for w in words:
            buckets.setdefault(2 + zlib.crc32(w.encode()) % (text_cfg.vocab_size - 2), []).append(w)
    out = {"command": probe_command(__file__, argv), "checkpoint": a.checkpoint, "text_kind": text_cfg.kind,
           "text_layers": text_cfg.layers,
           "timestep_embedding_norm": t_norm, "empty_norm": float(np.linalg.norm(null)),
           "hash_collisions": [v for v in buckets.values() if len(v) > 1], **separation(vectors, null)}
    for k, d in swaps.items():
        out["tasks"][k].update(swap_rms=d, swap_to_spread=d / max(out["tasks"][k]["spread_rms"], 1e-12))
    print(f"{'task':14s} {'n':>4s} {'spread':>7s} {'to empty':>9s}  nearest task (distance)", file=sys.stderr)
    for k, r in out["tasks"].items():
        near = r["nearest_task"]
        swap = f"; colours exchanged {r['swap_rms']:.2e}" if "swap_rms" in r else ""
        print(f"{k:14s} {r['instructions']:4d} {r['spread_rms']:7.2f} {r['to_empty']:9.2f}  {near} "
              f"({r['to_tasks'][near]:.2f}){swap}", file=sys.stderr)
    print(f"nearest-centroid accuracy {out['nearest_centroid_accuracy']:.3f}; timestep embedding norm {t_norm:.1f}; "
          f"hash collisions {out['hash_collisions']}", file=sys.stderr)
    if a.json:
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
