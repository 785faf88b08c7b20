"""Open-loop learning check: does the model predict the expert's future, better than "nothing moves"?

    python -m action_images.openloop --checkpoint runs/pick --data data/pick_cube_val --json runs/pick/openloop.json

For held-out episodes and start frames (no augmentation, fixed view pairs), sample a policy chunk, decode the
generated action images of the H keyframes with the codec (the window's cameras) and compare with the expert's
keyframe targets: median position error (cm) against the no-motion baseline (the current pose), gripper accuracy,
and PSNR of the generated RGB keyframes against copying the current frame. This is the measurement design §5 asks
for before any closed-loop run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from action_images.codec import ActionImageCodec
from action_images.data.windows import WindowConfig, Windows, collate
from action_images.geometry import Camera
from action_images.wam import WorldActionModel


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = float((a.clamp(-1, 1) - b).square().mean())
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def evaluate(model: WorldActionModel, windows: Windows, episodes: list[int], starts_per_episode: int = 3,
             views: list[str] | None = None, steps: int = 10, cfg_scale: float = 1.0, seed: int = 0,
             batch_size: int = 8, figure: str | None = None) -> dict[str, Any]:
    """Scores over the windows; ``figure``: also save real vs generated streams of the first window there."""
    codec = ActionImageCodec()
    cfg = windows.cfg
    ds = windows.datasets[0]
    names = views or list(ds.camera_names[:cfg.num_views])
    items = []
    for i in episodes:
        n0 = windows.num_starts(0, i)
        for t0 in np.linspace(0, max(0, n0 - 2), starts_per_episode).round().astype(int):
            items.append(windows.window(0, i, int(t0), np.random.default_rng([seed, i, int(t0)]), views=names,
                                        augment=False))
    err_model, err_still, grip_ok, ps_model, ps_copy, valid = [], [], [], [], [], []
    g = torch.Generator().manual_seed(seed)
    t_start = time.perf_counter()
    for k in range(0, len(items), batch_size):
        b = collate(items[k:k + batch_size])
        out = model.sample(b, "policy", steps=steps, cfg_scale=cfg_scale, generator=g)
        if figure and k == 0:
            save_figure(b, out, figure)
        for j in range(out.act.shape[0]):
            cams = [Camera(K=b["K"][j, v].numpy(), T_cam_world=b["T_cam_world"][j, v].numpy(),
                           width=cfg.image_size, height=cfg.image_size) for v in range(len(names))]
            imgs = ((out.act[j, :, 1:].clamp(-1, 1) + 1) / 2).permute(0, 1, 3, 4, 2).numpy().astype(np.float32)
            truth = b["poses"][j, 1:].numpy()
            now = b["poses"][j, 0].numpy()
            dec = codec.decode(imgs, cams)       # never raises; undecodable keyframes come back not valid
            ok = dec.valid
            valid.extend(ok.tolist())
            err_still.extend(np.linalg.norm(truth[:, :3] - now[:3], axis=-1).tolist())
            e = np.linalg.norm(np.where(ok[:, None], dec.poses[:, :3], now[:3]) - truth[:, :3], axis=-1)
            err_model.extend(e.tolist())  # an undecodable keyframe counts as "did not move"
            grip_ok.extend(((np.nan_to_num(dec.poses[:, 7], nan=now[7]) > 0.5) == (truth[:, 7] > 0.5)).tolist())
            ps_model.append(psnr(out.rgb[j, :, 1:], b["rgb"][j, :, 1:]))
            ps_copy.append(psnr(b["rgb"][j, :, :1].expand_as(b["rgb"][j, :, 1:]), b["rgb"][j, :, 1:]))
    by_k = np.asarray(err_model).reshape(-1, cfg.horizon)
    still_k = np.asarray(err_still).reshape(-1, cfg.horizon)
    return {"windows": len(items), "keyframes": len(err_model), "views": names, "steps": steps,
            "cfg_scale": cfg_scale, "decode_valid_rate": float(np.mean(valid)),
            "pos_err_cm_median": 100 * float(np.median(err_model)),
            "pos_err_cm_mean": 100 * float(np.mean(err_model)),
            "still_baseline_cm_median": 100 * float(np.median(err_still)),
            "still_baseline_cm_mean": 100 * float(np.mean(err_still)),
            "pos_err_cm_median_by_keyframe": (100 * np.median(by_k, axis=0)).round(3).tolist(),
            "still_baseline_cm_median_by_keyframe": (100 * np.median(still_k, axis=0)).round(3).tolist(),
            "gripper_accuracy": float(np.mean(grip_ok)),
            "rgb_psnr_db": float(np.mean(ps_model)), "copy_frame_psnr_db": float(np.mean(ps_copy)),
            "seconds": time.perf_counter() - t_start}


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


def save_figure(batch: dict[str, Any], out: Any, path: str, item: int = 0, zoom: int = 3) -> None:
    """Real vs generated streams of one window: per view, rows = real RGB, generated RGB, real action image over
    the real frame, generated action image over the generated frame; columns = current frame + H keyframes."""
    import imageio.v3 as iio

    from action_images.codec import overlay

    rows = []
    real_rgb, gen_rgb = _to_uint8(batch["rgb"][item]), _to_uint8(out.rgb[item])          # [V, F, H, W, 3]
    real_act, gen_act = _to_uint8(batch["act"][item]), _to_uint8(out.act[item])
    for v in range(real_rgb.shape[0]):
        for img in (real_rgb[v], gen_rgb[v], overlay(real_rgb[v], real_act[v]), overlay(gen_rgb[v], gen_act[v])):
            rows.append(np.concatenate(list(img), axis=1))                                   # [H, F*W, 3]
    grid = np.concatenate(rows, axis=0)
    grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m action_images.openloop", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir or save_pretrained dir")
    p.add_argument("--data", required=True, help="held-out dataset dir")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--starts", type=int, default=3, help="start frames per episode")
    p.add_argument("--views", default=None, help="comma separated camera names (default: the first num_views)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None, help="PNG of real vs generated streams of the first window")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = WorldActionModel.from_pretrained(args.checkpoint).eval()
    c = model.config
    windows = Windows([args.data], WindowConfig(image_size=c.image_size, num_views=c.num_views, horizon=c.horizon,
                                                stride=c.stride), seed=args.seed)
    total = windows.datasets[0].num_episodes
    n = min(args.episodes, total)
    episodes = sorted({int(i) for i in np.linspace(0, total - 1, n).round()})   # spread over tasks and seeds
    res = evaluate(model, windows, episodes, args.starts, args.views.split(",") if args.views else None,
                   args.steps, args.cfg_scale, args.seed, figure=args.figure)
    res = {"command": "python -m action_images.openloop " + " ".join(argv or sys.argv[1:]), "args": vars(args),
           "seed": args.seed, **res}
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
