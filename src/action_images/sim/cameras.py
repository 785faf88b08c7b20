"""Camera calibration from MuJoCo, seeded camera jitter and fast multi-view rendering.

Calibration: ``f = 0.5·H / tan(fovy/2)``, ``R_wc = cam_xmat @ diag(1,-1,-1)`` (MuJoCo cameras look along -z with y
up; OpenCV looks along +z with y down). The principal point is ((W-1)/2, (H-1)/2): OpenGL samples pixel centres at
+0.5 and our pixel (0, 0) is the centre of the top-left pixel; tests/test_sim_cameras.py checks this against
segmentation masks (W/2 is measurably worse). A camera with MuJoCo intrinsics (``cam_sensorsize`` non-zero, set by
sim/rig.py for a K that fovy cannot express) has ``fx = intrinsic[0]·W/sensorsize[0]``,
``cx = (W-1)/2 - intrinsic[2]·W/sensorsize[0]`` and ``cy = (H-1)/2 - INTRINSIC_Y_SIGN·intrinsic[3]·H/sensorsize[1]``:
``INTRINSIC_Y_SIGN`` is +1 for MuJoCo 4 and -1 before: MuJoCo 3.3 applies ``intrinsic[3]`` in the opposite vertical
direction (measured against segmentation masks with 3.3.0 and 4.0.0; tests/test_rig.py checks the installed version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from action_images.geometry import Camera

if TYPE_CHECKING:  # pragma: no cover
    from action_images.sim.env import SimEnv

# perturb_cameras: uniform jitter per axis of the camera position (metres) and of its orientation (rotation vector
# components, radians, applied about the camera centre in its parent frame). fovy is not changed.
PERTURB_POS = 0.03
PERTURB_ROT = 0.05  # ~2.9°

_FLIP = np.diag([1.0, -1.0, -1.0])
# sign of the vertical principal-point offset ``cam_intrinsic[3]`` in MuJoCo's renderer (see the module docstring)
MUJOCO_VERSION = tuple(int(x) for x in mujoco.__version__.split(".")[:3] if x.isdigit())
INTRINSIC_Y_SIGN = 1.0 if MUJOCO_VERSION >= (4, 0, 0) else -1.0


def camera_from_mujoco(model: mujoco.MjModel, data: mujoco.MjData, cam_id: int, width: int, height: int,
                       name: str = "") -> Camera:
    """A ``geometry.Camera`` (OpenCV convention, T_cam_world) for MuJoCo camera ``cam_id`` in the current state."""
    sensor = model.cam_sensorsize[cam_id].astype(np.float64)
    if sensor[0] > 0 and sensor[1] > 0:
        fx, fy, ox, oy = model.cam_intrinsic[cam_id].astype(np.float64)
        sx, sy = width / sensor[0], height / sensor[1]
        K = np.array([[fx * sx, 0.0, (width - 1) / 2.0 - ox * sx], [0.0, fy * sy, (height - 1) / 2.0 - INTRINSIC_Y_SIGN * oy * sy],
                      [0.0, 0.0, 1.0]])
    else:
        f = 0.5 * height / np.tan(np.radians(model.cam_fovy[cam_id]) / 2.0)
        K = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    R_wc = data.cam_xmat[cam_id].reshape(3, 3) @ _FLIP
    T = np.eye(4)
    T[:3, :3] = R_wc.T
    T[:3, 3] = -R_wc.T @ data.cam_xpos[cam_id]
    return Camera(K=K, T_cam_world=T, width=width, height=height, name=name or model.camera(cam_id).name)


def perturb(model: mujoco.MjModel, cam_ids: list[int], base_pos: np.ndarray, base_quat: np.ndarray,
            rng: np.random.Generator | None) -> None:
    """Reset cameras to their base pose, then (if ``rng``) jitter them within PERTURB_POS / PERTURB_ROT."""
    for i, cid in enumerate(cam_ids):
        pos, quat = base_pos[i].copy(), base_quat[i].copy()
        if rng is not None:
            pos = pos + rng.uniform(-PERTURB_POS, PERTURB_POS, 3)
            rot = Rotation.from_rotvec(rng.uniform(-PERTURB_ROT, PERTURB_ROT, 3))
            quat = (rot * Rotation.from_quat(quat, scalar_first=True)).as_quat(scalar_first=True)
        model.cam_pos[cid] = pos
        model.cam_quat[cid] = quat


class MultiViewRenderer:
    """One offscreen renderer shared by all views, with cheap flags (no shadows, reflections or MSAA)."""

    def __init__(self, model: mujoco.MjModel, size: int):
        model.vis.quality.offsamples = 0  # must precede the Renderer (it sizes the MSAA buffers)
        self.renderer = mujoco.Renderer(model, height=size, width=size)
        self.option = mujoco.MjvOption()
        self.option.geomgroup[4:] = 0
        self.option.sitegroup[:] = 0
        self._set_flags()

    def _set_flags(self) -> None:
        flags = self.renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def render(self, data: mujoco.MjData, cam_ids: list[int]) -> list[np.ndarray]:
        out = []
        for cid in cam_ids:
            self.renderer.update_scene(data, camera=cid, scene_option=self.option)
            out.append(self.renderer.render())
        return out

    def segmentation(self, data: mujoco.MjData, cam_id: int, groups: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
        """``[H, W]`` int32 geom id per pixel (-1 for background), rendering only geoms in ``groups``."""
        option = mujoco.MjvOption()
        option.geomgroup[:] = 0
        option.geomgroup[list(groups)] = 1
        option.sitegroup[:] = 0
        self.renderer.enable_segmentation_rendering()
        try:
            self.renderer.update_scene(data, camera=cam_id, scene_option=option)
            seg = self.renderer.render()
        finally:
            self.renderer.disable_segmentation_rendering()
            self._set_flags()
        ids = seg[..., 0].astype(np.int32)
        ids[seg[..., 1] != int(mujoco.mjtObj.mjOBJ_GEOM)] = -1
        return ids

    def close(self) -> None:
        self.renderer.close()


def centroid_errors(env: "SimEnv", geoms: Sequence[str] = ("tcp_marker",), seeds: Sequence[int] = (0, 1, 2, 3),
                    steps_per_seed: int = 3, principal_shift: float = 0.0, min_pixels: int = 3) -> list[float]:
    """Calibration check: pixel distances between each geom's projected centre and its mask centroid.

    For every seed, the expert runs ``seed * steps_per_seed`` steps (different arm poses), then each geom is rendered
    alone in segmentation mode (moved to group 5, the only one drawn) so occlusion cannot bias the centroid.
    ``principal_shift`` moves the principal point (to show that (W-1)/2 fits better than W/2).
    """
    m, d = env.model, env.data
    ids = [m.geom(g).id for g in geoms]
    groups0 = m.geom_group[ids].copy()
    errs: list[float] = []
    try:
        for seed in seeds:
            env.reset(seed=int(seed))
            for _ in range(int(seed) * steps_per_seed):
                env.step(env.expert_action())
            for cam in env.cameras:
                K = cam.K.copy()
                K[:2, 2] += principal_shift
                cam = Camera(K, cam.T_cam_world, cam.width, cam.height, cam.name)
                for gid in ids:
                    m.geom_group[ids] = 4
                    m.geom_group[gid] = 5
                    v, u = np.nonzero(env.segmentation(cam.name, groups=(5,)) == gid)
                    if len(u) < min_pixels:
                        continue
                    uv, _ = cam.project(d.geom_xpos[gid])
                    errs.append(float(np.hypot(uv[0] - u.mean(), uv[1] - v.mean())))
    finally:
        m.geom_group[ids] = groups0
    return errs
