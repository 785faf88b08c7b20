"""A learned decoder of action images: the paper's ablation of geometric triangulation (its Table 3, "MLP head").

    python -m action_images.decode_head train --checkpoint runs/rig8-quick --data data/rig8 --out runs/rig8-head \\
        --minutes 10
    action-images eval --checkpoint runs/rig8-quick --decode-head runs/rig8-head --tasks all --episodes 20 --out DIR

Why it exists. The world action model draws each future keyframe as an action image per view; the policy turns them
into poses by triangulating the blobs (:class:`~action_images.codec.ActionImageCodec`). The paper reports that a small
learned head in place of triangulation raised its in-domain success. This module is that head, trained here and
plugged into the same policy, so the claims table can say whether it helps at this scale.

Network. Per view: the action image (3 channels in [-1, 1]) and the view's Plücker ray map (6 channels) -> a GroupNorm
CNN -> K soft keypoints (spatial softmax) and, under each keypoint's attention, the expected ray map (6 numbers: the
ray through that keypoint, a line in the world frame), with the mean of each action channel (the gripper lives in
the blue background) and the mean feature -> an MLP per view; views are fused by mean and max (any
number, any order) -> an MLP -> the absolute pose: position (metres, relative to ``center``, / ``pos_scale``),
6-D rotation, gripper logit. The camera enters only through its rays, as in the video model, so the head works from
any calibrated view.

Training data. The rendered action images of the training windows (every frame of a window is a sample) with the
poses they were drawn from. Generated images are blurrier and fainter than rendered ones, so the inputs are
augmented: a random gain per view, additive noise and a random 3x3 blur. It is not trained on the video model's
outputs (that would cost a sampler run per sample); :func:`compare` measures both decoders on generated images.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from action_images.baselines.common import SpatialSoftmax, conv_block, quat_to_matrix, rot6d_to_matrix
from action_images.cliflags import Parser
from action_images.codec import ActionImageCodec, DecodeResult
from action_images.geometry import Camera, matrix_to_quat
from action_images.wam import CheckpointError, load_checked, read_meta, write_checkpoint

FORMAT = "action-images-decode-head"
FORMAT_VERSION = 1


@dataclass
class DecodeHeadConfig:
    image_size: int = 48                            # the video model's resolution (the images it generates)
    channels: list = field(default_factory=lambda: [32, 64, 128])
    groups: int = 8
    keypoints: int = 32
    view_dim: int = 256
    center: list = field(default_factory=lambda: [0.5, 0.0, 0.2])   # metres; positions are predicted around it
    pos_scale: float = 0.3                          # metres per unit of the predicted position

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)
        need(isinstance(self.image_size, int) and 8 <= self.image_size <= 1024,
             f"image_size must be an integer in [8, 1024]; got {self.image_size!r}")
        need(isinstance(self.channels, list) and 1 <= len(self.channels) <= 5 and all(
            isinstance(c, int) and c > 0 and c % self.groups == 0 for c in self.channels),
            f"channels must be 1-5 integers divisible by groups={self.groups}; got {self.channels!r}")
        need(isinstance(self.keypoints, int) and 1 <= self.keypoints <= 256, "keypoints must be in [1, 256]")
        need(isinstance(self.view_dim, int) and 8 <= self.view_dim <= 4096, "view_dim must be in [8, 4096]")
        need(isinstance(self.center, list) and len(self.center) == 3 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in self.center), "center must be 3 finite numbers")
        need(isinstance(self.pos_scale, (int, float)) and self.pos_scale > 0, "pos_scale must be > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecodeHeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown decode-head config fields {unknown}")
        cfg = cls(**d)
        cfg.validate()
        return cfg


class DecodeHead(nn.Module):
    """Action images [B, V, 3, R, R] in [-1, 1] + Plücker maps [B, V, 6, R, R] -> poses [B, 8] (see the module)."""

    def __init__(self, config: DecodeHeadConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        c0 = cfg.channels[0]
        blocks: list[nn.Module] = [nn.Conv2d(9, c0, 3, padding=1), nn.GroupNorm(cfg.groups, c0), nn.SiLU()]
        prev = c0
        for c in cfg.channels[1:]:
            blocks.append(conv_block(prev, c, cfg.groups, stride=2))
            prev = c
        self.cnn = nn.Sequential(*blocks)
        self.keypoints = SpatialSoftmax(prev, cfg.keypoints)
        K = cfg.keypoints
        self.view_mlp = nn.Sequential(nn.Linear(8 * K + 3 + prev, cfg.view_dim), nn.SiLU(),
                                      nn.Linear(cfg.view_dim, cfg.view_dim))
        self.out = nn.Sequential(nn.Linear(2 * cfg.view_dim, cfg.view_dim), nn.SiLU(), nn.Linear(cfg.view_dim, 10))

    def forward(self, act: torch.Tensor, plucker: torch.Tensor) -> torch.Tensor:
        """Network numbers [B, 10]: position (scaled), 6-D rotation, gripper logit."""
        B, V = act.shape[:2]
        x = torch.cat([act, plucker], dim=2).flatten(0, 1).float()             # [B*V, 9, R, R]
        f = self.cnn(x)
        heat = self.keypoints.proj(f)                                          # [B*V, K, h, w]
        prob = heat.flatten(2).softmax(-1)                                     # [B*V, K, h*w]
        h, w = f.shape[-2:]
        ys = torch.linspace(-1, 1, h, dtype=f.dtype)
        xs = torch.linspace(-1, 1, w, dtype=f.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), 0).flatten(1)  # [2, h*w] (y, x)
        uv = torch.einsum("nkp,cp->nkc", prob, grid)                            # [B*V, K, 2]
        rays = F.adaptive_avg_pool2d(plucker.flatten(0, 1).float(), (h, w)).flatten(2)  # [B*V, 6, h*w]
        ray = torch.einsum("nkp,ncp->nkc", prob, rays)                         # [B*V, K, 6]: the ray there
        # GroupNorm removes a constant offset and the keypoints carry positions only: the mean of each action
        # channel (the blue background holds the gripper) and the mean feature enter the view vector directly
        glob = torch.cat([x[:, :3].mean((-2, -1)), f.mean((-2, -1))], -1)
        v = self.view_mlp(torch.cat([uv.flatten(1), ray.flatten(1), glob], -1)).view(B, V, -1)
        return self.out(torch.cat([v.mean(1), v.amax(1)], -1))

    def poses(self, act: torch.Tensor, plucker: torch.Tensor) -> np.ndarray:
        """Absolute poses [B, 8] (float64, unit scalar-last quaternions, g in [0, 1])."""
        x = self.forward(act, plucker).detach().double()
        cfg = self.config
        pos = torch.tensor(cfg.center, dtype=torch.float64) + cfg.pos_scale * x[:, :3]
        quat = matrix_to_quat(rot6d_to_matrix(x[:, 3:9]).numpy())
        return np.concatenate([pos.numpy(), quat, torch.sigmoid(x[:, 9:]).numpy()], axis=1)

    def loss(self, act: torch.Tensor, plucker: torch.Tensor, poses: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2 on scaled position and 6-D rotation, BCE on the gripper; ``pos_err_cm`` for the log."""
        cfg = self.config
        x = self.forward(act, plucker)
        poses = poses.float()
        pos_t = (poses[:, :3] - torch.tensor(cfg.center)) / cfg.pos_scale
        R = quat_to_matrix(poses[:, 3:7])
        rot_t = torch.cat([R[..., :, 0], R[..., :, 1]], -1)
        l_pos = F.mse_loss(x[:, :3], pos_t)
        l_rot = F.mse_loss(x[:, 3:9], rot_t)
        l_grip = F.binary_cross_entropy_with_logits(x[:, 9], poses[:, 7].clamp(0, 1))
        err = ((x[:, :3] - pos_t).detach().norm(dim=-1) * cfg.pos_scale * 100).mean()
        return {"loss": l_pos + l_rot + 0.1 * l_grip, "loss_pos": l_pos, "loss_rot": l_rot, "loss_grip": l_grip,
                "pos_err_cm": err}

    # ---- checkpoint --------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        write_checkpoint(path, self.state_dict(), {"format": FORMAT, "format_version": FORMAT_VERSION,
                                                   "config": asdict(self.config)})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DecodeHead":
        file, meta = read_meta(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{file}: not a decode head (format {meta.get('format')!r}, expected {FORMAT!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{file}: decode-head format version {meta.get('format_version')!r} is not "
                                  f"{FORMAT_VERSION}")
        try:
            cfg = DecodeHeadConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{file}: {e}") from None
        return load_checked(Path(path), lambda: cls(cfg)).eval()


# ---- the head as a drop-in decoder of the policy -------------------------------------------------------------------
class LearnedDecoder(ActionImageCodec):
    """A codec whose ``decode(images, cameras)`` (images [V, T, R, R, 3] in [0, 1] ->
    :class:`~action_images.codec.DecodeResult`) runs the head; encoding is the codec's own, so
    :class:`~action_images.policy.ActionImagesPolicy` takes it as its ``codec``. A learned head has no per-view
    residual, so every keyframe is valid and none disagrees; the geometric fields are NaN."""

    def __init__(self, head: DecodeHead, **codec_kwargs: Any):
        super().__init__(**codec_kwargs)
        self.head = head.eval()

    @classmethod
    def from_pretrained(cls, path: str | Path, **codec_kwargs: Any) -> "LearnedDecoder":
        return cls(DecodeHead.from_pretrained(path), **codec_kwargs)

    def decode(self, images: np.ndarray, cameras: Sequence[Camera], orientation: str = "free",
               position: str = "fit") -> DecodeResult:
        if orientation != "free":                     # the head regresses points; it has no constrained fit
            raise ValueError(f"the decode head decodes any rotation; got orientation {orientation!r}")
        if position != "fit":                         # nor a triangulated position point to read alone
            raise ValueError(f"the decode head regresses the whole pose; got position {position!r}")
        images = np.asarray(images, dtype=np.float32)
        V, T = images.shape[:2]
        R = self.head.config.image_size
        if images.shape[2:] != (R, R, 3) or len(cameras) != V:
            raise ValueError(f"the decode head reads {R}x{R} action images of every view; got images "
                             f"{images.shape} for {len(cameras)} cameras")
        act = torch.from_numpy(images).permute(1, 0, 4, 2, 3) * 2 - 1          # [T, V, 3, R, R]
        plucker = torch.from_numpy(np.stack([c.plucker() for c in cameras])).permute(0, 3, 1, 2)
        with torch.no_grad():
            poses = self.head.poses(act, plucker[None].expand(T, -1, -1, -1, -1))
        nan3 = np.full((T, 3), np.nan)
        return DecodeResult(poses=poses, points=np.full((T, 3, 3), np.nan), uv=np.full((V, T, 3, 2), np.nan),
                            confidence=np.ones((T, 3)), reproj_error=nan3, view_error=np.full((T, 3, V), np.nan),
                            n_views=np.full((T, 3), V), rejected=np.zeros((T, 3, V), bool),
                            disagree=np.zeros(T, bool), valid=np.ones(T, bool),
                            gripper_per_view=np.full((T, V), np.nan), cut=np.zeros((T, 3, V), bool),
                            border=np.zeros(T, bool))


# ---- training ------------------------------------------------------------------------------------------------------
def augment(act: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rendered action images [N, V, 3, R, R] in [-1, 1] made more like generated ones: a 3x3 blur on half of them,
    then Gaussian noise of a random level up to 0.08."""
    N, V = act.shape[:2]
    x = act.flatten(0, 1)
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16.0
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3).contiguous(), groups=3)
    pick = torch.rand(N * V, 1, 1, 1, generator=generator) < 0.5
    x = torch.where(pick, blurred, x)
    level = 0.08 * torch.rand(N * V, 1, 1, 1, generator=generator)
    x = x + level * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1).view_as(act)


def frame_samples(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated batch of windows -> every frame as one sample: act [B*F, V, 3, R, R], plucker, poses [B*F, 8]."""
    act = batch["act"]                                                        # [B, V, F, 3, R, R]
    B, V, Fr = act.shape[:3]
    act = act.permute(0, 2, 1, 3, 4, 5).reshape(B * Fr, V, *act.shape[3:])
    plucker = batch["plucker"][:, None].expand(-1, Fr, -1, -1, -1, -1).reshape(B * Fr, V, *batch["plucker"].shape[2:])
    return act, plucker, batch["poses"].reshape(B * Fr, -1)


def action_window(windows: Any, key: int, episodes: dict[tuple[int, int], Any]) -> dict[str, torch.Tensor]:
    """A training window's action part without its video (the head needs no RGB, and decoding video is most of a
    window's cost): the same draw of episode, start, views and crop as ``Windows[key]``, the action images rendered
    at the model's resolution. ``episodes`` caches the episodes' numeric data."""
    from action_images.data.windows import augment_camera, keyframe_times, window_poses

    cfg = windows.cfg
    rng = np.random.default_rng([windows.seed, int(key)])
    d, i = windows.index[int(rng.integers(len(windows.index)))]
    ep = episodes.get((d, i))
    if ep is None:
        ep = episodes[(d, i)] = windows.datasets[d].episode(i)
    t0 = int(rng.integers(1 << 30)) % windows.num_starts(d, i)
    names = [c for c in windows.datasets[d].camera_names if cfg.views is None or c in cfg.views]
    views = [names[j] for j in rng.permutation(len(names))[:cfg.num_views]]
    times = keyframe_times(t0, len(ep), cfg.horizon, cfg.stride)
    cams = [augment_camera(ep.frame_cameras[n][t0] if ep.frame_cameras else ep.cameras[n], rng, cfg)[1]
            for n in views]
    poses = window_poses(ep.states, ep.actions, times)
    act = torch.from_numpy(windows.codec.encode(poses, cams)).permute(0, 1, 4, 2, 3) * 2.0 - 1.0   # [V, F, 3, R, R]
    plucker = torch.from_numpy(np.stack([c.plucker() for c in cams])).permute(0, 3, 1, 2)
    return {"act": act.contiguous(), "plucker": plucker.contiguous(), "poses": torch.from_numpy(poses)}


def train_head(checkpoint: str, data: Sequence[str], out: str, minutes: float | None = None,
               steps: int | None = None, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
               progress: bool = True) -> dict[str, Any]:
    """Trains a head on the windows the checkpoint's model trains on (its resolution, cameras and crop) and saves it
    to ``out``; returns the run's summary (also ``out/train_summary.json``)."""
    from tqdm import tqdm

    from action_images.baselines import load_model
    from action_images.data.windows import WindowConfig, Windows, collate
    from action_images.runfiles import append_jsonl, atomic_write_json

    if minutes is None and steps is None:
        raise ValueError("give --minutes or --steps")
    model = load_model(checkpoint)
    mcfg = model.config
    windows = Windows(list(data), WindowConfig.from_model(mcfg), seed=seed)
    torch.manual_seed(seed)
    head = DecodeHead(DecodeHeadConfig(image_size=int(mcfg.image_size)))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "log.jsonl"
    log.unlink(missing_ok=True)
    episodes: dict[tuple[int, int], Any] = {}
    t0, step = time.perf_counter(), 0
    bar = tqdm(total=steps, disable=not progress, desc="decode head")
    while True:
        if steps is not None and step >= steps:
            break
        if minutes is not None and time.perf_counter() - t0 >= 60 * minutes:
            break
        batch = collate([action_window(windows, step * batch_size + j, episodes) for j in range(batch_size)])
        act, plucker, poses = frame_samples(batch)
        parts = head.loss(augment(act, gen), plucker, poses)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            row = {"step": step, **{k: float(v.detach()) for k, v in parts.items()}, "elapsed_s": time.perf_counter() - t0}
            append_jsonl(log, row)
            bar.set_postfix(pos_err_cm=f"{row['pos_err_cm']:.2f}")
    bar.close()
    head.save_pretrained(out_dir)
    summary = {"command": "decode_head train", "checkpoint": str(checkpoint), "data": list(data), "steps": step,
               "batch_size": batch_size, "lr": lr, "seed": seed, "minutes": (time.perf_counter() - t0) / 60,
               "parameters": sum(p.numel() for p in head.parameters())}
    atomic_write_json(out_dir / "train_summary.json", summary)
    return summary


# ---- measuring: both decoders on the video model's generated action images -------------------------------------------
def compare(checkpoint: str, head_dir: str, data: Sequence[str], episodes: int = 40, starts: int = 2,
            sampler_steps: int = 6, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Open loop on held-out demos: the checkpoint generates each window's future action images once (the policy
    job, ``sampler_steps`` Euler steps); triangulation and the head decode the same images. Returns the keyframe
    position errors (cm) of both, of the head on the rendered (true) images, and of "nothing moves"."""
    from tqdm import tqdm

    from action_images.baselines import load_model
    from action_images.data.windows import WindowConfig, Windows, collate

    model = load_model(checkpoint).eval()
    head = LearnedDecoder.from_pretrained(head_dir)
    codec = ActionImageCodec()
    windows = Windows(list(data), WindowConfig.from_model(model.config), seed=seed)
    keys = windows.episode_keys()[:episodes]
    errs: dict[str, list[float]] = {"triangulation": [], "head": [], "head_on_true_images": [], "still": []}
    grip: dict[str, list[bool]] = {"triangulation": [], "head": []}
    invalid = 0
    gen = torch.Generator().manual_seed(seed)
    for d, i in tqdm(keys, disable=not progress, desc="compare decoders"):
        n0 = windows.num_starts(d, i)
        for s in range(starts):
            rng = np.random.default_rng([seed, d, i, s])
            w = windows.window(d, i, (s * n0) // starts, rng, augment=False)
            batch = collate([w])
            with torch.no_grad():
                out = model.sample(batch, task="policy", steps=sampler_steps, generator=gen)
            act = ((out.act[0, :, 1:].clamp(-1, 1) + 1) * 0.5).permute(0, 1, 3, 4, 2).numpy()   # [V, H, R, R, 3]
            true_act = ((w["act"][:, 1:] + 1) * 0.5).permute(0, 1, 3, 4, 2).numpy()
            cams = [_camera_from_window(w, v) for v in range(act.shape[0])]
            target = w["poses"][1:].numpy()
            tri, learned = codec.decode(act, cams), head.decode(act, cams)
            on_true = head.decode(true_act, cams)
            invalid += int((~tri.valid).sum())
            for name, dec in (("triangulation", tri), ("head", learned), ("head_on_true_images", on_true)):
                e = np.linalg.norm(dec.poses[:, :3] - target[:, :3], axis=1) * 100
                errs[name] += [float(x) for x in e[np.isfinite(e)]]
                if name in grip:
                    ok = np.isfinite(dec.poses[:, 7])
                    grip[name] += list((dec.poses[ok, 7] > 0.5) == (target[ok, 7] > 0.5))
            errs["still"] += [float(x) for x in np.linalg.norm(target[:, :3] - w["poses"][0, :3].numpy(), axis=1) * 100]
    res = {name: {"median_cm": float(np.median(v)), "mean_cm": float(np.mean(v)), "n": len(v)}
           for name, v in errs.items() if v}
    for name, v in grip.items():
        res[name]["gripper_correct"] = float(np.mean(v)) if v else None
    res["triangulation"]["invalid_keyframes"] = invalid
    return {"command": "decode_head compare", "checkpoint": str(checkpoint), "head": str(head_dir),
            "data": list(data), "episodes": len(keys), "starts": starts, "sampler_steps": sampler_steps,
            "seed": seed, "errors": res}


def _camera_from_window(w: dict[str, Any], v: int) -> Camera:
    R = int(w["act"].shape[-1])
    return Camera(name=f"view{v}", K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=R, height=R)


# ---- command line --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m action_images.decode_head train|compare ...`` (see the module docstring)."""
    from action_images.runfiles import atomic_write_json, dumps

    p = Parser(prog="python -m action_images.decode_head", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a head on a checkpoint's training windows")
    c = sub.add_parser("compare", help="triangulation vs the head on generated action images of held-out demos")
    for q in (t, c):
        q.add_argument("--checkpoint", required=True, help="the world action model's run directory")
        q.add_argument("--data", required=True, help="dataset dir(s), comma separated")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--no-progress", action="store_true")
    t.add_argument("--out", required=True, help="folder for the head (config.json + model.safetensors)")
    t.add_argument("--minutes", type=float, default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=16, help="windows per step (each gives 1 + H frames)")
    t.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--head", required=True, help="the head's folder (from train)")
    c.add_argument("--episodes", type=int, default=40)
    c.add_argument("--starts", type=int, default=2)
    c.add_argument("--sampler-steps", type=int, default=6)
    c.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    data = [s for s in a.data.split(",") if s]
    try:
        if a.cmd == "train":
            for flag, v in (("--minutes", a.minutes), ("--steps", a.steps)):
                if v is not None and not v > 0:
                    raise ValueError(f"{flag} must be > 0; got {v}")
            if a.batch_size < 1 or not a.lr > 0:
                raise ValueError("--batch-size must be >= 1 and --lr > 0")
            res = train_head(a.checkpoint, data, a.out, a.minutes, a.steps, a.batch_size, a.lr, a.seed,
                             not a.no_progress)
        else:
            if a.episodes < 1 or a.starts < 1 or a.sampler_steps < 1:
                raise ValueError("--episodes, --starts and --sampler-steps must be >= 1")
            res = compare(a.checkpoint, a.head, data, a.episodes, a.starts, a.sampler_steps, a.seed,
                          not a.no_progress)
            if a.json:
                atomic_write_json(a.json, res)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"python -m action_images.decode_head {a.cmd}: {e}", file=sys.stderr)
        return 2
    print(dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
