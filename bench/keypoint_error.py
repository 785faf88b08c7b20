"""Where do the generated blobs land at the training noise levels? The keypoint error of checkpoints side by side.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/keypoint_error.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-long runs/rig8-ctx-recover-noise-long-kp \
        --data data/rig8_val_heldout --json bench/results/keypoint/keypoint_error.json

Each checkpoint's training loss (``WorldActionModel.forward``, the policy job) on the same held-out policy windows
(``--starts`` per episode of ``--data``, seen through the first two views, as ``action-images openloop`` picks them)
with the same noise levels and noise (one generator seed per batch): ``loss_keypoint``, the squared distance in blob
widths between the predicted and the true blob centroids (``flow.keypoint_loss``, logged whatever its training
weight), and the action images' pixel loss. Lower keypoint error at equal noise means blobs placed nearer the truth
by the one-step prediction the sampler starts from.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more run folders or checkpoints")
    p.add_argument("--data", default="data/rig8_val_heldout")
    p.add_argument("--starts", type=int, default=2, help="windows per episode (as openloop --starts)")
    p.add_argument("--repeats", type=int, default=4, help="noise draws per window (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench/results/keypoint/keypoint_error.json")
    a = p.parse_args(argv)
    if a.starts < 1 or a.repeats < 1:
        raise SystemExit(f"--starts and --repeats must be >= 1; got {a.starts}, {a.repeats}")
    torch.set_num_threads(1)
    from action_images.data.windows import collate
    from action_images.openloop import held_out_windows, open_windows
    from action_images.wam import WorldActionModel

    t0 = time.perf_counter()
    rows = {}
    for ckpt in a.checkpoint:
        model = WorldActionModel.from_pretrained(ckpt).eval()
        data = open_windows(a.data, model.config, a.seed)
        ds = data.datasets[0]
        windows = held_out_windows(data, range(ds.num_episodes), a.starts, list(ds.camera_names)[:2], a.seed)
        kp, act = [], []
        with torch.no_grad():
            for r in range(a.repeats):
                for s in range(0, len(windows), 8):
                    batch = collate(windows[s:s + 8])
                    gen = torch.Generator().manual_seed(a.seed * 100_003 + r * 1009 + s)
                    out = model(batch, gen, tasks=["policy"] * len(windows[s:s + 8]))
                    kp.append(float(out["loss_keypoint"]))
                    act.append(float(out["loss_act"]))
        rows[ckpt] = {"windows": len(windows), "batches": len(kp), "keypoint_sigma2_mean": round(float(np.mean(kp)), 4),
                      "loss_act_mean": round(float(np.mean(act)), 6)}
        print(ckpt, rows[ckpt], file=sys.stderr)
    out = {"command": probe_command(__file__, argv),
           "data": a.data, "starts": a.starts, "repeats": a.repeats, "seed": a.seed, "checkpoints": rows,
           "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(a.json, out)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
