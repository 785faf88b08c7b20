"""press_button: press a spring-loaded button down with the closed gripper."""

from __future__ import annotations

import numpy as np

from action_images.sim.tasks.base import CLOSED, Phase, Task, down, reached, sample_xy

BASE_H, CAP_R, CAP_H, TRAVEL = 0.015, 0.022, 0.012, 0.014   # half heights / radius / travel (m)
PRESSED = 0.008                                              # success: cap pushed down this far


class PressButton(Task):
    name = "press_button"
    templates = ("press the {color} button", "push the {color} button down", "hit the {color} button")
    max_steps = 40

    def worldbody_xml(self) -> str:
        return (f'<body name="button" pos="0 0 0"><geom name="button_base" type="box" pos="0 0 {BASE_H}" '
                f'size="0.045 0.045 {BASE_H}" rgba="0.3 0.3 0.3 1"/>'
                f'<body name="cap" pos="0 0 {2 * BASE_H + CAP_H}"><joint name="cap" type="slide" axis="0 0 1" '
                f'range="{-TRAVEL} 0" stiffness="150" damping="2"/>'
                f'<geom name="cap" type="cylinder" size="{CAP_R} {CAP_H}" rgba="1 0 0 1"/></body></body>')

    def reset(self, env, rng):
        xy = sample_xy(rng, (-0.12, -0.2), (0.18, 0.2))
        self.model.body_pos[self.model.body("button").id, :2] = xy
        return self.template(rng, color=self.color("cap", rng))

    def success(self, env) -> bool:
        return self.joint_q("cap") < -PRESSED

    def phases(self):
        def over(z):
            def goal(env):
                b = self.body_pos("button")
                return np.array([b[0], b[1], z]), down(0.0), CLOSED
            return goal

        # fingertips are 1 cm below the TCP; aim 4 mm past full travel so the press bottoms out
        top = 2 * BASE_H + 2 * CAP_H
        above, press = over(top + 0.08), over(top + 0.01 - TRAVEL - 0.004)
        return [
            Phase("above", above, lambda env, n: reached(env, above(env), 0.01, 5.0)),
            Phase("press", press, lambda env, n: False, step_pos=0.03),
        ]
