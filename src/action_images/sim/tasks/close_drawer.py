"""close_drawer: push an open drawer shut by its handle bar."""

from __future__ import annotations

import numpy as np

from action_images.sim.tasks.base import CLOSED, Phase, down, reached
from action_images.sim.tasks.open_drawer import CLOSED_Q, HOOK_Z, DrawerTask


class CloseDrawer(DrawerTask):
    name = "close_drawer"
    templates = ("close the drawer", "push the drawer of the {color} cabinet shut", "close the {color} drawer")
    max_steps = 60

    def reset(self, env, rng):
        return self.template(rng, **self.place(rng, rng.uniform(0.09, 0.14)))

    def success(self, env) -> bool:
        return self.q() < CLOSED_Q

    def _front(self, z: float, dx: float = 0.0):
        b = self.bar()
        # on the robot side of the bar: jaw front face 1 cm clear of the bar before pushing
        return np.array([b[0] - 0.027 + dx, b[1], z]), down(0.0), CLOSED

    def phases(self):
        above = lambda env: self._front(0.15)                                          # noqa: E731
        low = lambda env: self._front(HOOK_Z)                                          # noqa: E731
        push = lambda env: self._front(HOOK_Z, 0.05)                                   # noqa: E731

        def lost(env) -> bool:
            p = env.arm.tcp_pos()
            return bool(p[2] > HOOK_Z + 0.02 or p[0] < self._front(HOOK_Z)[0][0] - 0.02)

        return [
            Phase("above", above, lambda env, n: reached(env, above(env), 0.01, 5.0)),
            Phase("descend", low, lambda env, n: reached(env, low(env), 0.006, 5.0), step_pos=0.03),
            Phase("push", push, lambda env, n: False, step_pos=0.03, abort=lost),
        ]
