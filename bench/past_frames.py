"""How much a model with past frames reads them, and whether its training loss parts from a run without them.

    python bench/past_frames.py runs/rig8-ctx-recover-noise-history \
        --base checkpoints/rig8-ctx-recover-noise-9k --json bench/results/history/weights_and_loss.json

``weights``: the norm of the context encoder's first convolution over each frame's input channels (frame 0 is the
current frame, then the past ones), split into the RGB and the action-image channels. Past-frame channels start at 0
when a stage adds them (``--init-from``), so their norm is what training put there. ``loss``: the action-image
training loss (``loss_act`` in ``log.jsonl``) of the run and of ``--base`` (the same steps and batch draws): their
means over the last ``--tail`` logged steps, and the largest relative gap between the two runs' means over blocks of
300 and of 1,000 steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from action_images.checkpointing import CONTEXT_IN
from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command
from action_images.train import read_log


def frame_norms(run: Path) -> list[dict[str, float]]:
    """Per input frame of the context encoder: the norm of its RGB and action-image weights."""
    w = load_file(str(run / "model.safetensors"))[CONTEXT_IN]            # [C_out, 6 (1 + P), 3, 3]
    return [{"rgb": round(float(w[:, i:i + 3].norm()), 3), "act": round(float(w[:, i + 3:i + 6].norm()), 3)}
            for i in range(0, w.shape[1], 6)]


def loss_gaps(run: Path, base: Path, tail: int) -> dict[str, float]:
    """``loss_act`` of both logs: the last ``tail`` steps' means and the largest relative gap of block means."""
    logs = [{r["step"]: r["loss_act"] for r in read_log(p / "log.jsonl") if "loss_act" in r} for p in (run, base)]
    last = min(max(log) for log in logs)

    def mean(log: dict[int, float], lo: int, hi: int) -> float:
        return float(np.mean([v for s, v in log.items() if lo <= s < hi]))

    out = {f"run_last_{tail}": round(mean(logs[0], last - tail, last + 1), 6),
           f"base_last_{tail}": round(mean(logs[1], last - tail, last + 1), 6)}
    for block in (300, 1000):
        gaps = [abs(mean(logs[0], lo, lo + block) / mean(logs[1], lo, lo + block) - 1)
                for lo in range(0, last + 1, block)
                if any(lo <= s < lo + block for s in logs[0]) and any(lo <= s < lo + block for s in logs[1])]
        out[f"max_gap_{block}"] = round(float(max(gaps)), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run (or checkpoint folder) whose model reads past frames")
    p.add_argument("--base", default=None, help="a run with the same steps and no past frames, to compare losses")
    p.add_argument("--tail", type=int, default=300, help="logged steps at the end whose losses are averaged")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    run = Path(a.run)
    try:
        out = {"command": probe_command(__file__, argv), "run": a.run, "weights": frame_norms(run)}
        if a.base:
            out.update(base=a.base, loss=loss_gaps(run, Path(a.base), a.tail))
    except (OSError, KeyError, ValueError) as e:
        print(f"past_frames: {e}", file=sys.stderr)
        return 2
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        atomic_write_json(Path(a.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
