"""Meta-World v3 (the ``metaworld`` package, 50 Sawyer tasks with scripted experts) behind the built-in sim's interface.

    from action_images.sim.metaworld import make_env, task_names
    env = make_env("drawer-open-v3", cameras=("corner", "corner2", "corner3"), image_size=64)
    obs, info = env.reset(seed=0)            # obs: images, ee_pose, instruction, camera_K, camera_T_cam_world
    obs, reward, terminated, truncated, info = env.step(env.expert_action())   # 8-D absolute targets

The adapter speaks our conventions (geometry.py) on the outside and Meta-World's 4-D action on the inside:

* **Action** ``[x, y, z, qx, qy, qz, qw, g]``: the TCP target. Meta-World moves its mocap body by
  ``clip(a[:3], -1, 1) * action_scale`` (1/100 m) from the mocap's current position, clipped to ``mocap_low/high``;
  the hand is welded to the mocap with the identity relative pose, and the TCP sits ``tcp_offset`` below it. So
  ``target = mocap + clip(a[:3], -1, 1) / 100 + tcp_offset`` and back ``a[:3] = clip((target - tcp_offset - mocap) *
  100, -1, 1)`` (:func:`action_to_target`, :func:`target_to_action`); Meta-World itself clips the mocap to its box,
  so a target outside the box works as on the box's edge, as the built-in sim clips to its workspace. The hand orientation is fixed by
  Meta-World (``mocap_quat = [1, 0, 1, 0]``, MuJoCo's scalar-first order); the target carries it as the tool frame
  of our convention (+z toward the fingertips = world down, fingers closing along ±y), ``TOOL_QUAT = [0, 1, 0, 0]``,
  and the target's quaternion is not used (no orientation control). ``g = (1 - effort) / 2`` with Meta-World's
  gripper effort in [-1, 1] (+ closes): g = 1 open, g = 0 closed, and ``effort = 1 - 2 g`` back, so efforts between
  the two (the experts use 0, 0.6, ...) convert exactly.
* **Success**: ``info["success"]`` of the step (Meta-World does not latch it); ``terminated`` at the first success,
  ``truncated`` at ``MAX_STEPS`` = 500 steps. The control rate is Meta-World's, 80 Hz.
* **Cameras**: the scene's static cameras ``corner``, ``corner2``, ``corner3``, ``corner4``, ``topview`` and the hand
  cameras ``behindGripper``, ``gripperPOV``, calibrated from the MuJoCo model with the built-in sim's formulas
  (sim/cameras.py). Cameras whose image would be upside down (image "down" pointing to world +z: the corner cameras)
  are rolled 180° about their optical axis when the env is built, so images are upright; the exported calibration is
  that of the rolled camera. Rendering uses the fast flags (no shadows, reflections, skybox, MSAA) and Meta-World's
  default visibility (geom and site groups 0-2: goal markers show as in Meta-World's own renders).
* **Rigs**: ``rig_distribution`` places a random rig (``rig.random_rig`` around ``WORKSPACE``) every reset, ``rig``
  a fixed list of Cameras; rig camera i takes the place of static camera ``RIG_SLOTS_ORDER[i]`` (at most 5 views).
* **Seeds**: ``reset(seed=s)`` seeds Meta-World's own generator for the object and goal positions (its
  ``seeded_rand_vec`` mode), so an episode depends only on its seed. The goal is observable (the experts read it).
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from typing import Any, Sequence

if sys.platform.startswith("linux"):  # headless offscreen rendering; must precede `import mujoco`
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from action_images.geometry import Camera, matrix_to_quat  # noqa: E402
from action_images.sim import cameras as simcam  # noqa: E402
from action_images.sim import rig as simrig  # noqa: E402
from action_images.sim.calibrated_env import CalibratedEnv, check_env_arguments, observation_space  # noqa: E402

SUITE = "metaworld"
FPS = 80                    # Meta-World's control rate: frame_skip 5 x timestep 2.5 ms
MAX_STEPS = 500             # Meta-World's max_path_length
STATIC_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview")
HAND_CAMERAS = ("behindGripper", "gripperPOV")
CAMERA_NAMES = STATIC_CAMERAS + HAND_CAMERAS
CAMERA_SETS = {"all_static": STATIC_CAMERAS, "collect": STATIC_CAMERAS[:4], "eval": STATIC_CAMERAS[:3]}
DEFAULT_CAMERAS = CAMERA_SETS["collect"]
RIG_SLOTS_ORDER = STATIC_CAMERAS    # rig camera i is rendered by this static camera, moved to the rig's pose
RIG_SLOTS = len(RIG_SLOTS_ORDER)

# The fixed hand orientation: Meta-World writes mocap_quat = [1, 0, 1, 0] (scalar first, not normalised; MuJoCo
# normalises it): the hand frame is turned 90° about world y. In the hand frame the fingertips lie along +x and the
# fingers close along y, so our tool frame (+z toward the fingertips, fingers along ±y) is the hand frame turned
# +90° about its own y axis.
MOCAP_QUAT_WXYZ = np.array([1.0, 0.0, 1.0, 0.0])
HAND_TO_TOOL = Rotation.from_euler("y", 90.0, degrees=True).as_matrix()
HAND_MATRIX = Rotation.from_quat(MOCAP_QUAT_WXYZ / np.linalg.norm(MOCAP_QUAT_WXYZ), scalar_first=True).as_matrix()
TOOL_QUAT = np.round(matrix_to_quat(HAND_MATRIX @ HAND_TO_TOOL), 12) + 0.0   # scalar last: exactly [0, 1, 0, 0]

# Random rigs around the Sawyer table: the robot base stands at the origin and faces +y, the objects and goals of the
# 50 tasks lie within x ±0.35, y 0.35..0.95 m, up to 0.3 m above the table top (z = 0); the experts move the hand
# inside the reach box below.
WORKSPACE = simrig.Workspace(centre=(0.0, 0.65, 0.1), object_low=(-0.35, 0.4, 0.0), object_high=(0.35, 0.9, 0.3),
                             reach_low=(-0.35, 0.35, 0.05), reach_high=(0.35, 0.95, 0.35), front_azimuth_deg=90.0)
RIG_DISTRIBUTION = simrig.RigDistribution(distance_m=(1.2, 1.7), elevation_deg=(20.0, 65.0))


# ----------------------------------------------------------------------------------------------------------------------
# Task names
# ----------------------------------------------------------------------------------------------------------------------

def task_names() -> tuple[str, ...]:
    """The 50 Meta-World v3 task names (MT50 / ML1 names, e.g. ``drawer-open-v3``), in Meta-World's order."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(ALL_V3_ENVIRONMENTS)


def unknown_task_message(bad: Sequence[str], flag: str, choices: Sequence[str]) -> str:
    """One line naming the flag, the unknown names with their close matches, and the choices."""
    hints = []
    for name in bad:
        close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return (f"{flag}: unknown Meta-World task {', '.join(hints)}; choose from {', '.join(choices)} or 'all'")


def parse_tasks(spec: str | Sequence[str], flag: str = "--tasks") -> list[str]:
    """``"all"`` or comma separated Meta-World task names -> the list; ValueError naming ``flag`` otherwise."""
    choices = task_names()
    if isinstance(spec, str):
        names = list(choices) if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    else:
        names = [str(t) for t in spec]
    if not names:
        raise ValueError(f"{flag}: no task names in {spec!r}; choose from {', '.join(choices)} or 'all'")
    bad = [t for t in names if t not in choices]
    if bad:
        raise ValueError(unknown_task_message(bad, flag, choices))
    if len(set(names)) != len(names):
        raise ValueError(f"{flag}: a task is named twice in {spec!r}")
    return names


def instruction_for(task: str) -> str:
    """A plain instruction from the task name: ``drawer-open-v3`` -> ``drawer open``."""
    return task.removesuffix("-v3").replace("-", " ")


# ----------------------------------------------------------------------------------------------------------------------
# The action conversion (pure functions; the env adapter calls them with its mocap state)
# ----------------------------------------------------------------------------------------------------------------------

def action_to_target(action: np.ndarray, mocap_pos: np.ndarray, tcp_offset: np.ndarray,
                     action_scale: float = 0.01) -> np.ndarray:
    """Meta-World's 4-D action -> our absolute 8-D target ``[x, y, z, qx, qy, qz, qw, g]`` (TCP, TOOL_QUAT, g).

    The position is where the action sends the mocap (``mocap + clip(a[:3], -1, 1) * scale``, before Meta-World's
    clip to its mocap box) plus the TCP offset; ``g = (1 - clip(effort, -1, 1)) / 2``."""
    a = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
    mocap = np.asarray(mocap_pos, dtype=np.float64).reshape(3) + a[:3] * action_scale
    return np.concatenate([mocap + tcp_offset, TOOL_QUAT, [(1.0 - a[3]) / 2.0]])


def target_to_action(target: np.ndarray, mocap_pos: np.ndarray, tcp_offset: np.ndarray,
                     action_scale: float = 0.01) -> np.ndarray:
    """Our 8-D target -> Meta-World's 4-D action (float32, its action space's dtype); the inverse of
    :func:`action_to_target` (a target farther than one step gives the step toward it). The target's quaternion is
    not used: Meta-World fixes the hand orientation."""
    t = np.asarray(target, dtype=np.float64)
    xyz = (t[:3] - tcp_offset - np.asarray(mocap_pos, dtype=np.float64).reshape(3)) / action_scale
    effort = 1.0 - 2.0 * t[7]
    return np.clip(np.concatenate([xyz, [effort]]), -1.0, 1.0).astype(np.float32)


def check_target(action: Any) -> np.ndarray:
    """An 8-D target as float64; ValueError for a wrong shape, NaN/inf or g outside [0, 1]."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (8,):
        raise ValueError(f"action must be an 8-D target [x, y, z, qx, qy, qz, qw, g]; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"action contains NaN or inf: {a.tolist()}")
    if not 0.0 <= a[7] <= 1.0:
        raise ValueError(f"action gripper g must be in [0, 1] (1 = open); got {a[7]}")
    return a


# ----------------------------------------------------------------------------------------------------------------------
# Rigs
# ----------------------------------------------------------------------------------------------------------------------

def random_rig(seed: int, n_views: int = 4, size: int = 64, split: str = "train") -> list[Camera]:
    """``n_views`` (1..5) cameras ``rig0`` ... around the Sawyer table (``rig.random_rig`` with ``WORKSPACE``)."""
    return simrig.random_rig(seed, n_views, size, split, RIG_DISTRIBUTION, WORKSPACE, max_views=RIG_SLOTS)


def check_rig(cams: Sequence[Camera], image_size: int | None) -> list[Camera]:
    """A fixed rig (a list of ``geometry.Camera``) for this scene: 1..5 square cameras of one size, distinct names,
    each with the workspace centre in its image; ValueError says which camera and why."""
    cams = list(cams)
    if not 1 <= len(cams) <= RIG_SLOTS:
        raise ValueError(f"rig: {len(cams)} cameras; the Meta-World scene places at most {RIG_SLOTS}")
    size = int(image_size) if image_size is not None else cams[0].width
    names = [c.name for c in cams]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"rig: camera names must be distinct and non-empty; got {names}")
    for c in cams:
        if not isinstance(c, Camera):
            raise ValueError(f"rig: expected geometry.Camera entries; got {type(c).__name__}")
        if c.width != size or c.height != size:
            raise ValueError(f"rig: camera {c.name!r} is {c.width}x{c.height}; the env renders {size}x{size}")
        uv, depth = c.project(np.asarray(WORKSPACE.centre))
        if depth <= 0 or not c.in_image(uv, depth):
            raise ValueError(f"rig: camera {c.name!r} does not see the workspace centre {list(WORKSPACE.centre)}")
    return cams


# ----------------------------------------------------------------------------------------------------------------------
# The environment adapter
# ----------------------------------------------------------------------------------------------------------------------

def _roll_upright(model: mujoco.MjModel, data: mujoco.MjData, cam_id: int) -> bool:
    """Roll a camera 180° about its optical axis if its image "down" points to world +z; True if it was rolled."""
    cam = simcam.camera_from_mujoco(model, data, cam_id, 2, 2)
    down_in_world = cam.T_cam_world[1, :3]          # row 1 of R_cw = the camera's y axis (image down) in world
    if down_in_world[2] <= 0.0:
        return False
    q = Rotation.from_quat(model.cam_quat[cam_id], scalar_first=True) * Rotation.from_euler("z", 180, degrees=True)
    model.cam_quat[cam_id] = q.as_quat(scalar_first=True)
    return True


class MetaWorldEnv(CalibratedEnv):
    """One Meta-World v3 task with absolute 8-D targets and calibrated multi-view images; see the module docstring.

    Arguments as :func:`action_images.sim.make_env`; ``rig`` is a list of Cameras (files are the built-in sim's)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, task: str = "drawer-open-v3", cameras: Sequence[str] | None = None,
                 image_size: int | None = None, perturb_cameras: bool = False, camera_seed: int | None = None,
                 render: bool = True, render_mode: str | None = None, rig: Sequence[Camera] | None = None,
                 rig_distribution: str | None = None, rig_views: int = 4):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(unknown_task_message([task], "task", tuple(ALL_V3_ENVIRONMENTS)))
        check_env_arguments(image_size, render_mode, rig, rig_distribution)
        if isinstance(rig, (str, os.PathLike)):
            raise ValueError("rig files (--camera-rig) are not supported with the Meta-World suite; use "
                             "rig_distribution / --rig-distribution or a list of Cameras")
        if (rig is not None or rig_distribution is not None) and perturb_cameras:
            raise ValueError("perturb_cameras does not combine with a rig")
        fixed_rig = check_rig(rig, image_size) if rig is not None else None
        if rig_distribution is not None:
            if rig_distribution not in simrig.SPLITS:
                raise ValueError(f"rig_distribution must be one of {simrig.SPLITS}; got {rig_distribution!r}")
            if not 1 <= int(rig_views) <= RIG_SLOTS:
                raise ValueError(f"rig_views must be in 1..{RIG_SLOTS}; got {rig_views}")
            rig_names: tuple[str, ...] = tuple(f"rig{i}" for i in range(int(rig_views)))
        else:
            rig_names = tuple(c.name for c in fixed_rig) if fixed_rig else ()
        size = int(image_size) if image_size is not None else (fixed_rig[0].width if fixed_rig else 64)
        if rig_names:
            cameras = rig_names if cameras is None else tuple(cameras)
            allowed = rig_names + HAND_CAMERAS
            slots = {n: RIG_SLOTS_ORDER[i] for i, n in enumerate(rig_names)} | {n: n for n in HAND_CAMERAS}
        else:
            cameras = DEFAULT_CAMERAS if cameras is None else tuple(cameras)
            allowed = CAMERA_NAMES
            slots = {n: n for n in allowed}
        bad = [c for c in cameras if c not in allowed]
        if bad or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be distinct names from {allowed}; got {tuple(cameras)}")

        self.task_name, self.camera_names, self.image_size = task, tuple(cameras), size
        self.render_images, self.render_mode = bool(render), render_mode
        self.perturb_cameras, self.camera_seed = bool(perturb_cameras), camera_seed
        self.rig_distribution = rig_distribution
        self.rig_views = int(rig_views) if rig_distribution else 0
        self.rig: list[Camera] = []
        self.rig_seed: int | None = None
        self.fps, self.dt, self.max_steps = FPS, 1.0 / FPS, MAX_STEPS
        self.instruction = instruction_for(task)

        mw = ALL_V3_ENVIRONMENTS[task]()
        # the multi-task setting: object and goal positions drawn from Meta-World's own seeded generator at every
        # reset, the goal observable (the scripted experts read it); the step limit is ours (MAX_STEPS), so
        # Meta-World's own (which refuses any later step) is lifted for recording after success
        mw._partially_observable = False
        if "sawyer_observation_space" in mw.__dict__:
            del mw.sawyer_observation_space                  # cached for the partially observable setting
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        mw._set_task_called = True
        mw.max_path_length = 2**62
        self.mw, self.expert = mw, ENV_POLICY_MAP[task]()
        self.model, self.data = mw.model, mw.data
        self.mocap_low, self.mocap_high = np.asarray(mw.mocap_low, float), np.asarray(mw.mocap_high, float)
        self.action_scale = float(mw.action_scale)
        self._mocap_id = int(self.model.body_mocapid[self.model.body("mocap").id])
        self._hand_id = self.model.body("hand").id
        # the TCP (midway between the finger end-effector sites) in the hand frame, expressed in the world frame for
        # the fixed hand orientation: a constant, measured on the model as built (fingers open)
        mujoco.mj_forward(self.model, self.data)
        hand_R = self.data.xmat[self._hand_id].reshape(3, 3)
        tcp_in_hand = hand_R.T @ (np.asarray(mw.tcp_center) - self.data.xpos[self._hand_id])
        self.tcp_offset = HAND_MATRIX @ tcp_in_hand

        m = self.model
        self.rolled = tuple(n for n in STATIC_CAMERAS if _roll_upright(m, self.data, m.camera(n).id))
        self._view_ids = {c: m.camera(slots[c]).id for c in self.camera_names}
        self._cam_ids = [self._view_ids[c] for c in self.camera_names]
        self._slot_ids = [m.camera(n).id for n in RIG_SLOTS_ORDER]
        self._exact_K: dict[int, np.ndarray] = {}
        if fixed_rig is not None:
            self._place_rig(fixed_rig)
        elif rig_distribution is not None:
            self._place_rig(random_rig(0, self.rig_views, size, rig_distribution))
            self.rig_seed = 0
        self._cam_pos0 = m.cam_pos[self._cam_ids].copy()
        self._cam_quat0 = m.cam_quat[self._cam_ids].copy()
        self._renderer = None
        if self.render_images and self.camera_names:
            m.vis.global_.offwidth = max(int(m.vis.global_.offwidth), size)
            m.vis.global_.offheight = max(int(m.vis.global_.offheight), size)
            self._renderer = simcam.MultiViewRenderer(m, size)
            self._renderer.option.geomgroup[:3] = 1          # Meta-World's default visibility: groups 0-2
            self._renderer.option.sitegroup[:3] = 1
        if camera_seed is not None and self.perturb_cameras:
            simcam.perturb(m, self._cam_ids, self._cam_pos0, self._cam_quat0, np.random.default_rng(camera_seed))
        mujoco.mj_forward(m, self.data)

        self.observation_space = observation_space(self.camera_names, size, images=self._renderer is not None)
        low = np.concatenate([self.mocap_low + self.tcp_offset, -np.ones(4), [0.0]])
        high = np.concatenate([self.mocap_high + self.tcp_offset, np.ones(4), [1.0]])
        self.action_space = spaces.Box(low, high, dtype=np.float64)
        self.step_count, self._success = 0, False
        self._mw_obs: np.ndarray | None = None
        self._last_images: dict[str, np.ndarray] = {}
        # False: observations carry no images until set back (rendering is most of a step's cost; the evaluator
        # renders only the steps where the policy plans or a video is recorded). render() keeps the last frame.
        self.observe_images = True

    # ---- state -------------------------------------------------------------------------------------------------------
    @property
    def mocap_pos(self) -> np.ndarray:
        return self.data.mocap_pos[self._mocap_id].copy()

    def ee_pose(self) -> np.ndarray:
        """The measured TCP pose: finger-site midpoint, hand orientation as our tool frame, finger opening
        (Meta-World's normalised finger distance, 1 = open)."""
        R = self.data.xmat[self._hand_id].reshape(3, 3) @ HAND_TO_TOOL
        g = float(np.clip(self._mw_obs[3], 0.0, 1.0)) if self._mw_obs is not None else 1.0
        return np.concatenate([np.asarray(self.mw.tcp_center, dtype=np.float64), matrix_to_quat(R), [g]])

    def action_to_target(self, action: np.ndarray) -> np.ndarray:
        """Meta-World's 4-D action in the current state -> the 8-D target it commands."""
        return action_to_target(action, self.mocap_pos, self.tcp_offset, self.action_scale)

    def target_to_action(self, target: np.ndarray) -> np.ndarray:
        """An 8-D target -> Meta-World's 4-D action in the current state."""
        return target_to_action(check_target(target), self.mocap_pos, self.tcp_offset, self.action_scale)

    # ---- gymnasium API -----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        mw_seed = int(seed) if seed is not None else int(rng.integers(2**62))
        m = self.model
        if self.rig_distribution is not None:
            self.rig_seed = mw_seed
            self._place_rig(random_rig(mw_seed, self.rig_views, self.image_size, self.rig_distribution))
        if self.perturb_cameras and self.camera_seed is None:
            # a child stream of the episode seed: the task's draws are Meta-World's own, unaffected by the jitter
            jitter = np.random.default_rng(np.random.SeedSequence(mw_seed, spawn_key=(1,)))
            simcam.perturb(m, self._cam_ids, self._cam_pos0, self._cam_quat0, jitter)
        self.mw.seed(mw_seed)
        # Meta-World's reset resets the MuJoCo data and runs mj_forward (camera poses included); no further forward
        # pass here: it would change the solver's warm start and the episode would differ from Meta-World's own
        obs, _ = self.mw.reset()
        self._mw_obs = np.asarray(obs, dtype=np.float64)
        self.step_count, self._success = 0, False
        return self._obs(), self._info()

    def step(self, action):
        a4 = self.target_to_action(action)
        target = self.action_to_target(a4)                    # what the step commands (one step at most)
        obs, reward, _, _, mw_info = self.mw.step(a4)
        self._mw_obs = np.asarray(obs, dtype=np.float64)
        self.step_count += 1
        self._success = bool(mw_info.get("success", 0.0))
        terminated = self._success
        truncated = (not terminated) and self.step_count >= self.max_steps
        info = self._info()
        info.update(target=target, action_4d=a4, reward_mw=float(reward))
        return self._obs(), float(self._success), terminated, truncated, info

    def expert_action_4d(self) -> np.ndarray:
        """Meta-World's scripted policy's 4-D action for the current observation (float32)."""
        if self._mw_obs is None:
            raise RuntimeError("expert_action needs a reset()")
        with warnings.catch_warnings():              # the policies warn when their gains exceed the [-1, 1] clip
            warnings.simplefilter("ignore", UserWarning)
            return np.asarray(self.expert.get_action(self._mw_obs), dtype=np.float32)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action as our absolute 8-D target."""
        return self.action_to_target(self.expert_action_4d())

    def close(self) -> None:
        super().close()
        self.mw.close()


def make_env(task: str, cameras: Sequence[str] | None = None, image_size: int | None = None,
             perturb_cameras: bool = False, camera_seed: int | None = None, render: bool = True,
             render_mode: str | None = None, rig: Sequence[Camera] | None = None, rig_distribution: str | None = None,
             rig_views: int = 4) -> MetaWorldEnv:
    """A Meta-World task behind the built-in sim's ``make_env`` interface (see the module docstring)."""
    return MetaWorldEnv(task, cameras=cameras, image_size=image_size, perturb_cameras=perturb_cameras,
                        camera_seed=camera_seed, render=render, render_mode=render_mode, rig=rig,
                        rig_distribution=rig_distribution, rig_views=rig_views)


def centroid_errors(env: MetaWorldEnv, seeds: Sequence[int] = (0, 1, 2, 3), steps_per_seed: int = 12,
                    marker_radius: float = 0.02, principal_shift: float = 0.0, min_pixels: int = 3) -> list[float]:
    """Calibration check: pixel distances between the projected mocap body position and the centroid of its marker
    sphere's segmentation mask, for every camera of ``env`` (rigs included).

    For every seed the expert runs ``seed * steps_per_seed`` steps (different arm poses); the mocap's sphere geom
    (hidden in observations) is enlarged to ``marker_radius`` and rendered alone (group 5), so nothing occludes it;
    masks cut by the image border are left out.
    ``principal_shift`` moves the principal point (to show that (W-1)/2 fits better than W/2)."""
    m, d = env.model, env.data
    body = m.body("mocap").id
    gid = next(g for g in range(m.ngeom) if m.geom_bodyid[g] == body)
    group0, size0, rgba0 = int(m.geom_group[gid]), m.geom_size[gid].copy(), m.geom_rgba[gid].copy()
    errs: list[float] = []
    try:
        m.geom_group[gid], m.geom_size[gid, 0], m.geom_rgba[gid] = 5, marker_radius, (1.0, 0.0, 1.0, 1.0)
        for seed in seeds:
            env.reset(seed=int(seed))
            for _ in range(int(seed) * steps_per_seed):
                env.step(env.expert_action())
            for cam in env.cameras:
                K = cam.K.copy()
                K[:2, 2] += principal_shift
                cam = Camera(K, cam.T_cam_world, cam.width, cam.height, cam.name)
                v, u = np.nonzero(env.segmentation(cam.name, groups=(5,)) == gid)
                if len(u) < min_pixels or u.min() == 0 or v.min() == 0 or u.max() == cam.width - 1 \
                        or v.max() == cam.height - 1:
                    continue                                   # too small, or cut by the image border
                uv, _ = cam.project(d.xpos[body])
                errs.append(float(np.hypot(uv[0] - u.mean(), uv[1] - v.mean())))
    finally:
        m.geom_group[gid], m.geom_size[gid], m.geom_rgba[gid] = group0, size0, rgba0
    return errs
