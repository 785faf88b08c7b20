"""Closed-loop policy: observe -> generate -> decode -> action chunk -> replan.

Why this shape. The world action model predicts *pictures* of future actions, so the policy is a thin loop around
three existing pieces: the training-window builder (``data.windows.finish_window``, so the model sees exactly what it
was trained on), ``WorldActionModel.sample(task="policy")`` and ``ActionImageCodec.decode``. Because decoding
triangulates from several views it returns an uncertainty signal (view disagreement, reprojection error, invalid
frames) that the policy acts on: ``on_disagree="replan"`` executes only the agreeing prefix of a chunk and resamples
at once; ``"hold"`` keeps the current pose and replans. A chunk that decodes to nothing holds the current pose, so
the env never receives NaN.

Timing. Keyframe k (1..H) is drawn from the target commanded at control step ``k*stride - 1`` after "now" (see
``data.windows``), so the interpolated action at step j is the pose at time tau = j + 1 on the line from the current
pose (tau = 0) through the keyframes (tau = k*stride): position linear, rotation slerp, gripper linear or step.

    model = WorldActionModel.from_pretrained("runs/pick")
    policy = ActionImagesPolicy(model, PolicySettings(execute_k=8, sampler_steps=10))
    policy.reset(seed=0)
    obs, info = env.reset(seed=0)
    while True:
        obs, r, term, trunc, info = env.step(policy.act(obs, env.cameras))
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp

from action_images.codec import ORIENTATIONS, POSITIONS, ActionImageCodec, DecodeResult
from action_images.data.windows import (center_box, collate, crop_resize, finish_window, history_frames,
                                         square_at, workspace_box)
from action_images.geometry import Camera

DISAGREE_CHOICES = ("replan", "hold")
GRIPPER_MODES = ("linear", "step")
METHODS = ("euler", "heun")        # the ODE samplers of WorldActionModel.sample
NOISE_MODES = ("fresh", "episode")  # starting noise: a new draw at every replanning step, or one per episode
MAX_SAMPLER_STEPS = 1000
MAX_ENSEMBLE = 64
# settings added after the first policy-server protocol -> their defaults (PolicySettings.to_metadata)
LATER_SETTINGS: dict[str, Any] = {"ensemble": 1, "orientation": "free", "zoom": 1.0, "noise": "fresh",
                                   "position": "fit"}
# setting -> the command-line flag that sets it (errors name both, so the CLI and the library share one message)
FLAGS = {"camera_names": "--policy-cameras", "horizon": "--horizon", "execute_k": "--execute-k",
         "sampler_steps": "--sampler-steps", "cfg_scale": "--cfg-scale", "on_disagree": "--on-disagree",
         "disagree_px": "--disagree-px", "gripper": "--gripper", "max_resamples": "--max-resamples",
         "method": "--method", "decode_head": "--decode-head", "ensemble": "--ensemble",
         "orientation": "--orientation", "zoom": "--zoom", "noise": "--noise", "position": "--position"}


def _label(name: str, flags: dict[str, str]) -> str:
    return f"{flags[name]} ({name})" if name in flags else name


def check_int(name: str, value: Any, lo: int, hi: int | None = None, flags: dict[str, str] = FLAGS) -> int:
    """``value`` as an int in [lo, hi]; else ValueError naming the setting, its flag and the allowed range."""
    rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None
                                                                                            and value > hi):
        raise ValueError(f"{_label(name, flags)} must be an integer {rng}; got {value!r}")
    return int(value)


def check_float(name: str, value: Any, lo: float, lo_open: bool = False, flags: dict[str, str] = FLAGS) -> float:
    """``value`` as a finite float >= lo (> lo with ``lo_open``); else ValueError naming the setting and its flag."""
    rng = f"{'>' if lo_open else '>='} {lo:g}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_label(name, flags)} must be a finite number {rng}; got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x) or x < lo or (lo_open and x == lo):
        raise ValueError(f"{_label(name, flags)} must be a finite number {rng}; got {value!r}")
    return x


def check_choice(name: str, value: Any, choices: Sequence[str], flags: dict[str, str] = FLAGS) -> str:
    if value not in choices:
        raise ValueError(f"{_label(name, flags)} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


ALL_VIEWS = "all"   # camera_names = ("all",): the model sees every view it is given, in the order given


def check_names(name: str, value: Any, min_len: int, flags: dict[str, str] = FLAGS) -> tuple[str, ...] | None:
    """None, or a tuple of >= ``min_len`` distinct non-empty camera names (a comma separated string is split), or
    ``(ALL_VIEWS,)`` for the word ``all``."""
    if value is None:
        return None
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    if names == [ALL_VIEWS]:
        return (ALL_VIEWS,)
    if ALL_VIEWS in names:
        raise ValueError(f"{_label(name, flags)} must be 'all' alone (every view given) or camera names; got {value!r}")
    if (len(names) < min_len or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n for n in names)):
        raise ValueError(f"{_label(name, flags)} must be {min_len} or more distinct camera names; got {value!r}")
    return tuple(names)


@dataclass(frozen=True)
class PolicySettings:
    """What the policy does at each replanning step; validated on construction (ranges that need the model --
    horizon and execute_k upper bounds -- are checked by :class:`ActionImagesPolicy`).

    ``camera_names``: the views the model sees (None: the checkpoint's ``config.camera_names``; for a config without
    them, the first ``num_views`` rendered cameras, with a warning); at least 2, decoding triangulates. ``("all",)``:
    every view of each observation, however many (the model attends over any number of views, and triangulation
    uses them all; a model that concatenates a fixed number of views refuses other counts when it plans).
    ``horizon``: keyframes H to generate (None: the model's). ``execute_k``: control steps executed per chunk before
    replanning (None: ``stride * H // 2``). ``sampler_steps`` / ``cfg_scale`` / ``method``: the sampler.
    ``on_disagree``: "replan" or "hold" (see the module docstring). ``disagree_px``: the RMS reprojection error
    (pixels at model resolution) above which views disagree (None: 2 sigma of the action-image blob, 4.8 px at 48 px,
    a blob width: generated blobs are less precise than rendered ones). ``gripper``: "linear" or "step"
    interpolation. ``max_resamples``: immediate replans per step before falling back to holding.
    ``decode_head``: the folder of a learned decoder (:mod:`action_images.decode_head`) that decodes the generated
    action images in place of triangulation (None: triangulation). ``ensemble``: samples drawn per replanning step,
    in one model call with independent starting noise; their action images are averaged pixel by pixel before
    decoding, so a peak lands where the samples agree (1: a single sample). ``orientation``: "free" decodes any
    tool rotation; "topdown" only a yaw with the tool pointing straight down, for a robot whose grasps are all
    top-down (every built-in task's are; a baseline's predicted rotations are projected onto them the same way).
    ``zoom``: above 1, the model also sees each view a second time as a virtual camera: the square of
    1/``zoom`` of the view's short side centred on the current hand position's projection (kept inside the image),
    resized to the model's size, its K updated to match, so the views around the hand hold ``zoom`` times the pixels
    per centimetre with no retraining; decoding triangulates from all of them (1: off). Render the views at a
    larger ``--image-size`` for the zoomed squares to hold more than the model's pixels.
    ``noise``: "fresh" draws the sampler's starting noise anew at every replanning step; "episode" draws it once per
    episode (per input shape) and starts every replanning step's first sample from it, so the plan is a fixed
    function of the observation: nearby observations get nearby plans instead of a new draw among the model's
    modes at each replan (a resample after disagreement still draws fresh noise).
    ``position``: "fit" takes each keyframe's position from the rigid fit of the three decoded points; "point" from
    the triangulated position point alone, so the errors of the two points 10 cm away do not move it.
    """

    camera_names: tuple[str, ...] | None = None
    horizon: int | None = None
    execute_k: int | None = None
    sampler_steps: int = 10
    cfg_scale: float = 1.0
    on_disagree: str = "replan"
    disagree_px: float | None = None
    gripper: str = "linear"
    max_resamples: int = 2
    method: str = "euler"
    decode_head: str | None = None
    ensemble: int = 1
    orientation: str = "free"
    zoom: float = 1.0
    noise: str = "fresh"
    position: str = "fit"

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "camera_names", check_names("camera_names", self.camera_names, 2))
        if self.horizon is not None:
            put(self, "horizon", check_int("horizon", self.horizon, 1))
        if self.execute_k is not None:
            put(self, "execute_k", check_int("execute_k", self.execute_k, 1))
        put(self, "sampler_steps", check_int("sampler_steps", self.sampler_steps, 1, MAX_SAMPLER_STEPS))
        put(self, "cfg_scale", check_float("cfg_scale", self.cfg_scale, 0.0))
        check_choice("on_disagree", self.on_disagree, DISAGREE_CHOICES)
        if self.disagree_px is not None:
            put(self, "disagree_px", check_float("disagree_px", self.disagree_px, 0.0, lo_open=True))
        check_choice("gripper", self.gripper, GRIPPER_MODES)
        put(self, "max_resamples", check_int("max_resamples", self.max_resamples, 0))
        check_choice("method", self.method, METHODS)
        put(self, "ensemble", check_int("ensemble", self.ensemble, 1, MAX_ENSEMBLE))
        check_choice("orientation", self.orientation, ORIENTATIONS)
        put(self, "zoom", check_float("zoom", self.zoom, 1.0))
        check_choice("noise", self.noise, NOISE_MODES)
        check_choice("position", self.position, POSITIONS)
        if self.decode_head is not None:
            if not isinstance(self.decode_head, str) or not self.decode_head:
                raise ValueError(f"{_label('decode_head', FLAGS)} must be a folder; got {self.decode_head!r}")
            if self.orientation != "free":
                raise ValueError(f"{_label('orientation', FLAGS)} {self.orientation} constrains triangulation; "
                                 f"{_label('decode_head', FLAGS)} decodes without it")
            if self.position != "fit":
                raise ValueError(f"{_label('position', FLAGS)} {self.position} reads a triangulated point; "
                                 f"{_label('decode_head', FLAGS)} regresses the pose without one")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["camera_names"] = list(self.camera_names) if self.camera_names else None
        return d

    def to_metadata(self) -> dict[str, Any]:
        """:meth:`to_dict` less the settings added after the server protocol's first version that are at their
        defaults: a client of that version builds its settings from this dict and refuses names it does not know,
        so it keeps working with a server that leaves them at their defaults (a client fills in what is absent)."""
        d = self.to_dict()
        return {k: v for k, v in d.items() if not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}


def resolve_policy_cameras(settings_names: Sequence[str] | None, config: Any, rendered: Sequence[str],
                           warn: bool = True) -> list[str]:
    """The cameras the model sees: the settings' names, else the checkpoint's ``camera_names``, else the first
    ``num_views`` of ``rendered`` (one warning line on stderr: the checkpoint does not say what it was trained on)."""
    if settings_names:
        return list(settings_names)
    trained = getattr(config, "camera_names", None)
    if trained:
        return list(trained)
    names = list(rendered)[:max(2, int(config.num_views))]
    if warn:
        print(f"action-images: warning: the checkpoint config has no camera_names; the policy sees the first "
              f"{len(names)} rendered cameras {','.join(names)} (set --policy-cameras to choose)", file=sys.stderr)
    return names


@dataclass
class Chunk:
    """One replanning step: what was generated, decoded and decided. V views, H keyframes, R model resolution."""

    actions: np.ndarray              # [k, 8] targets to execute (k may be < execute_k; never NaN)
    keyframes: np.ndarray            # [H, 8] decoded absolute targets; NaN rows where invalid
    valid: np.ndarray                # [H] bool, every point triangulated from >= 2 views
    disagree: np.ndarray             # [H] bool, views disagree (codec outlier rejection / residual threshold)
    reproj_error: np.ndarray         # [H, 3] RMS reprojection error (px at model resolution) per point
    decision: str                    # "execute" | "replan" (agreeing prefix only) | "hold" | "hold_invalid"
    current: np.ndarray              # [8] the pose the chunk starts from (gripper = last command)
    future_rgb: np.ndarray           # [V, H, R, R, 3] uint8 generated future frames
    future_act: np.ndarray           # [V, H, R, R, 3] float32 generated action images in [0, 1]
    input_rgb: np.ndarray            # [V, R, R, 3] uint8 the observed frame as the model saw it
    cameras: list[Camera]            # the V cameras at model resolution (calibration of the model input)
    view_names: list[str]
    samples: int = 1                 # sampling attempts for this step (> 1 after immediate replans)
    timings: dict[str, float] = field(default_factory=dict)   # seconds: observe, generate, decode, chunk, total
    batch: int = 1                   # requests whose first sample came from one model call (serve/batching.py)

    @property
    def latency_s(self) -> float:
        return float(self.timings.get("total", 0.0))

    def uncertainty(self) -> dict[str, Any]:
        """JSON-friendly summary of the decode uncertainty of this chunk."""
        err = self.reproj_error[self.valid] if self.valid.any() else np.zeros((0, 3))
        return {"decision": self.decision, "samples": self.samples,
                "invalid_keyframes": int((~self.valid).sum()), "disagree_keyframes": int(self.disagree.sum()),
                "reproj_error_px_mean": float(np.nanmean(err)) if np.isfinite(err).any() else None,
                "reproj_error_px_max": float(np.nanmax(err)) if np.isfinite(err).any() else None}


def prepare_view(image: np.ndarray, cam: Camera, size: int, crop: str = "center",
                 workspace: Sequence[Sequence[float]] | None = None) -> tuple[np.ndarray, Camera]:
    """Square crop + resize of one view, camera updated to match: exactly ``Windows.window(augment=False)`` for the
    checkpoint's ``crop`` ("center": the centred square; "workspace": the square around the projected ``workspace``
    box). image uint8 [H, W, 3] -> uint8 [S, S, 3]."""
    box = workspace_box(cam, workspace) if crop == "workspace" else center_box(cam)
    img, cam_out = crop_resize(image[None], cam, box, size)
    return img[0].numpy(), cam_out


ZOOM_SUFFIX = "@zoom"     # the name of a view's zoomed virtual camera: "<camera>@zoom"


def zoom_box(cam: Camera, point: np.ndarray, zoom: float) -> tuple[int, int, int]:
    """The square (x0, y0, side) of 1/``zoom`` of ``cam``'s short side centred on the projection of the world
    ``point``, moved inside the image; the centred square when the point is behind the camera."""
    side = max(1, int(round(min(cam.width, cam.height) / zoom)))
    uv, depth = cam.project(np.asarray(point, dtype=np.float64)[None])
    if not float(np.asarray(depth).reshape(-1)[0]) > 1e-6:
        return square_at(cam, (cam.width - 1) / 2.0, (cam.height - 1) / 2.0, side)
    return square_at(cam, *(float(x) for x in np.asarray(uv).reshape(-1)[:2]), side)


def interpolate_chunk(current: np.ndarray, keyframes: np.ndarray, valid: np.ndarray, stride: int,
                      gripper: str = "linear") -> np.ndarray:
    """Control-rate targets ``[H*stride, 8]`` from ``current [8]`` through the valid ``keyframes [H, 8]``.

    Keyframe k sits at tau = (k+1)*stride; step j is the pose at tau = j + 1. Invalid keyframes are skipped (the line
    runs to the next valid one); after the last valid keyframe the pose is held. No valid keyframe -> hold ``current``.
    """
    H = len(keyframes)
    n = H * stride
    taus = np.arange(1, n + 1, dtype=np.float64)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        return np.repeat(current[None], n, axis=0)
    knots_t = np.concatenate([[0.0], (idx + 1.0) * stride])                 # [M+1]
    knots = np.concatenate([current[None], keyframes[idx]], axis=0)          # [M+1, 8]
    t = np.clip(taus, 0.0, knots_t[-1])
    out = np.empty((n, 8))
    for c in range(3):
        out[:, c] = np.interp(t, knots_t, knots[:, c])
    rots = Rotation.from_quat(knots[:, 3:7])
    out[:, 3:7] = Slerp(knots_t, rots)(t).as_quat(canonical=True)
    if gripper == "linear":
        out[:, 7] = np.interp(t, knots_t, knots[:, 7])
    else:  # step: take the gripper of the keyframe being approached
        seg = np.searchsorted(knots_t, t, side="left").clip(1, len(knots_t) - 1)
        out[:, 7] = knots[seg, 7]
    out[:, 7] = np.clip(out[:, 7], 0.0, 1.0)
    return out


class ChunkQueue:
    """What every closed-loop policy here shares: a queue of planned targets that :meth:`act` drains, calling
    :meth:`plan` (-> :class:`Chunk`) when it is empty. Subclasses set ``queue``, ``last_command`` in ``reset``."""

    queue: list[np.ndarray]
    last_command: np.ndarray | None

    def plan(self, obs: dict[str, Any], cameras: Sequence[Any]) -> "Chunk":
        raise NotImplementedError

    def act(self, obs: dict[str, Any], cameras: Sequence[Any]) -> np.ndarray:
        """The next ``[8]`` target; plans a new chunk when the queued one is used up."""
        if not self.queue:
            self.queue = list(self.plan(obs, cameras).actions)
        action = np.asarray(self.queue.pop(0), dtype=np.float64)
        self.last_command = action
        return action

    @property
    def replanning(self) -> bool:
        """Whether the next :meth:`act` call plans a new chunk."""
        return not self.queue

    @property
    def needs_images(self) -> bool:
        """Whether the next :meth:`act` call reads the observation's images (an env may skip rendering otherwise)."""
        return self.replanning


class ActionImagesPolicy(ChunkQueue):
    """Closed-loop policy around a :class:`~action_images.wam.WorldActionModel`, configured by
    :class:`PolicySettings`. ``codec``: a codec to decode with (its ``reject_px`` then decides disagreement; default
    a codec constructed with ``settings.disagree_px``). ``seed``: the default sampler seed of :meth:`reset`.
    """

    def __init__(self, model: Any, settings: PolicySettings | None = None, *, codec: ActionImageCodec | None = None,
                 seed: int = 0):
        self.settings = s = settings if settings is not None else PolicySettings()
        if not isinstance(s, PolicySettings):
            raise TypeError(f"settings must be a PolicySettings; got {type(s).__name__}")
        cfg = model.config
        self.model = model.eval()
        self.image_size, self.stride = int(cfg.image_size), int(cfg.stride)
        self.horizon = int(s.horizon if s.horizon is not None else cfg.horizon)
        max_frames = getattr(getattr(getattr(model, "backbone", None), "config", None), "max_frames", 1 + self.horizon)
        check_int("horizon", self.horizon, 1, max_frames - 1)
        self.execute_k = int(s.execute_k if s.execute_k is not None else max(1, self.stride * self.horizon // 2))
        check_int("execute_k", self.execute_k, 1, self.stride * self.horizon)
        self.num_views = int(cfg.num_views)
        self.crop, self.workspace = getattr(cfg, "crop", "center"), getattr(cfg, "workspace", None)
        self.camera_names = list(s.camera_names or getattr(cfg, "camera_names", None) or []) or None
        self.steps, self.cfg_scale, self.method = s.sampler_steps, s.cfg_scale, s.method
        self.on_disagree, self.gripper, self.max_resamples = s.on_disagree, s.gripper, s.max_resamples
        self.ensemble, self.orientation, self.zoom, self.noise = s.ensemble, s.orientation, s.zoom, s.noise
        self.position = s.position
        self.history, self.history_gap = int(getattr(cfg, "history", 0)), int(getattr(cfg, "history_gap", 4))
        if codec is None:
            sigma = ActionImageCodec().sigma(self.image_size, self.image_size)
            reject = s.disagree_px if s.disagree_px is not None else 2.0 * sigma
            if s.decode_head is not None:                # the learned decoder instead of triangulation
                from action_images.decode_head import LearnedDecoder
                codec = LearnedDecoder.from_pretrained(s.decode_head, reject_px=reject)
                if codec.head.config.image_size != self.image_size:
                    raise ValueError(f"--decode-head {s.decode_head} reads {codec.head.config.image_size} px action "
                                     f"images; the model generates {self.image_size} px")
            else:
                codec = ActionImageCodec(reject_px=reject)
        self.codec = codec
        self.seed = int(seed)
        self.reset(seed)

    # ---- episode state -----------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Forget the queued actions; reseed the sampler noise (``seed`` defaults to the constructor's)."""
        self.generator = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        self.queue: list[np.ndarray] = []
        self.last_command: np.ndarray | None = None
        self.last_chunk: Chunk | None = None
        self.chunks: list[Chunk] = []
        self.episode_noise: dict[tuple, torch.Tensor] = {}     # noise="episode": input shape -> starting noise
        self.past: list[tuple[dict[str, np.ndarray], np.ndarray]] = []   # recent steps' (images, ee_pose)
        self._observed: Any = None                             # the observation recorded last

    def observe(self, obs: dict[str, Any]) -> None:
        """Record ``obs`` as this control step's observation: a model that reads past frames (``config.history``)
        takes them from the steps recorded here, ``history_gap`` steps apart; the episode's first observation stands
        in for the steps before it, as in training. :meth:`act` records every step; :meth:`plan` and
        :meth:`build_batch` record an observation they have not seen. A step is told from the last by its dict's
        identity: the envs here return a new one per step, and a robot loop must too (one dict mutated in place is
        recorded once)."""
        if not self.history or obs is self._observed:
            return
        if "images" not in obs:
            raise ValueError("this model reads past frames (history): every step's observation needs its images "
                             "(render every step; see needs_images)")
        self._observed = obs
        self.past.append(({k: np.array(v, copy=True) for k, v in obs["images"].items()},
                          np.asarray(obs["ee_pose"], dtype=np.float64).copy()))
        del self.past[:-(self.history * self.history_gap + 1)]

    def act(self, obs: dict[str, Any], cameras: Sequence[Any]) -> np.ndarray:
        self.observe(obs)
        return super().act(obs, cameras)

    @property
    def needs_images(self) -> bool:
        """Replanning steps, and every step for a model that reads past frames (they are recorded as they come)."""
        return self.replanning or self.history > 0

    def _views(self, obs: dict[str, Any], cameras: Sequence[Camera]) -> list[int]:
        names = [c.name for c in cameras]
        if self.camera_names == [ALL_VIEWS]:           # every view of this observation, in the order given
            views = [i for i, n in enumerate(names) if n in obs["images"]]
            if len(views) < 2:
                raise ValueError(f"the policy needs >= 2 views; got {sorted(obs['images'])}")
            return views
        if self.camera_names is None:                  # the checkpoint does not say: first rendered views, once
            avail = [c.name for c in cameras if c.name in obs["images"]]
            if len(avail) < 2:
                raise ValueError(f"the policy needs >= 2 rendered views; got {sorted(obs['images'])}")
            self.camera_names = resolve_policy_cameras(None, self.model.config, avail)
        missing = [n for n in self.camera_names if n not in names or n not in obs["images"]]
        if missing:
            raise ValueError(f"cameras {missing} are not in the observation (have {sorted(obs['images'])})")
        return [names.index(n) for n in self.camera_names]

    def current_pose(self, obs: dict[str, Any]) -> np.ndarray:
        """The measured pose with the gripper of the last command (holding must not loosen a grasp)."""
        pose = np.asarray(obs["ee_pose"], dtype=np.float64).copy()
        if self.last_command is not None:
            pose[7] = self.last_command[7]
        return pose

    # ---- observe -> generate -> decode -> chunk ----------------------------------------------------------------------
    def build_batch(self, obs: dict[str, Any], cameras: Sequence[Camera]) -> tuple[dict[str, Any], list[Camera],
                                                                                     list[str]]:
        """The model input for one observation, built by the training-window code path (batch of 1)."""
        views = self._views(obs, cameras)
        self.observe(obs)
        pose = np.asarray(obs["ee_pose"], dtype=np.float64)
        imgs, cams, names = self._view_images(obs["images"], pose, cameras, views)
        F_ = 1 + self.horizon
        rgb = np.repeat(np.stack(imgs)[:, None], F_, axis=1)                  # [V, F, R, R, 3]; futures unused
        poses = np.repeat(pose[None], F_, axis=0)                              # [F, 8]; only frame 0 is given
        extra = {}
        if self.history:                                   # past frames cropped as now, their poses drawn in cams
            last = len(self.past) - 1
            past = [self.past[max(0, last - k * self.history_gap)] for k in range(1, self.history + 1)]
            hist = np.stack([self._view_images(images, pose, cameras, views)[0] for images, _ in past], axis=1)
            extra["history"] = history_frames(hist, cams, np.stack([p for _, p in past]), self.codec)
        window = finish_window(rgb, cams, poses, str(obs.get("instruction", "")), self.codec, **extra)
        return collate([window]), cams, names

    def _view_images(self, images: dict[str, np.ndarray], pose: np.ndarray, cameras: Sequence[Camera],
                     views: Sequence[int]) -> tuple[list[np.ndarray], list[Camera], list[str]]:
        """The model's views of one observation's ``images``: each view cropped and resized, then (``zoom`` > 1)
        each again zoomed on ``pose``'s hand position; with their cameras and names."""
        imgs, cams, names = [], [], [cameras[i].name for i in views]
        for i in views:
            img, cam = prepare_view(images[cameras[i].name], cameras[i], self.image_size, self.crop, self.workspace)
            imgs.append(img)
            cams.append(cam)
        if self.zoom > 1.0:                                # each view again, zoomed on the hand
            for i in views:
                box = zoom_box(cameras[i], pose[:3], self.zoom)
                img, cam = crop_resize(images[cameras[i].name][None], cameras[i], box, self.image_size)
                imgs.append(img[0].numpy())
                cams.append(cam)
                names.append(f"{cameras[i].name}{ZOOM_SUFFIX}")
        return imgs, cams, names

    def _generate(self, batch: dict[str, Any], fresh: bool = False) -> tuple[np.ndarray, np.ndarray]:
        n = self.ensemble
        if n > 1:                                      # n copies of the one request, each with its own noise
            batch = {k: (v.repeat(n, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else list(v) * n)
                     for k, v in batch.items()}
        noise = None
        if self.noise == "episode" and not fresh:      # the episode's one draw for this input shape
            from action_images.openloop import noise_shape

            rgb = batch["rgb"]
            shape = (rgb.shape[0], *noise_shape(self.model.config, rgb.shape[1], rgb.shape[2], *rgb.shape[-2:]))
            if shape not in self.episode_noise:
                self.episode_noise[shape] = torch.randn(shape, generator=self.generator)
            noise = self.episode_noise[shape]
        out = self.model.sample(batch, task="policy", steps=self.steps, cfg_scale=self.cfg_scale,
                                generator=self.generator, method=self.method, noise=noise)
        rgb, act = sample_frames(out, 0)
        if n > 1:                                      # the samples' action images, averaged before decoding
            act = np.mean([act, *(sample_frames(out, i)[1] for i in range(1, n))], axis=0)
        return rgb, act

    def _decode(self, act: np.ndarray, cams) -> DecodeResult:
        """The generated action images decoded with the settings' orientation and position."""
        return self.codec.decode(act, cams, orientation=self.orientation, position=self.position)

    def _decide(self, dec: DecodeResult) -> tuple[str, int]:
        """(decision, steps to execute) from the decode of the keyframes that the first ``execute_k`` steps use."""
        used = min(self.horizon, -(-self.execute_k // self.stride))          # keyframes reached by step k
        if not dec.valid.any():
            return "hold_invalid", 0
        bad = dec.disagree[:used] & dec.valid[:used]
        if not bad.any():
            return "execute", self.execute_k
        if self.on_disagree == "hold":
            return "hold", 0
        first = int(np.argmax(bad))                                            # segment to keyframe `first` is out
        return "replan", min(self.execute_k, first * self.stride)

    def plan(self, obs: dict[str, Any], cameras: Sequence[Camera]) -> Chunk:
        """One replanning step; with "replan", resamples at once (up to ``max_resamples``) while nothing executes."""
        t0 = time.perf_counter()
        batch, cams, names = self.build_batch(obs, cameras)
        current = self.current_pose(obs)
        return self._plan_built(batch, cams, names, current, t0, time.perf_counter() - t0)

    def _plan_built(self, batch: dict[str, Any], cams: list[Camera], names: list[str], current: np.ndarray,
                    t0: float, t_obs: float, first: tuple[np.ndarray, np.ndarray, float] | None = None) -> Chunk:
        """:meth:`plan` from the built model input; ``first``: the first sample's frames and seconds when a
        batched model call (:func:`action_images.serve.batching.plan_batch`) drew it already."""
        t_gen = t_dec = 0.0
        for attempt in range(1 + self.max_resamples):
            t1 = time.perf_counter()
            if attempt == 0 and first is not None:
                future_rgb, future_act, t1 = first[0], first[1], t1 - first[2]
            else:
                future_rgb, future_act = self._generate(batch, fresh=attempt > 0)
            t2 = time.perf_counter()
            dec = self._decode(future_act, cams)
            t3 = time.perf_counter()
            t_gen, t_dec = t_gen + t2 - t1, t_dec + t3 - t2
            decision, n_exec = self._decide(dec)
            if n_exec > 0 or decision != "replan":
                break
        t4 = time.perf_counter()
        if n_exec == 0:
            # hold the current pose for one step (replan/resamples exhausted) or the execution window ("hold")
            n_hold = 1 if decision == "replan" else self.execute_k
            decision = "hold" if decision == "replan" else decision
            actions = np.repeat(current[None], n_hold, axis=0)
        else:
            poses = np.where(dec.valid[:, None], dec.poses, np.nan)
            actions = interpolate_chunk(current, poses, dec.valid, self.stride, self.gripper)[:n_exec]
        if not np.isfinite(actions).all():                                    # belt and braces: never send NaN
            actions = np.repeat(current[None], max(1, len(actions)), axis=0)
            decision = "hold_invalid"
        t5 = time.perf_counter()
        timings = {"observe": t_obs, "generate": t_gen, "decode": t_dec, "chunk": t5 - t4, "total": t5 - t0}
        chunk = Chunk(actions=actions, keyframes=dec.poses, valid=dec.valid.copy(), disagree=dec.disagree.copy(),
                      reproj_error=dec.reproj_error, decision=decision, current=current, future_rgb=future_rgb,
                      future_act=future_act, input_rgb=((batch["rgb"][0, :, 0].permute(0, 2, 3, 1) + 1) * 127.5)
                      .round().clamp(0, 255).to(torch.uint8).numpy(), cameras=cams, view_names=names,
                      samples=attempt + 1, timings=timings)
        self.last_chunk = chunk
        self.chunks.append(chunk)
        return chunk


def sample_frames(out: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``i`` of a model sample as (future RGB uint8, action images in [0, 1]), each [V, H, R, R, 3]."""
    rgb = ((out.rgb[i, :, 1:].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)          # [V, H, 3, R, R]
    act = ((out.act[i, :, 1:].clamp(-1, 1) + 1) * 0.5).float()                             # [V, H, 3, R, R]
    return rgb.permute(0, 1, 3, 4, 2).cpu().numpy(), act.permute(0, 1, 3, 4, 2).cpu().numpy()
