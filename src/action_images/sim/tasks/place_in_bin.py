"""place_in_bin: pick a cube (random yaw) and drop it into an open box."""

from __future__ import annotations

import numpy as np

from action_images.sim.tasks.base import CLOSED, OPEN, Phase, Task, reached, sample_xy
from action_images.sim.tasks.pick_cube import cube_xml, dropped, grasp_phases

INNER, WALL, HEIGHT = 0.065, 0.006, 0.05   # bin inner half-width, wall half-thickness, wall height
BIN_XY_LOW, BIN_XY_HIGH = (-0.08, -0.18), (0.16, 0.18)   # the table region (x, y) where reset places the bin


def bin_xml() -> str:
    o = INNER + WALL
    walls = "".join(
        f'<geom name="bin_wall{i}" type="box" pos="{x} {y} {HEIGHT / 2}" size="{sx} {sy} {HEIGHT / 2}" '
        f'rgba="0.5 0.5 0.5 1"/>'
        for i, (x, y, sx, sy) in enumerate([(o, 0, WALL, o + WALL), (-o, 0, WALL, o + WALL),
                                            (0, o, o + WALL, WALL), (0, -o, o + WALL, WALL)]))
    return (f'<body name="bin" pos="0 0 0"><geom name="bin_floor" type="box" pos="0 0 0.003" size="{o} {o} 0.003" '
            f'rgba="0.5 0.5 0.5 1"/>{walls}</body>')


class PlaceInBin(Task):
    name = "place_in_bin"
    templates = ("put the {color} cube in the {bin} bin", "place the {color} block into the {bin} box",
                 "drop the {color} cube into the {bin} container")
    max_steps = 80

    def worldbody_xml(self) -> str:
        return cube_xml("cube") + bin_xml()

    def reset(self, env, rng):
        bin_xy = sample_xy(rng, BIN_XY_LOW, BIN_XY_HIGH)
        cube = sample_xy(rng, (-0.12, -0.2), (0.18, 0.2), avoid=[bin_xy], min_dist=0.17)
        self.model.body_pos[self.model.body("bin").id, :2] = bin_xy
        self.half = float(self.model.geom_size[self.model.geom("cube").id][2])
        self.set_free_body("cube", [cube[0], cube[1], self.half], rng.uniform(-np.pi / 4, np.pi / 4))
        color = self.color("cube", rng)
        bin_color = self.color(("bin_floor",) + tuple(f"bin_wall{i}" for i in range(4)), rng, exclude=(color,))
        return self.template(rng, color=color, bin=bin_color)

    def in_bin(self) -> bool:
        rel = self.body_pos("cube") - self.body_pos("bin")
        return bool(np.all(np.abs(rel[:2]) < INNER - self.half + 0.01) and rel[2] < HEIGHT)

    def success(self, env) -> bool:
        return self.in_bin() and env.arm.opening() > 0.7

    def phases(self):
        grasp = grasp_phases(self, "cube", lift_z=0.15)
        held = lambda env: dropped(self, "cube")                                       # noqa: E731

        def over(z, g):
            def goal(env):
                b = self.body_pos("bin")
                return np.array([b[0], b[1], z]), env.arm.tcp_quat(), g
            return goal

        carry, lower, release = over(0.15, CLOSED), over(0.1, CLOSED), over(0.1, OPEN)
        return grasp + [
            Phase("carry", carry, lambda env, n: reached(env, carry(env), 0.015, 90.0), abort=held),
            Phase("lower", lower, lambda env, n: reached(env, lower(env), 0.01, 90.0), abort=held),
            Phase("release", release, lambda env, n: False),
        ]
