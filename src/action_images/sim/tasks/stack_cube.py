"""stack_cube: pick the small cube (random yaw) and set it on the big one, turning it to match the big one's yaw.

``StackCube.sizes`` (``collect --stack-sizes``): "fixed" (the task: a 4 cm cube onto a 5.2 cm one, so the cube to
move is also the smaller) or "equal" (the cube to move at the base's size, so only the instruction's colours say
which cube goes on which).
"""

from __future__ import annotations

import numpy as np

from action_images.sim.robot import wrap_yaw_90
from action_images.sim.tasks.base import CLOSED, OPEN, Phase, Task, down, reached, sample_xy
from action_images.sim.tasks.pick_cube import cube_xml, dropped, grasp_phases

TOP_HALF, BASE_HALF = 0.02, 0.026
SIZES = ("fixed", "equal")
BASE_XY_LOW, BASE_XY_HIGH = (-0.1, -0.18), (0.16, 0.18)   # the table region (x, y) where reset places the base
XY_TOL, Z_TOL = 0.02, 0.01


def resize_box(model, geom: str, half: float) -> None:
    """Give the cube geom ``geom`` the half side ``half``, with the bounding sphere and box the collision broad phase
    reads (the body's mass and inertia stay as compiled)."""
    g = model.geom(geom).id
    model.geom_size[g] = half
    model.geom_rbound[g] = half * np.sqrt(3.0)
    model.geom_aabb[g, 3:] = half


class StackCube(Task):
    name = "stack_cube"
    templates = ("stack the {top} cube on the {base} cube", "put the {top} block on top of the {base} block",
                 "place the {top} cube onto the {base} one")
    max_steps = 80
    sizes = "fixed"         # module docstring; the half side of the cube to move follows it at each reset
    top_half = TOP_HALF

    def worldbody_xml(self) -> str:
        return cube_xml("small", half=TOP_HALF, mass=0.04) + cube_xml("big", half=BASE_HALF, mass=0.2)

    def reset(self, env, rng):
        if self.sizes not in SIZES:
            raise ValueError(f"stack_cube sizes must be one of {SIZES}; got {self.sizes!r}")
        self.top_half = BASE_HALF if self.sizes == "equal" else TOP_HALF
        resize_box(self.model, "small", self.top_half)
        base = sample_xy(rng, BASE_XY_LOW, BASE_XY_HIGH)
        top = sample_xy(rng, (-0.12, -0.2), (0.18, 0.2), avoid=[base], min_dist=0.12)
        self.set_free_body("big", [base[0], base[1], BASE_HALF], rng.uniform(-np.pi / 4, np.pi / 4))
        self.set_free_body("small", [top[0], top[1], self.top_half], rng.uniform(-np.pi / 4, np.pi / 4))
        top_color = self.color("small", rng)
        return self.template(rng, top=top_color, base=self.color("big", rng, exclude=(top_color,)))

    def stacked(self) -> bool:
        rel = self.body_pos("small") - self.body_pos("big")
        return bool(np.linalg.norm(rel[:2]) < XY_TOL and abs(rel[2] - self.top_half - BASE_HALF) < Z_TOL)

    def success(self, env) -> bool:
        return self.stacked() and env.arm.opening() > 0.7

    def phases(self):
        grasp = grasp_phases(self, "small", lift_z=0.15)
        held = lambda env: dropped(self, "small")                                        # noqa: E731

        def over(dz, g):
            def goal(env):
                b = self.body_pos("big")
                return np.array([b[0], b[1], b[2] + dz]), down(wrap_yaw_90(self.body_yaw("big"))), g
            return goal

        place_dz = BASE_HALF + self.top_half + 0.006
        carry, lower, release = over(0.12, CLOSED), over(place_dz, CLOSED), over(place_dz, OPEN)
        retreat = over(0.12, OPEN)
        return grasp + [
            Phase("carry", carry, lambda env, n: reached(env, carry(env), 0.012, 4.0), abort=held),
            Phase("lower", lower, lambda env, n: reached(env, lower(env), 0.005, 4.0), abort=held, step_pos=0.025),
            Phase("release", release, lambda env, n: n >= 2),
            Phase("retreat", retreat, lambda env, n: False),
        ]
