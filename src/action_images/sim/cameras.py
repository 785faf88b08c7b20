"""Camera calibration from MuJoCo, seeded camera jitter and fast multi-view rendering.

Calibration follows design §5: ``f = 0.5·H / tan(fovy/2)``, ``R_wc = cam_xmat @ diag(1,-1,-1)`` (MuJoCo cameras look
along -z with y up; OpenCV looks along +z with y down). The principal point is ((W-1)/2, (H-1)/2): OpenGL samples
pixel centres at +0.5 and our pixel (0, 0) is the centre of the top-left pixel; tests/test_sim_cameras.py checks this
against segmentation masks (W/2 is measurably worse).
"""

from __future__ import annotations

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from action_images.geometry import Camera

# perturb_cameras: uniform jitter per axis of the camera position (metres) and of its orientation (rotation vector
# components, radians, applied about the camera centre in its parent frame). fovy is not changed.
PERTURB_POS = 0.03
PERTURB_ROT = 0.05  # ~2.9°

_FLIP = np.diag([1.0, -1.0, -1.0])


def camera_from_mujoco(model: mujoco.MjModel, data: mujoco.MjData, cam_id: int, width: int, height: int,
                       name: str = "") -> Camera:
    """A ``geometry.Camera`` (OpenCV convention, T_cam_world) for MuJoCo camera ``cam_id`` in the current state."""
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
    """One offscreen renderer shared by all views, with the cheap flags of design §5 (no shadows/reflections/MSAA)."""

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
