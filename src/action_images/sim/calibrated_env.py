"""What the built-in sim and the Meta-World adapter share: a gymnasium env whose MuJoCo cameras are calibrated views.

Both environments name their views, may move cameras (rig slots) to a rig's poses, render all views in one pass, and
hand out the same observation (images, ``ee_pose``, instruction, each view's K and ``T_cam_world``). The subclass builds
the model and sets the attributes this class reads: ``model``, ``data``, ``camera_names``, ``image_size``,
``_view_ids`` (view name -> MuJoCo camera id), ``_cam_ids`` (ids in view order), ``_slot_ids`` (the cameras a rig
takes over, in rig order), ``_exact_K``, ``_renderer``, ``_last_images``, ``observe_images``, ``instruction``,
``step_count``, ``_success``, ``task_name``; and it implements :meth:`ee_pose`.
"""

from __future__ import annotations

import string
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from action_images.geometry import Camera, stack_cameras
from action_images.sim import cameras as simcam
from action_images.sim import rig as simrig

INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " .,'-"


def check_env_arguments(image_size: int | None, render_mode: str | None, rig: Any, rig_distribution: str | None
                        ) -> None:
    """The constructor arguments both environments refuse alike."""
    if image_size is not None and int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8; got {image_size}")
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be None or 'rgb_array'; got {render_mode!r}")
    if rig is not None and rig_distribution is not None:
        raise ValueError("pass either rig (a fixed calibrated rig) or rig_distribution (a new rig every reset)")


def observation_space(camera_names: Sequence[str], size: int, images: bool) -> spaces.Dict:
    """The observation: ``images`` (one ``[S, S, 3]`` uint8 frame per view; absent without rendering, since gymnasium
    forbids an empty Dict), the 8-D ``ee_pose``, the instruction and each view's calibration."""
    V = len(camera_names)
    obs_spaces: dict[str, spaces.Space] = {}
    if images:
        obs_spaces["images"] = spaces.Dict({c: spaces.Box(0, 255, (size, size, 3), np.uint8) for c in camera_names})
    return spaces.Dict({
        **obs_spaces,
        "ee_pose": spaces.Box(-np.inf, np.inf, (8,), np.float64),
        "instruction": spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
        "camera_K": spaces.Box(-np.inf, np.inf, (V, 3, 3), np.float64),
        "camera_T_cam_world": spaces.Box(-np.inf, np.inf, (V, 4, 4), np.float64),
    })


class CalibratedEnv(gym.Env):
    """Cameras, rig placement, rendering and observations of an environment; see the module docstring."""

    segmentation_groups: tuple[int, ...] = (0, 1, 2)   # the geom groups segmentation() draws by default

    def ee_pose(self) -> np.ndarray:  # pragma: no cover - implemented by each environment
        """The tool's current ``[x, y, z, qx, qy, qz, qw, g]``."""
        raise NotImplementedError

    # ---- cameras -----------------------------------------------------------------------------------------------------
    @property
    def cameras(self) -> list[Camera]:
        """Calibrated cameras for the current state, in the order of ``camera_names`` (hand cameras move)."""
        out = []
        for cid, name in zip(self._cam_ids, self.camera_names):
            cam = simcam.camera_from_mujoco(self.model, self.data, cid, self.image_size, self.image_size, name)
            if cid in self._exact_K:   # MuJoCo stores intrinsics as float32; export the rig's own K
                cam = Camera(self._exact_K[cid], cam.T_cam_world, cam.width, cam.height, name)
            out.append(cam)
        return out

    def _place_rig(self, cams: Sequence[Camera]) -> None:
        """Put rig camera i in place of the camera ``_slot_ids[i]`` (pose, fovy or intrinsics); the caller runs
        mj_forward (or a reset that does)."""
        self._exact_K = {}
        for cid, cam in zip(self._slot_ids, cams):
            simrig.place_camera(self.model, cid, cam)
            self._exact_K[cid] = cam.K
        self.rig = list(cams)

    def segmentation(self, camera: str, groups: tuple[int, ...] | None = None) -> np.ndarray:
        """``[H, W]`` geom ids seen by one camera (-1 = background), only geoms in ``groups`` drawn (default:
        ``segmentation_groups``)."""
        if self._renderer is None:
            raise RuntimeError("segmentation needs render=True and at least one camera")
        cid = self._view_ids[camera] if camera in self._view_ids else self.model.camera(camera).id
        return self._renderer.segmentation(self.data, cid, self.segmentation_groups if groups is None else groups)

    def observe(self) -> dict[str, Any]:
        """The observation of the current state without a step, its images rendered again (none with
        ``render=False`` or ``observe_images`` off; :meth:`render` then shows them too): for probes that edit the scene
        (move a body in ``model.body_pos``, then ``mujoco.mj_forward``) and ask what the policy would plan from it."""
        return self._obs()

    # ---- gymnasium API -----------------------------------------------------------------------------------------------
    def render(self):
        if not self._last_images:
            raise RuntimeError("render() needs render=True, at least one camera and a reset()")
        return np.concatenate([self._last_images[c] for c in self.camera_names], axis=1)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- internals ---------------------------------------------------------------------------------------------------
    def _obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if self._renderer is not None and self.observe_images:
            self._last_images = dict(zip(self.camera_names, self._renderer.render(self.data, self._cam_ids)))
            obs["images"] = self._last_images
        if self.camera_names:
            K, T = stack_cameras(self.cameras)
        else:
            K, T = np.zeros((0, 3, 3)), np.zeros((0, 4, 4))
        obs.update(ee_pose=self.ee_pose(), instruction=self.instruction, camera_K=K, camera_T_cam_world=T)
        return obs

    def _info(self) -> dict[str, Any]:
        return {"success": self._success, "is_success": self._success, "step": self.step_count,
                "task": self.task_name}
