"""pick_cube: grasp a cube with a random yaw (the gripper must rotate to match it) and lift it 8 cm."""

from __future__ import annotations

import numpy as np

from action_images.sim.robot import wrap_yaw_90
from action_images.sim.tasks.base import CLOSED, OPEN, Phase, Task, down, reached, sample_xy

LIFT = 0.08        # success: cube centre this far above its resting height
CUBE_XY_LOW, CUBE_XY_HIGH = (-0.12, -0.2), (0.18, 0.2)


def cube_xml(name: str, half: float = 0.022, mass: float = 0.05) -> str:
    return (f'<body name="{name}" pos="0 0 {half}"><freejoint name="{name}"/>'
            f'<geom name="{name}" type="box" size="{half} {half} {half}" mass="{mass}" friction="1.2 0.01 0.0002" '
            f'condim="4" rgba="1 0 0 1"/></body>')


def grasp_phases(task: Task, cube: str, lift_z: float = 0.15) -> list[Phase]:
    """Above the cube (yaw-aligned) -> down -> close -> lift: shared by pick, place and stack (push_cube's grip
    takes the first three). A planted miss (``Task.grasp_miss``) displaces the approach and the close."""

    def spot():
        """(cube centre, jaw yaw, grasp xy): the xy moved by the planted miss, if any."""
        p, yaw = task.body_pos(cube), wrap_yaw_90(task.body_yaw(cube))
        return p, yaw, p[:2] + task.grasp_miss_xy(yaw)

    def above(env):
        p, yaw, xy = spot()
        return np.array([xy[0], xy[1], max(p[2] + 0.1, 0.12)]), down(yaw), OPEN

    def at(env):
        p, yaw, xy = spot()
        return np.array([xy[0], xy[1], p[2]]), down(yaw), OPEN

    def close(env):
        pos, quat, _ = at(env)
        return pos, quat, CLOSED

    def lift(env):
        pos, quat, _ = at(env)
        return np.array([pos[0], pos[1], lift_z]), quat, CLOSED

    return [
        Phase("above", above, lambda env, n: reached(env, above(env), 0.012, 5.0)),
        Phase("descend", at, lambda env, n: reached(env, at(env), 0.006, 5.0), step_pos=0.03),
        Phase("close", close, lambda env, n: n >= 3 + task.grasp_wait),
        Phase("lift", lift, lambda env, n: reached(env, lift(env), 0.015, 8.0), abort=lambda env: dropped(task, cube)),
    ]


def dropped(task: Task, cube: str) -> bool:
    """The cube is no longer between the fingers (it slipped or was never caught)."""
    return bool(np.linalg.norm(task.body_pos(cube) - task.data.site_xpos[task.model.site("tcp").id]) > 0.03)


class PickCube(Task):
    name = "pick_cube"
    templates = ("pick up the {color} cube", "lift the {color} block", "grasp the {color} cube and raise it")
    max_steps = 60

    def worldbody_xml(self) -> str:
        return cube_xml("cube")

    def reset(self, env, rng):
        xy = sample_xy(rng, CUBE_XY_LOW, CUBE_XY_HIGH)
        self.half = float(self.model.geom_size[self.model.geom("cube").id][2])
        self.set_free_body("cube", [xy[0], xy[1], self.half], rng.uniform(-np.pi / 4, np.pi / 4))
        return self.template(rng, color=self.color("cube", rng))

    def success(self, env) -> bool:
        return bool(self.body_pos("cube")[2] > self.half + LIFT)

    def phases(self):
        phases = grasp_phases(self, "cube", lift_z=0.2)
        phases[-1].done = lambda env, n: False
        return phases
