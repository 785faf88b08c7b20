"""The one convention module: cameras, projection, rays, Plücker maps and pose conversions.

Every other module imports its conventions from here (see docs/conventions.md):

* world frame: right-handed, z up, metres.
* pose / action vector: ``[x, y, z, qx, qy, qz, qw, g]`` -- absolute end-effector pose in the world frame,
  quaternion scalar-last (scipy's order), unit norm, gripper openness ``g`` in [0, 1] with 1 = open.
* tool frame: +z from the wrist toward the fingertips (approach), +x is the paper's "up" axis, fingers close along ±y.
* camera: OpenCV pinhole (x right, y down, z forward), intrinsics ``K`` in pixels for the stored image size, pose stored
  as ``T_cam_world`` (world -> camera). Pixel (u, v) = (column, row); (0, 0) is the centre of the top-left pixel.

Rotations go through scipy (``scipy.spatial.transform.Rotation``); no hand-written quaternion math.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy.spatial.transform import Rotation

POSE_DIM = 8
POSE_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper")
QUAT_TOL = 1e-3  # |‖q‖ - 1| above this is an error, not rounding


# ----------------------------------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------------------------------

def validate_poses(poses: np.ndarray, name: str = "poses") -> np.ndarray:
    """Check a ``[..., 8]`` pose array and return it as float64; raise ``ValueError`` naming the problem."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim < 1 or poses.shape[-1] != POSE_DIM:
        raise ValueError(f"{name} must have shape [..., 8] = [x,y,z,qx,qy,qz,qw,g]; got shape {poses.shape}")
    bad = ~np.isfinite(poses).all(axis=-1)
    if bad.any():
        idx = np.argwhere(bad)[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {idx})")
    norms = np.linalg.norm(poses[..., 3:7], axis=-1)
    off = np.abs(norms - 1.0) > QUAT_TOL
    if off.any():
        idx = np.argwhere(off)[0].tolist()
        raise ValueError(
            f"{name}: quaternion [qx,qy,qz,qw] must be unit norm (scalar-last); norm {norms[off][0]:.4f} at index {idx}. "
            "Normalise it with geometry.normalize_quat if that is what you meant.")
    g = poses[..., 7]
    if ((g < 0) | (g > 1)).any():
        raise ValueError(f"{name}: gripper g must lie in [0, 1] (1 = open); got range [{g.min():.3f}, {g.max():.3f}]")
    return poses


def normalize_quat(q: np.ndarray) -> np.ndarray:
    """Unit-normalise ``[..., 4]`` quaternions (scalar-last); raise on zero or non-finite input."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.isfinite(q).all() or (n < 1e-12).any():
        raise ValueError("quaternion is zero, NaN or inf; cannot normalise")
    return q / n


def pose_to_matrix(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[..., 8]`` poses -> (position ``[..., 3]``, rotation ``[..., 3, 3]``, gripper ``[...]``)."""
    poses = validate_poses(poses)
    shape = poses.shape[:-1]
    R = Rotation.from_quat(poses.reshape(-1, 8)[:, 3:7]).as_matrix().reshape(*shape, 3, 3)
    return poses[..., :3].copy(), R, poses[..., 7].copy()


def matrix_to_pose(p: np.ndarray, R: np.ndarray, g: np.ndarray | float) -> np.ndarray:
    """(position ``[..., 3]``, rotation ``[..., 3, 3]``, gripper ``[...]``) -> ``[..., 8]`` poses (qw >= 0)."""
    p = np.asarray(p, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    shape = p.shape[:-1]
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat(canonical=True).reshape(*shape, 4)
    g = np.broadcast_to(np.asarray(g, dtype=np.float64), shape)
    return np.concatenate([p, q, g[..., None]], axis=-1)


def pose_to_homogeneous(poses: np.ndarray) -> np.ndarray:
    """``[..., 8]`` poses -> ``T_world_tool`` ``[..., 4, 4]`` (tool -> world)."""
    p, R, _ = pose_to_matrix(poses)
    T = np.zeros(p.shape[:-1] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = p
    T[..., 3, 3] = 1.0
    return T


def euler_to_quat(euler: np.ndarray, seq: str = "xyz", degrees: bool = False) -> np.ndarray:
    """Euler angles ``[..., 3]`` (scipy ``seq``; lowercase = extrinsic) -> quaternions ``[..., 4]`` scalar-last."""
    euler = np.asarray(euler, dtype=np.float64)
    q = Rotation.from_euler(seq, euler.reshape(-1, 3), degrees=degrees).as_quat(canonical=True)
    return q.reshape(*euler.shape[:-1], 4)


def quat_to_euler(q: np.ndarray, seq: str = "xyz", degrees: bool = False) -> np.ndarray:
    """Quaternions ``[..., 4]`` scalar-last -> Euler angles ``[..., 3]`` (scipy ``seq``)."""
    q = normalize_quat(q)
    e = Rotation.from_quat(q.reshape(-1, 4)).as_euler(seq, degrees=degrees)
    return e.reshape(*q.shape[:-1], 3)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    q = normalize_quat(q)
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat(canonical=True).reshape(*R.shape[:-2], 4)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices ``[..., 3, 3]``."""
    R_rel = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(R_rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def ray_angle_deg(c0: np.ndarray, c1: np.ndarray, x: np.ndarray) -> float:
    """Angle (degrees) at ``x`` between the rays to ``c0`` and ``c1``: for two camera centres, how far apart the two
    views see ``x`` (near 0: their rays are nearly parallel and fix ``x`` poorly along them)."""
    u = np.asarray(c0, dtype=np.float64) - x
    v = np.asarray(c1, dtype=np.float64) - x
    return float(np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1.0, 1.0))))


def topdown_rotation(yaw: np.ndarray | float) -> np.ndarray:
    """Tool rotations ``[..., 3, 3]`` pointing straight down (tool +z = world -z) with tool +x at ``yaw`` (radians,
    from world +x toward +y) in the horizontal plane: the orientations of a top-down (4-DoF) grasp."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    # columns: tool x = (c, s, 0), tool y = z × x = (s, -c, 0), tool z = (0, 0, -1)
    return np.stack([np.stack([c, s, zero], -1), np.stack([s, -c, zero], -1), np.stack([zero, zero, -one], -1)], -1)


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """Project ``[..., 3, 3]`` matrices to the nearest rotation (SVD, det +1)."""
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.zeros_like(M)
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    return U @ D @ Vt


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Invert rigid ``[..., 4, 4]`` transforms (``T_a_b`` -> ``T_b_a``)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """A calibrated pinhole camera in our conventions.

    ``K``: 3x3 intrinsics (pixels) for an image of ``height`` x ``width``; ``T_cam_world``: 4x4, maps world points into
    the camera frame (x right, y down, z forward). Pixel (0, 0) is the centre of the top-left pixel.
    """

    K: np.ndarray
    T_cam_world: np.ndarray
    width: int
    height: int
    name: str = ""
    _checked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        T = np.asarray(self.T_cam_world, dtype=np.float64)
        label = f"camera {self.name!r}" if self.name else "camera"
        if K.shape != (3, 3):
            raise ValueError(f"{label}: K must be 3x3; got shape {K.shape}")
        if T.shape != (4, 4):
            raise ValueError(f"{label}: T_cam_world must be 4x4; got shape {T.shape}")
        if not (np.isfinite(K).all() and np.isfinite(T).all()):
            raise ValueError(f"{label}: K or T_cam_world contains NaN or inf")
        if abs(np.linalg.det(K)) < 1e-9 or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"{label}: K is not invertible (focal lengths must be > 0); got K={K.tolist()}")
        R = T[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0.0:
            raise ValueError(f"{label}: T_cam_world rotation is not a proper rotation (R Rᵀ != I or det < 0)")
        if not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError(f"{label}: T_cam_world last row must be [0, 0, 0, 1]; got {T[3].tolist()}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"{label}: image size must be positive; got {self.width}x{self.height}")
        K.setflags(write=False)
        T.setflags(write=False)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "T_cam_world", T)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    # ---- derived -----------------------------------------------------------------------------------------------------
    @property
    def T_world_cam(self) -> np.ndarray:
        """Camera -> world (the camera's pose in the world)."""
        return invert_transform(self.T_cam_world)

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the world frame."""
        return self.T_world_cam[:3, 3]

    @property
    def P(self) -> np.ndarray:
        """3x4 projection matrix ``K [R | t]`` (world -> homogeneous pixels)."""
        return self.K @ self.T_cam_world[:3, :]

    @classmethod
    def from_fovy(cls, fovy_deg: float, width: int, height: int, T_cam_world: np.ndarray, name: str = "") -> "Camera":
        """Square pixels, principal point at the image centre ((W-1)/2, (H-1)/2 in our pixel convention)."""
        f = 0.5 * height / np.tan(np.radians(fovy_deg) / 2.0)
        K = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
        return cls(K=K, T_cam_world=T_cam_world, width=width, height=height, name=name)

    @classmethod
    def look_at(cls, eye: Sequence[float], target: Sequence[float], fovy_deg: float, width: int, height: int,
                up: Sequence[float] = (0.0, 0.0, 1.0), name: str = "") -> "Camera":
        """A camera at ``eye`` looking at ``target``, image "up" toward world ``up``."""
        eye, target, up = (np.asarray(x, dtype=np.float64) for x in (eye, target, up))
        z = target - eye
        z /= np.linalg.norm(z)
        x = np.cross(z, up)
        if np.linalg.norm(x) < 1e-9:
            raise ValueError("look_at: viewing direction is parallel to `up`")
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R_world_cam = np.stack([x, y, z], axis=1)
        T_world_cam = np.eye(4)
        T_world_cam[:3, :3] = R_world_cam
        T_world_cam[:3, 3] = eye
        return cls.from_fovy(fovy_deg, width, height, invert_transform(T_world_cam), name=name)

    # ---- projection --------------------------------------------------------------------------------------------------
    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points ``[..., 3]`` -> pixels ``[..., 2]`` (u, v) and depth ``[...]`` (z in the camera frame)."""
        uv, depth = project_points(points_world, self.K[None], self.T_cam_world[None])
        return uv[0], depth[0]

    def in_image(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Whether projected points lie in front of the camera and inside the image (pixel centres' extent)."""
        return ((depth > 1e-6) & (uv[..., 0] >= -0.5) & (uv[..., 0] <= self.width - 0.5)
                & (uv[..., 1] >= -0.5) & (uv[..., 1] <= self.height - 0.5))

    def rays(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``[..., 2]`` -> world ray origins ``[..., 3]`` and unit directions ``[..., 3]``."""
        uv = np.asarray(uv, dtype=np.float64)
        hom = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)
        d_cam = hom @ np.linalg.inv(self.K).T
        R_wc = self.T_world_cam[:3, :3]
        d = d_cam @ R_wc.T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        return np.broadcast_to(self.position, d.shape).copy(), d

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels ``[..., 2]`` at camera-frame depth z ``[...]`` -> world points ``[..., 3]``."""
        uv = np.asarray(uv, dtype=np.float64)
        hom = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)
        p_cam = (hom @ np.linalg.inv(self.K).T) * np.asarray(depth, dtype=np.float64)[..., None]
        T = self.T_world_cam
        return p_cam @ T[:3, :3].T + T[:3, 3]

    def pixel_grid(self) -> np.ndarray:
        """``[H, W, 2]`` pixel centres (u, v)."""
        v, u = np.meshgrid(np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64),
                           indexing="ij")
        return np.stack([u, v], axis=-1)

    def plucker(self) -> np.ndarray:
        """Per-pixel Plücker ray map ``[H, W, 6]`` float32: unit direction d and moment m = o x d (world frame)."""
        o, d = self.rays(self.pixel_grid())
        return np.concatenate([d, np.cross(o, d)], axis=-1).astype(np.float32)

    # ---- image-space edits (K follows the image) ---------------------------------------------------------------------
    def resized(self, width: int, height: int) -> "Camera":
        """The camera after resizing its image to ``width`` x ``height`` (pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 1] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return Camera(K=K, T_cam_world=self.T_cam_world, width=width, height=height, name=self.name)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "Camera":
        """The camera after cropping ``image[y0:y0+height, x0:x0+width]``."""
        if x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(f"crop ({x0},{y0},{width},{height}) outside the {self.width}x{self.height} image")
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return Camera(K=K, T_cam_world=self.T_cam_world, width=width, height=height, name=self.name)

    # ---- serialisation -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "height": self.height, "K": self.K.tolist(),
                "T_cam_world": self.T_cam_world.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        missing = {"K", "T_cam_world", "width", "height"} - set(d)
        if missing:
            raise ValueError(f"camera dict is missing {sorted(missing)}")
        return cls(K=np.asarray(d["K"]), T_cam_world=np.asarray(d["T_cam_world"]), width=int(d["width"]),
                   height=int(d["height"]), name=str(d.get("name", "")))


def stack_cameras(cameras: Sequence[Camera]) -> tuple[np.ndarray, np.ndarray]:
    """Cameras -> (K ``[V, 3, 3]``, T_cam_world ``[V, 4, 4]``)."""
    if len(cameras) == 0:
        raise ValueError("need at least one camera")
    return np.stack([c.K for c in cameras]), np.stack([c.T_cam_world for c in cameras])


# ----------------------------------------------------------------------------------------------------------------------
# Batched projection (numpy and torch share the same maths)
# ----------------------------------------------------------------------------------------------------------------------

def project_points(points: np.ndarray, K: np.ndarray, T_cam_world: np.ndarray, per_view: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into V views.

    points ``[N..., 3]`` shared by all views (or ``[V, N..., 3]`` with ``per_view=True``); K ``[V, 3, 3]``;
    T_cam_world ``[V, 4, 4]``. Returns uv ``[V, N..., 2]`` and depth ``[V, N...]``. Points with depth <= 0 get NaN uv.
    """
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T_cam_world, dtype=np.float64)
    V = K.shape[0]
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., 3]; got {points.shape}")
    if per_view:
        if points.shape[0] != V:
            raise ValueError(f"per_view points must have {V} rows (one per view); got shape {points.shape}")
    else:
        points = np.broadcast_to(points, (V,) + points.shape)
    flat = points.reshape(V, -1, 3)
    p_cam = np.einsum("vij,vnj->vni", T[:, :3, :3], flat) + T[:, None, :3, 3]
    depth = p_cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = p_cam[..., :2] / np.where(depth > 1e-9, depth, np.nan)[..., None]
    uv = np.einsum("vij,vnj->vni", K[:, :2, :2], xy) + K[:, None, :2, 2]
    return uv.reshape(points.shape[:-1] + (2,)), depth.reshape(points.shape[:-1])


def project_points_torch(points: torch.Tensor, K: torch.Tensor, T_cam_world: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of :func:`project_points` (differentiable; any leading batch dims on K/T broadcast with points).

    points ``[..., N, 3]``, K ``[..., 3, 3]``, T_cam_world ``[..., 4, 4]`` -> uv ``[..., N, 2]``, depth ``[..., N]``.
    """
    p_cam = points @ T_cam_world[..., :3, :3].transpose(-1, -2) + T_cam_world[..., None, :3, 3]
    depth = p_cam[..., 2]
    xy = p_cam[..., :2] / torch.where(depth > 1e-9, depth, torch.full_like(depth, float("nan")))[..., None]
    uv = xy @ K[..., :2, :2].transpose(-1, -2) + K[..., None, :2, 2]
    return uv, depth


def plucker_maps(cameras: Sequence[Camera]) -> np.ndarray:
    """``[V, H, W, 6]`` Plücker maps for cameras that share one image size."""
    sizes = {(c.height, c.width) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras have different image sizes {sorted(sizes)}; resize them first")
    return np.stack([c.plucker() for c in cameras])
