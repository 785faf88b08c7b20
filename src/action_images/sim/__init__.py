"""Built-in MuJoCo tabletop benchmark: a 7-joint arm with a parallel gripper, absolute 7-DoF + gripper targets,
calibrated static cameras and eight tasks with scripted experts (docs/benchmark.md).

    from action_images.sim import make_env, TASKS
    env = make_env("pick_cube", cameras=("front", "left", "right", "top"), image_size=64)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.expert_action())
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

if sys.platform.startswith("linux"):  # headless offscreen rendering (design §5); must precede `import mujoco`
    os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from action_images.sim.env import FPS, SimEnv  # noqa: E402
from action_images.sim.scene import CAMERA_NAMES  # noqa: E402
from action_images.sim.tasks import TASKS  # noqa: E402

DEFAULT_CAMERAS = ("front", "left", "right", "top")
GYM_IDS = {t: "ActionImages/" + "".join(w.capitalize() for w in t.split("_")) + "-v0" for t in TASKS}


def make_env(task: str, cameras: Sequence[str] = DEFAULT_CAMERAS, image_size: int = 64,
             perturb_cameras: bool = False, camera_seed: int | None = None, render: bool = True,
             render_mode: str | None = None) -> SimEnv:
    """Create a task environment.

    ``cameras``: names from ``CAMERA_NAMES`` (static front/left/right/top, plus "wrist" on the hand), images are
    ``image_size`` square. ``perturb_cameras``: jitter the camera poses (cameras.PERTURB_POS / PERTURB_ROT); with
    ``camera_seed`` the jitter is fixed for the env's lifetime, without it a new jitter is drawn at every reset from
    the episode seed. ``render=False`` skips rendering (fast): the observation then has no "images" key (gymnasium forbids an empty
    Dict space); calibration is still reported.
    """
    return SimEnv(task, cameras=cameras, image_size=image_size, perturb_cameras=perturb_cameras,
                  camera_seed=camera_seed, render=render, render_mode=render_mode)


def _register() -> None:
    for task, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point="action_images.sim.env:SimEnv", kwargs={"task": task},
                         disable_env_checker=False)


_register()

__all__ = ["make_env", "TASKS", "SimEnv", "FPS", "CAMERA_NAMES", "DEFAULT_CAMERAS", "GYM_IDS"]
