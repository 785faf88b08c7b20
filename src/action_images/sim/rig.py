"""Calibrated camera rigs: rig files, their validation, placing MuJoCo cameras at a rig, and random rigs.

A rig is a list of static ``geometry.Camera`` (OpenCV pinhole, ``T_cam_world``, K for the image size). The scene has
``RIG_SLOTS`` spare world cameras named ``rig0`` ... ``rig7``; rig camera ``i`` is placed in slot ``rig{i}``, keeps
its own name in the env's calibration and is rendered exactly as calibrated.

Rendering a K: MuJoCo's ``fovy`` gives square pixels and a principal point at the image centre, which is
((W-1)/2, (H-1)/2) in our pixel convention. Any other zero-skew K is rendered through MuJoCo's camera intrinsics: with
``sensorsize = resolution = (W, H)`` (length unit = one pixel), ``intrinsic = [fx, fy, (W-1)/2 - cx, s·((H-1)/2 - cy)]``
with ``s = cameras.INTRINSIC_Y_SIGN`` (MuJoCo 3.3 and 4 shift the image vertically in opposite directions);
tests/test_rig.py checks both against segmentation masks.

Random rigs (:func:`random_rig`) put cameras on a spherical shell sector around a :class:`Workspace`'s centre (the
ranges are ``RIG_DISTRIBUTION``) and keep only draws that see the task area and most of the gripper's reachable box;
``SIM_WORKSPACE`` is this simulator's, another scene (sim/metaworld.py) passes its own.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from action_images.geometry import Camera
from action_images.runfiles import atomic_write_json
from action_images.sim import scene
from action_images.sim.cameras import INTRINSIC_Y_SIGN

RIG_SLOTS = scene.RIG_SLOTS
SLOT_NAMES = scene.RIG_SLOT_NAMES
# Every rig camera must have this point in front of it and inside its image; random rigs look at it (jittered).
WORKSPACE_CENTRE = np.array([0.0, 0.0, 0.1])
# The tasks' object area (cubes, bin, cabinet, button, goal disc: centres within x -0.15..0.2, y ±0.22) up to 15 cm
# above the table: a random-rig camera has all 8 corners of this box in its image.
OBJECT_BOX_LOW = np.array([-0.18, -0.24, 0.0])
OBJECT_BOX_HIGH = np.array([0.22, 0.24, 0.15])
ORTHO_TOL = 1e-6     # max |R Rᵀ - I| of a rig rotation (files written from float64 are exact to ~1e-16)
SPLITS = ("train", "heldout")

_FLIP = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes <-> MuJoCo camera axes (y up, looking along -z)
_ENTRY_REQUIRED = ("name", "width", "height", "K", "T_cam_world")
_ENTRY_OPTIONAL = ("static",)
_DOC_KEYS = ("format", "version", "convention", "cameras")


class RigError(ValueError):
    """A rig (file or camera list) that the simulator cannot place; the message names the source and the camera."""


# ----------------------------------------------------------------------------------------------------------------------
# Validation and files
# ----------------------------------------------------------------------------------------------------------------------

def _matrix(value: Any, shape: tuple[int, int], key: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a {shape[0]}x{shape[1]} array of numbers; got {value!r}") from None
    if arr.shape != shape:
        raise ValueError(f"{key} must be {shape[0]}x{shape[1]}; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{key} contains NaN or inf")
    return arr


def _size(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value \
            or value <= 0:
        raise ValueError(f"{key} must be a positive integer; got {value!r}")
    return int(value)


def _check_entry(entry: Any, image_size: int | None) -> Camera:
    """One camera entry (``Camera.to_dict()`` keys, optionally ``static``) -> a checked Camera; ValueError says why."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry must be an object; got {type(entry).__name__}")
    missing = [k for k in _ENTRY_REQUIRED if k not in entry]
    unknown = sorted(set(entry) - set(_ENTRY_REQUIRED) - set(_ENTRY_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"missing keys {missing}, unknown keys {unknown}; an entry has exactly "
                         f"{list(_ENTRY_REQUIRED)} and optionally 'static': true")
    if entry.get("static", True) is not True:
        raise ValueError("'static' must be true: a rig holds static cameras (per-frame calibration cannot be placed)")
    if not isinstance(entry["name"], str) or not entry["name"]:
        raise ValueError(f"name must be a non-empty string; got {entry['name']!r}")
    w, h = _size(entry["width"], "width"), _size(entry["height"], "height")
    if w != h or (image_size is not None and w != image_size):
        want = f"{image_size}x{image_size}" if image_size is not None else "square"
        raise ValueError(f"image size {w}x{h} does not match the simulator's {want} images")
    K = _matrix(entry["K"], (3, 3), "K")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"focal lengths must be > 0; got fx={K[0, 0]}, fy={K[1, 1]}")
    if K[0, 1] != 0 or K[1, 0] != 0 or not np.array_equal(K[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"K must be [[fx,0,cx],[0,fy,cy],[0,0,1]] (zero skew, pinhole); got {K.tolist()}")
    T = _matrix(entry["T_cam_world"], (4, 4), "T_cam_world")
    if not np.array_equal(T[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"T_cam_world last row must be [0, 0, 0, 1]; got {T[3].tolist()}")
    R = T[:3, :3]
    ortho = float(np.abs(R @ R.T - np.eye(3)).max())
    if ortho > ORTHO_TOL:
        raise ValueError(f"T_cam_world rotation is not orthonormal: max |R Rᵀ - I| = {ortho:.3g} > {ORTHO_TOL:g}")
    det = float(np.linalg.det(R))
    if det < 0:
        raise ValueError(f"T_cam_world rotation has det {det:+.6f}, must be +1 (a reflection, not a rotation)")
    cam = Camera(K=K, T_cam_world=T, width=w, height=h, name=entry["name"])
    eye = cam.position
    if eye[2] <= 0.0:
        raise ValueError(f"camera centre {np.round(eye, 4).tolist()} is at or below the table top (z = 0)")
    uv, depth = cam.project(WORKSPACE_CENTRE)
    if depth <= 0:
        raise ValueError(f"camera looks away from the workspace: the workspace centre {WORKSPACE_CENTRE.tolist()} "
                         f"is behind it (depth {depth:.3f} m)")
    if not cam.in_image(uv, depth):
        raise ValueError(f"camera looks away from the workspace: the workspace centre {WORKSPACE_CENTRE.tolist()} "
                         f"projects to pixel {np.round(uv, 1).tolist()}, outside its {w}x{h} image")
    return cam


def validate_rig(cameras: Sequence[Camera] | Sequence[dict], image_size: int | None = None,
                 source: str = "rig") -> list[Camera]:
    """Check a rig (Cameras or ``meta/cameras.json`` entries) for the simulator; return it as Cameras.

    Raises :class:`RigError` ``"<source>: camera '<name>' (entry i): <problem>"`` for: missing or unknown keys,
    non-static entries, NaN/inf, K not 3x3 / non-positive focal length / skew, image size not square or not
    ``image_size``, T_cam_world not 4x4 / last row not [0,0,0,1] / rotation not orthonormal (``ORTHO_TOL``) or det
    != +1, a camera at or below the table top, ``WORKSPACE_CENTRE`` behind the camera or outside its image; and for
    an empty rig, more than ``RIG_SLOTS`` cameras or duplicate names.
    """
    entries = [c.to_dict() if isinstance(c, Camera) else c for c in cameras]
    if not entries:
        raise RigError(f"{source}: the rig has no cameras")
    if len(entries) > RIG_SLOTS:
        raise RigError(f"{source}: {len(entries)} cameras; the scene has {RIG_SLOTS} rig slots")
    out: list[Camera] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name", "?") if isinstance(entry, dict) else "?"
        try:
            cam = _check_entry(entry, image_size)
        except ValueError as e:
            raise RigError(f"{source}: camera {name!r} (entry {i}): {e}") from None
        if cam.name in seen:
            raise RigError(f"{source}: camera {cam.name!r} (entry {i}): duplicate name (also entry {seen[cam.name]})")
        seen[cam.name] = i
        out.append(cam)
    return out


def rig_from_json(doc: Any, image_size: int | None = None, source: str = "rig") -> list[Camera]:
    """A ``meta/cameras.json`` document (``{"format", "version", "convention", "cameras": [...]}``) -> checked rig."""
    from action_images.data.lerobot_format import CAMERAS_FORMAT

    if not isinstance(doc, dict) or "cameras" not in doc:
        raise RigError(f"{source}: not a calibration file: expected an object with a 'cameras' list")
    unknown = sorted(set(doc) - set(_DOC_KEYS))
    if unknown:
        raise RigError(f"{source}: unknown top-level keys {unknown}; allowed {list(_DOC_KEYS)}")
    if doc.get("format", CAMERAS_FORMAT) != CAMERAS_FORMAT or doc.get("version", 1) != 1:
        raise RigError(f"{source}: format {doc.get('format')!r} version {doc.get('version')!r}; "
                       f"expected {CAMERAS_FORMAT!r} version 1")
    if not isinstance(doc["cameras"], list):
        raise RigError(f"{source}: 'cameras' must be a list")
    return validate_rig(doc["cameras"], image_size, source)


def load_rig(path: str | Path, image_size: int | None = None) -> list[Camera]:
    """Read and check a rig file in the ``meta/cameras.json`` format (a dataset's calibration file works as is)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RigError(f"{path}: not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RigError(f"{path}: cannot read the rig file ({getattr(e, 'strerror', None) or e})") from None
    return rig_from_json(doc, image_size, str(path))


def save_rig(cameras: Sequence[Camera], path: str | Path) -> Path:
    """Write a rig as a ``meta/cameras.json`` document (static cameras); :func:`load_rig` reads it back exactly."""
    from action_images.data.lerobot_format import cameras_to_json

    path = Path(path)
    atomic_write_json(path, cameras_to_json(list(cameras), per_frame=False))
    return path


def resolve_rig(rig: str | Path | Sequence[Camera], image_size: int | None = None) -> list[Camera]:
    """``make_env``'s ``rig`` argument (a file path or a list of Cameras) -> checked rig."""
    if isinstance(rig, (str, Path)):
        return load_rig(rig, image_size)
    return validate_rig(list(rig), image_size)


# ----------------------------------------------------------------------------------------------------------------------
# Placing MuJoCo cameras
# ----------------------------------------------------------------------------------------------------------------------

def fovy_representable(cam: Camera) -> bool:
    """Whether MuJoCo's ``fovy`` alone renders ``cam.K`` (square pixels, principal point at the image centre)."""
    K = cam.K
    return (abs(K[0, 0] - K[1, 1]) <= 1e-12 * K[1, 1] and abs(K[0, 2] - (cam.width - 1) / 2.0) <= 1e-12
            and abs(K[1, 2] - (cam.height - 1) / 2.0) <= 1e-12)


def place_camera(model: mujoco.MjModel, cam_id: int, cam: Camera) -> None:
    """Set a world-fixed MuJoCo camera's pose and projection to ``cam`` (call ``mj_forward`` before reading it)."""
    if model.cam_bodyid[cam_id] != 0 or model.cam_mode[cam_id] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
        raise ValueError(f"camera {model.camera(cam_id).name!r} is not a fixed world camera")
    R_mj = cam.T_world_cam[:3, :3] @ _FLIP
    model.cam_pos[cam_id] = cam.position
    model.cam_quat[cam_id] = Rotation.from_matrix(R_mj).as_quat(scalar_first=True)
    K, W, H = cam.K, cam.width, cam.height
    if fovy_representable(cam):
        model.cam_fovy[cam_id] = math.degrees(2.0 * math.atan(0.5 * H / K[1, 1]))
        model.cam_sensorsize[cam_id] = 0.0
        model.cam_intrinsic[cam_id] = 0.0
    else:
        model.cam_fovy[cam_id] = math.degrees(2.0 * math.atan(0.5 * H / K[1, 1]))  # unused by the renderer here
        model.cam_sensorsize[cam_id] = (W, H)
        model.cam_resolution[cam_id] = (W, H)
        model.cam_intrinsic[cam_id] = (K[0, 0], K[1, 1], (W - 1) / 2.0 - K[0, 2],
                                        INTRINSIC_Y_SIGN * ((H - 1) / 2.0 - K[1, 2]))


# ----------------------------------------------------------------------------------------------------------------------
# Random rigs
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RigDistribution:
    """Where :func:`random_rig` puts a camera (all draws uniform within the ranges, angles in degrees).

    The camera sits at ``look_at + distance · (cos el cos az, cos el sin az, sin el)``: azimuth 0 looks from +x (the
    table's far side, facing the robot), ±90 from the sides; the robot base is at 180, behind the arm, which the
    range leaves out. It looks at ``WORKSPACE_CENTRE`` + a uniform jitter per axis, image "up" toward world +z, then
    rolled about its optical axis; square pixels, principal point at the image centre.
    """

    azimuth_deg: tuple[float, float] = (-100.0, 100.0)
    elevation_deg: tuple[float, float] = (20.0, 65.0)
    distance_m: tuple[float, float] = (0.75, 1.1)
    look_at_jitter_m: tuple[float, float, float] = (0.06, 0.06, 0.04)
    roll_deg: tuple[float, float] = (-10.0, 10.0)
    fovy_deg: tuple[float, float] = (45.0, 60.0)
    # acceptance (docs/benchmark.md has the pass rate): every corner of OBJECT_BOX inside the image, and at least this
    # fraction of a 5x5x5 grid over the gripper's reachable box (scene.WORKSPACE_LOW/HIGH) in view (about what the
    # named static views see)
    min_workspace_in_view: float = 0.5
    max_tries: int = 1000


RIG_DISTRIBUTION = RigDistribution()


def _split_key(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return zlib.crc32(f"rig/{split}".encode())


@dataclass(frozen=True)
class Workspace:
    """Where a scene's robot works, as random rigs see it: cameras look at ``centre`` (jittered), must have the whole
    object box and most of the gripper's reachable box in view, and azimuth 0 of :class:`RigDistribution` points
    along world direction ``front_azimuth_deg`` (measured from +x about +z; the side facing the robot)."""

    centre: tuple[float, float, float]
    object_low: tuple[float, float, float]
    object_high: tuple[float, float, float]
    reach_low: tuple[float, float, float]
    reach_high: tuple[float, float, float]
    front_azimuth_deg: float = 0.0


SIM_WORKSPACE = Workspace(tuple(WORKSPACE_CENTRE), tuple(OBJECT_BOX_LOW), tuple(OBJECT_BOX_HIGH),
                          tuple(scene.WORKSPACE_LOW), tuple(scene.WORKSPACE_HIGH))


def _workspace_grid(workspace: Workspace = SIM_WORKSPACE, n: int = 5) -> np.ndarray:
    axes = [np.linspace(lo, hi, n) for lo, hi in zip(workspace.reach_low, workspace.reach_high)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _object_box_corners(workspace: Workspace = SIM_WORKSPACE) -> np.ndarray:
    box = (workspace.object_low, workspace.object_high)
    return np.array([[box[b >> k & 1][k] for k in range(3)] for b in range(8)], dtype=np.float64)


def sees_workspace(cam: Camera, dist: RigDistribution = RIG_DISTRIBUTION,
                   workspace: Workspace = SIM_WORKSPACE) -> bool:
    """Acceptance test of a random-rig camera: the object box fully in view, the reachable box mostly in view."""
    uv, depth = cam.project(_object_box_corners(workspace))
    if not cam.in_image(uv, depth).all():
        return False
    uv, depth = cam.project(_workspace_grid(workspace))
    return float(cam.in_image(uv, depth).mean()) >= dist.min_workspace_in_view


def _draw_camera(rng: np.random.Generator, size: int, name: str, dist: RigDistribution,
                 workspace: Workspace = SIM_WORKSPACE) -> Camera:
    centre = np.asarray(workspace.centre, dtype=np.float64)
    front = np.radians(workspace.front_azimuth_deg)
    for _ in range(dist.max_tries):
        az, el = np.radians(rng.uniform(*dist.azimuth_deg)) + front, np.radians(rng.uniform(*dist.elevation_deg))
        d = rng.uniform(*dist.distance_m)
        jitter = np.asarray(dist.look_at_jitter_m)
        target = centre + rng.uniform(-jitter, jitter)
        roll = np.radians(rng.uniform(*dist.roll_deg))
        fovy = rng.uniform(*dist.fovy_deg)
        eye = target + d * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        cam = Camera.look_at(eye, target, fovy, size, size, name=name)
        T = cam.T_cam_world.copy()  # roll: rotate the camera frame about its own z (optical) axis
        T[:3, :] = Rotation.from_rotvec([0.0, 0.0, roll]).as_matrix() @ T[:3, :]
        cam = Camera(cam.K, T, size, size, name)
        if sees_workspace(cam, dist, workspace):
            return cam
    raise RuntimeError(f"random_rig: no camera seeing the workspace in {dist.max_tries} draws; widen the ranges")


def random_rig(seed: int, n_views: int = 4, size: int = 64, split: str = "train",
               distribution: RigDistribution = RIG_DISTRIBUTION, workspace: Workspace = SIM_WORKSPACE,
               max_views: int = RIG_SLOTS) -> list[Camera]:
    """``n_views`` (1..``max_views``) cameras named ``rig0`` ... drawn from ``distribution`` around ``workspace``.

    View ``i`` comes from ``SeedSequence(seed, spawn_key=(crc32("rig/<split>"), i))``: the same (seed, split) always
    gives the same rig, view i does not depend on ``n_views``, and the "train" and "heldout" splits draw from
    different streams for every seed. Draws that fail :func:`sees_workspace` are redrawn from the same stream.
    """
    if not 1 <= int(n_views) <= int(max_views):
        raise ValueError(f"n_views must be in 1..{max_views}; got {n_views}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    key = _split_key(split)
    cams = []
    for i in range(int(n_views)):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(key, i)))
        cams.append(_draw_camera(rng, int(size), f"rig{i}", distribution, workspace))
    return cams
