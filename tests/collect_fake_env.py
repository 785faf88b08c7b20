"""A tiny deterministic stand-in for ``action_images.sim`` (same API) so collect tests run in milliseconds."""

from __future__ import annotations

import os
import signal

import numpy as np

from action_images.geometry import Camera, euler_to_quat

TASKS = ("reach_fake", "push_fake")
EYES = {"front": (1.0, 0.0, 0.8), "left": (0.0, 1.0, 0.8), "right": (0.0, -1.0, 0.8), "top": (0.05, 0.0, 1.5)}
KILL = {"after_steps": None}  # tests: SIGKILL this process after that many env.step calls in total
_steps = {"n": 0}


class FakeEnv:
    """Episodes of 3..8 steps; the seed decides the length, the instruction variant and success (~70 %)."""

    fps = 10
    max_steps = 8

    def __init__(self, task: str, cameras=("front",), image_size: int = 16, perturb_cameras: bool = False,
                 camera_seed=None, render: bool = True):
        self.task, self.names, self.size, self.perturb = task, tuple(cameras), int(image_size), perturb_cameras
        self._cams = self._make_cams(None)

    def _make_cams(self, rng):
        cams = []
        for n in self.names:
            eye = np.asarray(EYES[n]) + (rng.uniform(-0.03, 0.03, 3) if rng is not None else 0.0)
            cams.append(Camera.look_at(eye, (0, 0, 0.1), 50, self.size, self.size, name=n))
        return cams

    @property
    def cameras(self):
        return list(self._cams)

    def reset(self, seed=None):
        rng = np.random.default_rng(seed)
        if self.perturb:
            self._cams = self._make_cams(rng)
        self.length = int(rng.integers(3, 9))
        self.will_succeed = bool(rng.uniform() < 0.7)
        self.t = 0
        self.pos = rng.uniform(-0.2, 0.2, 3)
        self.quat = euler_to_quat(rng.uniform(-1, 1, 3))
        self.instruction = f"{self.task.replace('_fake', '')} the thing"
        return self._obs(), {"success": False}

    def _obs(self):
        imgs = {}
        for i, n in enumerate(self.names):
            img = np.full((self.size, self.size, 3), 40 + 20 * i, np.uint8)
            r = (self.t * 2) % self.size
            img[r:r + 3, r:r + 3] = (200, 50, 50)
            imgs[n] = img
        g = 1.0 if self.t < 2 else 0.0
        return {"images": imgs, "ee_pose": np.concatenate([self.pos, self.quat, [g]]), "instruction": self.instruction}

    def expert_action(self):
        return np.concatenate([self.pos + 0.01, self.quat, [0.5]])

    def step(self, a):
        self.t += 1
        self.pos = np.asarray(a[:3]).copy()
        _steps["n"] += 1
        if KILL["after_steps"] is not None and _steps["n"] >= KILL["after_steps"]:
            os.kill(os.getpid(), signal.SIGKILL)
        done = self.t >= self.length
        success = done and self.will_succeed
        return self._obs(), float(success), success, done and not success, {"success": success}

    def close(self):
        pass


def make_env(task, cameras=("front",), image_size=16, perturb_cameras=False, camera_seed=None, render=True):
    if task not in TASKS:
        raise ValueError(task)
    return FakeEnv(task, cameras, image_size, perturb_cameras, camera_seed, render)
