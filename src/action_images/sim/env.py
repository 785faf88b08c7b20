"""The gymnasium environment: one tabletop task, absolute 7-DoF + gripper targets, calibrated multi-view images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import mujoco
import numpy as np
from gymnasium import spaces

from action_images.geometry import Camera
from action_images.sim import cameras as simcam
from action_images.sim import rig as simrig
from action_images.sim import scene
from action_images.sim.calibrated_env import CalibratedEnv, check_env_arguments, observation_space
from action_images.sim.robot import Arm
from action_images.sim.tasks import TASK_CLASSES

FPS = 10                     # control rate (Hz)
TIMESTEP = 0.002             # physics step (s); set in scene.scene_xml
SUBSTEPS = round(1.0 / (FPS * TIMESTEP))
RESET_SETTLE_STEPS = 25      # physics steps after reset so objects rest on the table


START_STREAM = 0x5747A27      # spawn key of the start-jitter stream under a reset's seed (spawn() never gets there)


# --start-jitter's help (collect and eval)
START_JITTER_HELP = ("start the hand at a random offset from its home position every episode: uniform in ±M metres "
                     f"along x and y and ±M/2 along z, 0..{scene.MAX_START_JITTER} (default 0: the home position; "
                     "built-in sim only)")


def start_jitter_unsupported(suite: str) -> str:
    """The one-line refusal of --start-jitter with a suite whose arm does not take it (collect and eval)."""
    return f"--start-jitter is not supported with --suite {suite}: it moves the built-in arm's start pose"


def check_start_jitter(value: Any, flag: str = "start_jitter") -> float:
    """``start_jitter`` as a float in [0, MAX_START_JITTER]; ValueError naming ``flag`` and the range otherwise."""
    try:
        j = float(value)
    except (TypeError, ValueError):
        j = float("nan")
    if not 0.0 <= j <= scene.MAX_START_JITTER:       # also refuses NaN
        raise ValueError(f"{flag} must be in 0.0..{scene.MAX_START_JITTER} (metres); got {value}")
    return j


def start_offset(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """The hand's start offset from ``robot.START_POS`` under ``start_jitter``: uniform in ±jitter along x and y and
    ±jitter/2 along z."""
    return rng.uniform(-1.0, 1.0, 3) * np.array([jitter, jitter, jitter / 2])


def start_rng(seed: int | None, rng: np.random.Generator) -> np.random.Generator:
    """The stream a reset draws its start offset from: keyed by the reset's ``seed`` alone (the same offset whatever
    else the reset draws, e.g. perturbed cameras), or without a seed a child spawned from ``rng``."""
    if seed is None:
        return rng.spawn(1)[0]
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(START_STREAM,)))


class SimEnv(CalibratedEnv):
    """See :func:`action_images.sim.make_env` for the arguments and docs/benchmark.md for the tasks."""

    segmentation_groups = (0, 1, 2, 3)   # not 5: it holds tcp_marker, a sphere at the TCP for calibration checks

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, task: str = "pick_cube", cameras: Sequence[str] | None = None,
                 image_size: int | None = None, perturb_cameras: bool = False, camera_seed: int | None = None,
                 render: bool = True, render_mode: str | None = None,
                 rig: str | Path | Sequence[Camera] | None = None, rig_distribution: str | None = None,
                 rig_views: int = 4, start_jitter: float = 0.0):
        if task not in TASK_CLASSES:
            raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_CLASSES)}")
        check_env_arguments(image_size, render_mode, rig, rig_distribution)
        self.start_jitter = check_start_jitter(start_jitter)
        fixed_rig: list[Camera] | None = None
        if rig is not None:
            fixed_rig = simrig.resolve_rig(rig, None if image_size is None else int(image_size))
            if image_size is None:  # the rig's own size; all its cameras must share it
                fixed_rig = simrig.resolve_rig(fixed_rig, fixed_rig[0].width)
            rig_names = tuple(c.name for c in fixed_rig)
        elif rig_distribution is not None:
            if rig_distribution not in simrig.SPLITS:
                raise ValueError(f"rig_distribution must be one of {simrig.SPLITS}; got {rig_distribution!r}")
            if perturb_cameras:
                raise ValueError("perturb_cameras does not combine with rig_distribution (every reset draws a new rig)")
            if not 1 <= int(rig_views) <= simrig.RIG_SLOTS:
                raise ValueError(f"rig_views must be in 1..{simrig.RIG_SLOTS}; got {rig_views}")
            rig_names = simrig.SLOT_NAMES[:int(rig_views)]
        else:
            rig_names = ()
        size = int(image_size) if image_size is not None else (fixed_rig[0].width if fixed_rig else 64)
        # exported view name -> MuJoCo camera: rig camera i lives in slot rig{i}; "wrist" is the hand camera
        if rig_names:
            cameras = rig_names if cameras is None else tuple(cameras)
            allowed = rig_names + (() if "wrist" in rig_names else ("wrist",))
            slots = {"wrist": "wrist"} | {n: simrig.SLOT_NAMES[i] for i, n in enumerate(rig_names)}
        else:
            cameras = scene.CAMERA_SETS["all_static"] if cameras is None else tuple(cameras)
            allowed = scene.CAMERA_NAMES
            slots = {n: n for n in allowed}
        bad = [c for c in cameras if c not in allowed]
        if bad or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be distinct names from {allowed}; got {cameras}")
        self.task_name, self.camera_names, self.image_size = task, cameras, size
        self.render_images, self.render_mode = bool(render), render_mode
        self.perturb_cameras, self.camera_seed = bool(perturb_cameras), camera_seed
        self.rig_distribution, self.rig_views = rig_distribution, int(rig_views) if rig_distribution else 0
        self.rig: list[Camera] = []      # the rig placed now (fixed, or this episode's random one)
        self.rig_seed: int | None = None  # random_rig seed of the current rig (rig_distribution only)
        self.fps, self.dt = FPS, 1.0 / FPS

        self.task = TASK_CLASSES[task]()
        xml = scene.scene_xml(self.task.worldbody_xml(), self.task.extra_xml(), max_image_size=self.image_size)
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.arm = Arm(self.model, self.data)
        self.task.bind(self.model, self.data)
        self.max_steps = self.task.max_steps
        self._rgba0 = self.model.geom_rgba.copy()
        self._body_pos0 = self.model.body_pos.copy()

        self._view_ids = {c: self.model.camera(slots[c]).id for c in cameras}
        self._cam_ids = [self._view_ids[c] for c in cameras]
        self._slot_ids = [self.model.camera(n).id for n in simrig.SLOT_NAMES]
        self._exact_K: dict[int, np.ndarray] = {}  # MuJoCo stores intrinsics as float32; export the rig's own K
        if fixed_rig is not None:
            self._place_rig(fixed_rig)
        elif rig_distribution is not None:
            self._place_rig(simrig.random_rig(0, self.rig_views, size, rig_distribution))
            self.rig_seed = 0
        self._cam_pos0 = self.model.cam_pos[self._cam_ids].copy()
        self._cam_quat0 = self.model.cam_quat[self._cam_ids].copy()
        self._renderer = simcam.MultiViewRenderer(self.model, self.image_size) if self.render_images and cameras \
            else None

        self.observation_space = observation_space(cameras, size, images=self._renderer is not None)
        low = np.concatenate([scene.WORKSPACE_LOW, -np.ones(4), [0.0]])
        high = np.concatenate([scene.WORKSPACE_HIGH, np.ones(4), [1.0]])
        self.action_space = spaces.Box(low, high, dtype=np.float64)

        self.step_count, self.instruction, self._success = 0, "", False
        self._last_images: dict[str, np.ndarray] = {}
        # False: observations carry no images until set back (rendering is most of a step's cost; the evaluator
        # renders only the steps where the policy plans or a video is recorded). render() keeps the last frame.
        self.observe_images = True
        if camera_seed is not None and self.perturb_cameras:
            simcam.perturb(self.model, self._cam_ids, self._cam_pos0, self._cam_quat0,
                           np.random.default_rng(camera_seed))
        mujoco.mj_forward(self.model, self.data)

    # ---- gymnasium API -----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        m.geom_rgba[:] = self._rgba0
        m.body_pos[:] = self._body_pos0
        if self.rig_distribution is not None:
            # the rig of reset(seed=s) is random_rig(s, ...); without a seed, a seed from a spawned child stream (the
            # task's draws stay the same either way)
            self.rig_seed = int(seed) if seed is not None else int(rng.spawn(1)[0].integers(2**63))
            self._place_rig(simrig.random_rig(self.rig_seed, self.rig_views, self.image_size, self.rig_distribution))
        if self.perturb_cameras and self.camera_seed is None:
            # a spawned child stream: the task's draws (object layout) stay the same with or without jitter
            simcam.perturb(m, self._cam_ids, self._cam_pos0, self._cam_quat0, rng.spawn(1)[0])
        if self.start_jitter > 0:
            # a stream of its own: the object layout stays the episode seed's either way
            self.arm.reset(start_offset=start_offset(start_rng(seed, rng), self.start_jitter))
        else:
            self.arm.reset()
        self.instruction = self.task.reset(self, rng)
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=RESET_SETTLE_STEPS)
        d.time = 0.0
        mujoco.mj_forward(m, d)
        self.step_count, self._success = 0, False
        self.task.expert_reset()
        return self._obs(), self._info()

    def step(self, action):
        target = self.arm.apply(action)
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        mujoco.mj_forward(self.model, self.data)
        self.step_count += 1
        self._success = bool(self.task.success(self))
        terminated = self._success
        truncated = (not terminated) and self.step_count >= self.max_steps
        info = self._info()
        info["target"] = target
        return self._obs(), float(self._success), terminated, truncated, info

    def expert_action(self) -> np.ndarray:
        """The scripted expert's absolute ``[x,y,z,qx,qy,qz,qw,g]`` target for the current state."""
        return self.task.expert(self).astype(np.float64)

    def ee_pose(self) -> np.ndarray:
        """The tool's current ``[x, y, z, qx, qy, qz, qw, g]``."""
        return self.arm.ee_pose()
