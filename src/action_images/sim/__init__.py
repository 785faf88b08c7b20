"""Built-in MuJoCo tabletop benchmark: a 7-joint arm with a parallel gripper, absolute 7-DoF + gripper targets,
calibrated static cameras and eight tasks with scripted experts (docs/benchmark.md).

    from action_images.sim import make_env, TASKS
    env = make_env("pick_cube", cameras=CAMERA_SETS["all_static"], image_size=64)
    env = make_env("pick_cube", rig="data/pick_cube/meta/cameras.json")      # a calibrated rig
    env = make_env("pick_cube", rig_distribution="train", rig_views=4)      # a random rig every reset
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.expert_action())
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Sequence

if sys.platform.startswith("linux"):  # headless offscreen rendering; must precede `import mujoco`
    os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from action_images.sim.env import FPS, SimEnv  # noqa: E402
from action_images.sim.rig import (RIG_DISTRIBUTION, RIG_SLOTS, RigDistribution, RigError, load_rig,  # noqa: E402
                                   random_rig, save_rig, validate_rig)
from action_images.sim.scene import CAMERA_NAMES, CAMERA_SETS  # noqa: E402
from action_images.sim.tasks import TASKS  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from action_images.geometry import Camera

DEFAULT_CAMERAS = CAMERA_SETS["all_static"]
GYM_IDS = {t: "ActionImages/" + "".join(w.capitalize() for w in t.split("_")) + "-v0" for t in TASKS}


def make_env(task: str, cameras: Sequence[str] | None = None, image_size: int | None = None,
             perturb_cameras: bool = False, camera_seed: int | None = None, render: bool = True,
             render_mode: str | None = None, rig: "str | Path | Sequence[Camera] | None" = None,
             rig_distribution: str | None = None, rig_views: int = 4, start_jitter: float = 0.0) -> SimEnv:
    """Create a task environment.

    ``cameras``: names from ``CAMERA_NAMES`` (static front/left/right/top, plus "wrist" on the hand; default
    ``CAMERA_SETS["all_static"]``), images are ``image_size`` square (default 64). ``perturb_cameras``: jitter the
    camera poses (cameras.PERTURB_POS / PERTURB_ROT); with ``camera_seed`` the jitter is fixed for the env's lifetime,
    without it a new jitter is drawn at every reset from the episode seed. ``render=False`` skips rendering (fast):
    the observation then has no "images" key (gymnasium forbids an empty Dict space); calibration is still reported.

    ``rig``: a calibrated rig (a ``meta/cameras.json``-format file or a list of ``geometry.Camera``, at most
    ``RIG_SLOTS``) replacing the static cameras: the views are the rig's cameras, under their own names, and the
    exported calibration is the rig's (``image_size`` defaults to the rig's; a different one is an error).
    ``rig_distribution``: "train" or "heldout": every reset places ``random_rig(seed, rig_views, image_size, split)``
    with the reset's seed (without a seed, one drawn from the env's generator; ``env.rig_seed`` tells which); views are
    named "rig0".."rig{n-1}". With either, ``cameras`` may select and order the rig's views and add "wrist".
    ``start_jitter`` (metres, at most ``scene.MAX_START_JITTER``): every reset starts the hand at a random offset
    from the home position (uniform in ±start_jitter along x and y, half that along z), drawn from a stream keyed by
    the reset's seed alone (without a seed, a child of the env's generator); the rest of the scene is as without it;
    0 (default): the home position.
    """
    return SimEnv(task, cameras=cameras, image_size=image_size, perturb_cameras=perturb_cameras,
                  camera_seed=camera_seed, render=render, render_mode=render_mode, rig=rig,
                  rig_distribution=rig_distribution, rig_views=rig_views, start_jitter=start_jitter)


def _register() -> None:
    for task, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point="action_images.sim.env:SimEnv", kwargs={"task": task},
                         disable_env_checker=False)


_register()

__all__ = ["make_env", "TASKS", "SimEnv", "FPS", "CAMERA_NAMES", "CAMERA_SETS", "DEFAULT_CAMERAS", "GYM_IDS",
           "RIG_SLOTS", "RIG_DISTRIBUTION", "RigDistribution", "RigError", "load_rig", "save_rig", "validate_rig",
           "random_rig"]
