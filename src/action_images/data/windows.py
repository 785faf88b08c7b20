"""Training windows: V views x (current frame + H future keyframes) of RGB and action images, rendered on the fly.

A window is drawn *from an integer key*: everything random about it (episode, start frame, view subset, crop) comes
from ``numpy.random.default_rng([seed, key])``. The trainer asks for keys derived from (step, rank), so a resumed run
sees exactly the batches an uninterrupted one would, with no data-loader state to checkpoint.

Frame alignment: frame 0 is the current frame t0 and its action image is the current state ``states[t0]``; keyframe
k (1..H) is image frame t_k = t0 + k*stride (clipped to the episode) and its action image the commanded target that
led there, ``actions[t_k - 1]`` -- so a decoded keyframe is an absolute target the policy can execute.

Augmentation keeps calibration consistent: a random square crop (side ``crop_scale`` of the short side) then a
resize to ``image_size``, with ``Camera.cropped(...).resized(...)`` updating K; action images and Plücker maps are
rendered with the final camera, so they line up with the augmented pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from action_images.codec import ActionImageCodec
from action_images.geometry import Camera, euler_to_quat


@dataclass
class WindowConfig:
    image_size: int = 48
    num_views: int = 2               # random subset of the dataset's cameras per window
    horizon: int = 4                 # H future keyframes
    stride: int = 2                  # control steps between keyframes
    crop_scale: tuple[float, float] = (0.85, 1.0)   # side of the random square crop / short image side
    views: tuple[str, ...] | None = None            # restrict to these cameras (None: all)
    crop: str = "center"                            # "center" square, or "workspace": the square around the box
    workspace: tuple | None = None                  # ((x, y, z) low, (x, y, z) high) world box of crop="workspace"
    history: int = 0                                # past frames given beside the current one (0: none)
    history_gap: int = 4                            # control steps between the current frame and each past one
    current_noise: float = 0.0                      # training: σ (m, per axis) on the drawn current pose (0: off)
    current_noise_prob: float = 0.5                 # share of training windows whose drawn current pose is moved

    @classmethod
    def from_model(cls, config: Any, views: Sequence[str] | None = None, num_views: int | None = None
                   ) -> "WindowConfig":
        """The windows a model with ``config`` (a ``WAMConfig``) trains and evaluates on; ``views`` restricts the
        cameras (default: the config's ``camera_names``), ``num_views`` overrides the views per window."""
        names = views if views is not None else getattr(config, "camera_names", None)
        ws = getattr(config, "workspace", None)
        return cls(image_size=config.image_size, num_views=int(num_views or config.num_views),
                   horizon=config.horizon, stride=config.stride, views=tuple(names) if names else None,
                   crop=getattr(config, "crop", "center"), workspace=tuple(map(tuple, ws)) if ws else None,
                   history=int(getattr(config, "history", 0)), history_gap=int(getattr(config, "history_gap", 4)))


CROPS = ("center", "workspace")
WORKSPACE_MARGIN = 1.1       # the workspace square is this much wider than the box's projection
WORKSPACE_JITTER = (0.9, 1.1, 0.05)   # training: side scale range and centre shift (fraction of the side)


def workspace_box(cam: Camera, workspace: Sequence[Sequence[float]], scale: float = 1.0,
                  shift: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int, int]:
    """The square crop (x0, y0, side) around the projection of the world box ``workspace`` (low, high corners),
    ``WORKSPACE_MARGIN`` wider, kept inside the image (side at most the short side). More pixels per centimetre
    where the robot works, whatever the camera's distance and field of view; the centred square when the box is
    (partly) behind the camera."""
    lo, hi = np.asarray(workspace[0], float), np.asarray(workspace[1], float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    uv, depth = cam.project(corners)
    if not (np.asarray(depth) > 1e-6).all():
        return center_box(cam)
    a, b = uv.min(axis=0), uv.max(axis=0)
    short = min(cam.width, cam.height)
    side = int(round(min(short, max(8.0, float((b - a).max()) * WORKSPACE_MARGIN * scale))))
    cx, cy = (a + b) / 2.0 + np.asarray(shift) * side
    return square_at(cam, float(cx), float(cy), side)


def square_at(cam: Camera, cx: float, cy: float, side: int) -> tuple[int, int, int]:
    """The square crop (x0, y0, side) of ``side`` pixels centred on pixel (cx, cy), moved inside ``cam``'s image."""
    x0 = int(np.clip(round(cx - (side - 1) / 2.0), 0, cam.width - side))
    y0 = int(np.clip(round(cy - (side - 1) / 2.0), 0, cam.height - side))
    return x0, y0, side


def view_box(cam: Camera, cfg: WindowConfig) -> tuple[int, int, int]:
    """The evaluation crop of one view (no augmentation): shared by the evaluation windows and the live policy."""
    if cfg.crop == "workspace":
        return workspace_box(cam, cfg.workspace)
    return center_box(cam)


def augment_camera(cam: Camera, rng: np.random.Generator, cfg: WindowConfig) -> tuple[tuple[int, int, int], Camera]:
    """Random square crop (x0, y0, side) of ``cam``'s image and the camera of the crop resized to ``image_size``:
    ``crop_scale`` of the short side anywhere in the image ("center"), or the workspace square scaled and shifted
    by ``WORKSPACE_JITTER`` ("workspace")."""
    if cfg.crop == "workspace":
        s_lo, s_hi, shift = WORKSPACE_JITTER
        box = workspace_box(cam, cfg.workspace, rng.uniform(s_lo, s_hi), tuple(rng.uniform(-shift, shift, 2)))
        x0, y0, side = box
        return box, cam.cropped(x0, y0, side, side).resized(cfg.image_size, cfg.image_size)
    short = min(cam.width, cam.height)
    lo, hi = cfg.crop_scale
    side = int(round(short * rng.uniform(lo, hi)))
    side = max(1, min(short, side))
    x0 = int(rng.integers(0, cam.width - side + 1))
    y0 = int(rng.integers(0, cam.height - side + 1))
    return (x0, y0, side), cam.cropped(x0, y0, side, side).resized(cfg.image_size, cfg.image_size)


def keyframe_times(t0: int, T: int, horizon: int, stride: int) -> np.ndarray:
    """[1 + H] image frame indices: t0, t0 + stride, ... clipped to the last frame."""
    return np.minimum(t0 + stride * np.arange(horizon + 1), T - 1)


def center_box(cam: Camera) -> tuple[int, int, int]:
    """The centred square crop (x0, y0, side) of ``cam``'s image (the no-augmentation crop)."""
    side = min(cam.width, cam.height)
    return (cam.width - side) // 2, (cam.height - side) // 2, side


def crop_resize(frames: np.ndarray, cam: Camera, box: tuple[int, int, int], size: int) -> tuple[torch.Tensor, Camera]:
    """Crop ``frames [F, H, W, 3]`` uint8 to the square ``box`` and resize to ``size`` (antialiased bilinear, rounded),
    with the camera updated to match. The one image path shared by training windows and the live policy."""
    x0, y0, side = box
    cam_out = cam.cropped(x0, y0, side, side).resized(size, size)
    img = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y0 + side, x0:x0 + side]))     # [F, s, s, 3] uint8
    if side != size:
        img = F.interpolate(img.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
        img = img.round().clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8)
    return img, cam_out


def history_times(t0: int, history: int, gap: int) -> np.ndarray:
    """[P] past image frame indices t0 - gap, t0 - 2 gap, ... clipped to the episode's first frame (the frame an
    episode starts with stands in for the frames before it, as a policy's first observation does)."""
    return np.maximum(t0 - gap * np.arange(1, history + 1), 0)


def history_frames(rgb_u8: np.ndarray | torch.Tensor, cams: Sequence[Camera], poses: np.ndarray,
                   codec: ActionImageCodec) -> torch.Tensor:
    """rgb uint8 [V, P, R, R, 3] and the measured poses [P, 8] of P past frames -> [V, P, 6, R, R] in [-1, 1]: each
    past frame's RGB and its action image, drawn in the current frame's cameras."""
    rgb = torch.as_tensor(rgb_u8).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0          # [V, P, 3, R, R]
    act = torch.from_numpy(codec.encode(poses, cams)).permute(0, 1, 4, 2, 3) * 2.0 - 1.0  # [V, P, 3, R, R]
    return torch.cat([rgb, act], dim=2).contiguous()


def window_poses(states: np.ndarray, actions: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[1 + H, 8] poses drawn as action images: the current state, then the targets that led to each keyframe."""
    poses = actions[np.maximum(times - 1, 0)].copy()
    poses[0] = states[times[0]]
    return poses


def finish_window(rgb_u8: np.ndarray | torch.Tensor, cams: Sequence[Camera], poses: np.ndarray, instruction: str,
                  codec: ActionImageCodec, **extra: Any) -> dict[str, Any]:
    """rgb uint8 [V, F, R, R, 3] (already at the cameras' size) -> the window dict the model trains on."""
    rgb = torch.as_tensor(rgb_u8).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0          # [V, F, 3, R, R]
    act = torch.from_numpy(codec.encode(poses, cams)).permute(0, 1, 4, 2, 3) * 2.0 - 1.0  # [V, F, 3, R, R]
    plucker = torch.from_numpy(np.stack([c.plucker() for c in cams])).permute(0, 3, 1, 2)  # [V, 6, R, R]
    return {"rgb": rgb.contiguous(), "act": act.contiguous(), "plucker": plucker.contiguous(),
            "poses": torch.from_numpy(poses.astype(np.float64)),
            "K": torch.from_numpy(np.stack([c.K for c in cams])),
            "T_cam_world": torch.from_numpy(np.stack([c.T_cam_world for c in cams])),
            "instruction": instruction, **extra}


def noisy_current(poses: np.ndarray, cams: Sequence[Camera], codec: ActionImageCodec, rng: np.random.Generator,
                  cfg: WindowConfig) -> dict[str, torch.Tensor]:
    """``{"act_in0": [V, 3, R, R]}`` in [-1, 1]: frame 0's action image as the model is *given* it in training, the
    current pose's position moved by N(0, σ²) per axis (σ = ``cfg.current_noise``) in ``cfg.current_noise_prob`` of
    the windows (the others: the true pose). The targets (``act``, ``poses``) keep the true pose, so a network that
    copies the drawn pose into its plan pays for it; it has to read where the hand is and where it goes from the
    frames."""
    pose = np.asarray(poses[0], dtype=np.float64).copy()
    if rng.random() < cfg.current_noise_prob:
        pose[:3] += rng.normal(0.0, cfg.current_noise, 3)
    act = torch.from_numpy(codec.encode(pose, cams)).permute(0, 3, 1, 2) * 2.0 - 1.0    # [V, 3, R, R]
    return {"act_in0": act.contiguous()}


def _task_name(ds: Any, i: int) -> str:
    """The task that collected episode ``i`` (``extra/task_name``); an error naming the dataset where it is missing."""
    name = ds.episode_info(i).get("extra/task_name")
    if name is None:
        raise ValueError(f"exclude_tasks: {ds.root} episode {i} has no extra/task_name (not written by "
                         "`action-images collect`), so its task is not known")
    return str(name)


class Windows(Dataset):
    """Windows from one or more LeRobot v3 datasets (``action_images.data.LeRobotDataset``); index = key."""

    def __init__(self, roots: Sequence[str], cfg: WindowConfig, seed: int = 0, cache_episodes: int = 2048,
                 cameras: str | Path | None = None, exclude_tasks: dict[str, Sequence[str]] | None = None):
        """``cameras``: a calibration file (``meta/cameras.json`` format) for every dataset in ``roots``, in place of
        their own (a dataset written by LeRobot itself has none). ``cache_episodes``: decoded episodes kept, over all
        datasets together (about 1.5 MB each at 64 px with 4 views of 30 frames); an episode read again after
        eviction costs its parquet read, several times the cost of a window. ``exclude_tasks``: {root: task names}
        leaves out that dataset's episodes whose ``extra/task_name`` (written by ``action-images collect``) is
        named, e.g. a task's demos replaced by another dataset's."""
        from action_images.data import LeRobotDataset  # the reader is another module; import late
        self.cfg, self.seed = cfg, int(seed)
        self.datasets = [LeRobotDataset(r, cache_size=cache_episodes, cameras=cameras) for r in roots]
        self._episodes: dict[tuple[int, int], Any] = {}   # decoded episodes (64 px x 4 views x 13 frames ~ 0.6 MB)
        self.cache_episodes = int(cache_episodes)
        self._n_starts: dict[tuple[int, int], int] = {}
        excluded = {str(r): set(v) for r, v in (exclude_tasks or {}).items()}
        unknown = sorted(set(excluded) - {str(r) for r in roots})
        if unknown:
            raise ValueError(f"exclude_tasks names {unknown}, not among the datasets {list(roots)}")
        self.index = []
        for d, (r, ds) in enumerate(zip(roots, self.datasets)):
            drop = excluded.get(str(r))
            if not drop:
                self.index += [(d, i) for i in range(ds.num_episodes)]
                continue
            names = [_task_name(ds, i) for i in range(ds.num_episodes)]
            if drop - set(names):
                raise ValueError(f"exclude_tasks: {r} has no episodes of {sorted(drop - set(names))} "
                                 f"(its tasks: {sorted(set(names))})")
            self.index += [(d, i) for i, name in enumerate(names) if name not in drop]
        if not self.index:
            raise ValueError(f"no episodes in {list(roots)}")
        for ds in self.datasets:
            names = [c for c in ds.camera_names if cfg.views is None or c in cfg.views]
            if len(names) < cfg.num_views:
                raise ValueError(f"{ds.root}: needs {cfg.num_views} cameras, has {names}")
        self.codec = ActionImageCodec()

    def __len__(self) -> int:
        return sum(int(self.datasets[d].episode_lengths[i]) for d, i in self.index)

    @property
    def camera_names(self) -> list[str]:
        """The cameras windows are drawn from (the first dataset's, restricted to ``cfg.views``)."""
        return [c for c in self.datasets[0].camera_names if self.cfg.views is None or c in self.cfg.views]

    def episode_keys(self) -> list[tuple[int, int]]:
        return list(self.index)

    def __getitem__(self, key: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(key)])
        d, i = self.index[int(rng.integers(len(self.index)))]
        return self.window(d, i, int(rng.integers(1 << 30)), rng)

    def num_starts(self, d: int, i: int) -> int:
        """Start frames of episode ``i`` of dataset ``d``: every frame up to the first success. Frames recorded
        after it (``collect --hold-steps``, stored as ``extra/hold_steps``) only ever serve as future keyframes."""
        if (d, i) not in self._n_starts:
            ds = self.datasets[d]
            hold = int(ds.episode_info(i).get("extra/hold_steps") or 0)
            self._n_starts[(d, i)] = max(1, int(ds.episode_lengths[i]) - hold)
        return self._n_starts[(d, i)]

    def window(self, d: int, i: int, t0: int | None, rng: np.random.Generator,
               views: Sequence[str] | None = None, augment: bool = True) -> dict[str, Any]:
        """The window of episode ``i`` of dataset ``d`` starting at ``t0`` (taken modulo :meth:`num_starts`)."""
        cfg, ds = self.cfg, self.datasets[d]
        ep = self._episodes.get((d, i))
        if ep is None:
            ep = ds.episode(i)
            if len(self._episodes) >= self.cache_episodes:
                self._episodes.pop(next(iter(self._episodes)))
            self._episodes[(d, i)] = ep
        T, n0 = len(ep), self.num_starts(d, i)
        t0 = int(t0 % n0) if t0 is not None else int(rng.integers(n0))
        names = [c for c in ds.camera_names if cfg.views is None or c in cfg.views]
        if views is None:
            views = [names[j] for j in rng.permutation(len(names))[:cfg.num_views]]
        times = keyframe_times(t0, T, cfg.horizon, cfg.stride)
        past = history_times(t0, cfg.history, cfg.history_gap)
        cams, frames = [], []
        for name in views:
            cam = ep.frame_cameras[name][t0] if ep.frame_cameras else ep.cameras[name]
            box = augment_camera(cam, rng, cfg)[0] if augment else view_box(cam, cfg)
            img, cam_out = crop_resize(ep.images[name][np.concatenate([times, past])], cam, box, cfg.image_size)
            frames.append(img)                                                 # [F + P, S, S, 3] uint8
            cams.append(cam_out)
        poses = window_poses(ep.states, ep.actions, times)
        rgb, extra = torch.stack(frames), {}
        if cfg.history:
            extra["history"] = history_frames(rgb[:, len(times):], cams, ep.states[past], self.codec)
        if augment and cfg.current_noise > 0:
            extra.update(noisy_current(poses, cams, self.codec, rng, cfg))
        return finish_window(rgb[:, :len(times)], cams, poses, ep.instruction, self.codec,
                             episode=i, dataset=d, t0=t0, **extra)


# ----------------------------------------------------------------------------------------------------------------------
# synthetic windows (tests, benchmarks, smoke runs): a coloured cube and an end-effector moving to it
# ----------------------------------------------------------------------------------------------------------------------

COLORS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200)}


class SyntheticWindows(Dataset):
    """Random calibrated cameras around a table; the end-effector reaches, grasps and lifts a coloured cube.

    Scenes are cheap numpy drawings (discs), but the cameras, poses and action images are real, so every geometric
    code path (crop/resize of K, Plücker maps, codec) is exercised. ``num_scenes`` > 0 limits the distinct episodes
    (an overfit set); ``num_cameras`` fixed cameras per dataset, or ``random_cameras`` for a new rig per episode.
    """

    def __init__(self, cfg: WindowConfig, seed: int = 0, num_scenes: int = 0, num_cameras: int = 4,
                 episode_len: int = 40, random_cameras: bool = False, native_size: int = 64):
        self.cfg, self.seed, self.num_scenes = cfg, int(seed), int(num_scenes)
        self.T, self.random_cameras, self.native = episode_len, random_cameras, native_size
        self.num_cameras = num_cameras
        self.cameras = self._rig(np.random.default_rng([self.seed, 7]))
        self.codec = ActionImageCodec()

    def __len__(self) -> int:
        return (self.num_scenes or 1000) * self.T

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def _rig(self, rng: np.random.Generator) -> list[Camera]:
        cams = []
        for k in range(self.num_cameras):
            az = 2 * np.pi * (k + rng.uniform(-0.15, 0.15)) / self.num_cameras
            el, r = rng.uniform(0.5, 0.9), rng.uniform(0.9, 1.2)
            eye = np.array([0.5 + r * np.cos(az) * np.cos(el), r * np.sin(az) * np.cos(el), r * np.sin(el)])
            cams.append(Camera.look_at(eye, [0.5, 0.0, 0.1], 50.0, self.native, self.native, name=f"cam{k}"))
        return cams

    def episode(self, scene: int) -> dict[str, Any]:
        """Poses [T, 8] (states; actions = next states), cube position and colour, cameras of one scene."""
        rng = np.random.default_rng([self.seed, 1, scene])
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        cube = np.array([rng.uniform(0.35, 0.65), rng.uniform(-0.2, 0.2), 0.02])
        start = np.array([rng.uniform(0.35, 0.65), rng.uniform(-0.2, 0.2), rng.uniform(0.25, 0.35)])
        yaw0, yaw1 = rng.uniform(-0.6, 0.6, size=2)
        T = self.T
        s = np.clip(np.arange(T) / (0.45 * T), 0, 1)[:, None]          # reach above the cube
        d = np.clip((np.arange(T) - 0.45 * T) / (0.2 * T), 0, 1)[:, None]  # descend
        lift = np.clip((np.arange(T) - 0.75 * T) / (0.2 * T), 0, 1)[:, None]
        above = cube + [0, 0, 0.15]
        pos = (1 - s) * start + s * above + d * (cube + [0, 0, 0.03] - above) + lift * [0, 0, 0.15]
        yaw = yaw0 + (yaw1 - yaw0) * s[:, 0]
        quat = euler_to_quat(np.stack([np.full(T, np.pi), np.zeros(T), yaw], -1))   # tool z points down
        g = np.where(np.arange(T) >= 0.7 * T, 0.0, 1.0)
        states = np.concatenate([pos, quat, g[:, None]], axis=-1)
        cams = self._rig(rng) if self.random_cameras else self.cameras
        return {"states": states, "actions": np.concatenate([states[1:], states[-1:]]), "cube": cube,
                "color": color, "cameras": cams, "instruction": f"pick up the {color} cube"}

    def render(self, cam: Camera, pose: np.ndarray, cube: np.ndarray, color: str, cube_lift: float) -> np.ndarray:
        """uint8 [H, W, 3]: table, cube disc and end-effector discs (body + "up" marker), far to near."""
        H, W = cam.height, cam.width
        v, u = np.mgrid[0:H, 0:W].astype(np.float32)
        img = np.empty((H, W, 3), np.float32)
        img[:] = (150, 140, 120)
        c = cube + [0, 0, cube_lift]
        p, R = pose[:3], None
        from scipy.spatial.transform import Rotation
        R = Rotation.from_quat(pose[3:7]).as_matrix()
        blobs = [(c, 0.03, COLORS[color]), (p, 0.025, (30, 30, 30)), (p + 0.05 * R[:, 0], 0.012, (240, 240, 240))]
        uvd = [(cam.project(x)[0], cam.project(x)[1], r, col) for x, r, col in blobs]
        for uv, depth, r, col in sorted(uvd, key=lambda b: -float(b[1])):
            if depth <= 1e-3:
                continue
            rad = cam.K[0, 0] * r / depth
            img[(u - uv[0]) ** 2 + (v - uv[1]) ** 2 <= rad ** 2] = col
        return img.astype(np.uint8)

    def __getitem__(self, key: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(key)])
        scene = int(rng.integers(self.num_scenes or (1 << 30)))
        return self.window(scene, int(rng.integers(self.T)), rng)

    def window(self, scene: int, t0: int, rng: np.random.Generator, augment: bool = True) -> dict[str, Any]:
        cfg, ep = self.cfg, self.episode(scene)
        times = keyframe_times(t0, self.T, cfg.horizon, cfg.stride)
        order = rng.permutation(len(ep["cameras"]))[:cfg.num_views]
        cams = []
        for j in order:
            cam = ep["cameras"][j]
            if augment:
                cams.append(augment_camera(cam, rng, cfg)[1])
            else:
                cams.append(cam.resized(cfg.image_size, cfg.image_size))
        grasp = int(0.75 * self.T)

        def frames_at(ts: np.ndarray) -> np.ndarray:                            # [V, len(ts), R, R, 3]
            return np.stack([[self.render(c, ep["states"][t], ep["cube"], ep["color"],
                                          max(0.0, ep["states"][t, 2] - 0.05) if t > grasp else 0.0)
                              for t in ts] for c in cams])

        frames = frames_at(times)
        poses = window_poses(ep["states"], ep["actions"], times)
        extra = {}
        if cfg.history:
            past = history_times(t0, cfg.history, cfg.history_gap)
            extra["history"] = history_frames(frames_at(past), cams, ep["states"][past], self.codec)
        if augment and cfg.current_noise > 0:
            extra.update(noisy_current(poses, cams, self.codec, rng, cfg))
        return finish_window(frames, cams, poses, ep["instruction"], self.codec, episode=scene, dataset=-1, t0=t0,
                             **extra)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else torch.tensor(vals) if isinstance(
            vals[0], (int, float)) else vals
    return out
