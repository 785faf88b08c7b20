"""reach_target: move the tool centre point onto a floating coloured ball (no contact, pure 3D positioning)."""

from __future__ import annotations

import numpy as np

from action_images.sim.tasks.base import OPEN, Phase, Task, down, reached

TOL = 0.03  # success radius (m)


class ReachTarget(Task):
    name = "reach_target"
    templates = ("reach the {color} ball", "move the gripper to the {color} sphere", "touch the {color} target")
    max_steps = 40

    def worldbody_xml(self) -> str:
        return ('<body name="goal" pos="0 0 0.1"><geom name="goal" type="sphere" size="0.02" contype="0" '
                'conaffinity="0" rgba="1 0 0 1"/></body>')

    def reset(self, env, rng):
        pos = np.array([rng.uniform(-0.15, 0.2), rng.uniform(-0.22, 0.22), rng.uniform(0.04, 0.28)])
        self.model.body_pos[self.model.body("goal").id] = pos
        self.yaw = float(rng.uniform(-np.pi / 3, np.pi / 3))
        return self.template(rng, color=self.color("goal", rng))

    def goal_pos(self) -> np.ndarray:
        return self.body_pos("goal")

    def success(self, env) -> bool:
        return bool(np.linalg.norm(env.arm.tcp_pos() - self.goal_pos()) < TOL)

    def phases(self):
        goal = lambda env: (self.goal_pos(), down(self.yaw), OPEN)  # noqa: E731
        return [Phase("reach", goal, lambda env, n: reached(env, goal(env), 0.005))]
