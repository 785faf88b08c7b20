"""open_drawer: hook the closed gripper behind a drawer's handle bar and pull the drawer out.

The cabinet (shared with close_drawer) opens toward the robot (-x); the drawer slides on joint ``drawer``
(q = how far it is out, metres).
"""

from __future__ import annotations

import numpy as np

from action_images.sim.tasks.base import CLOSED, Phase, Task, down, reached

HX, HY, HZ = 0.09, 0.12, 0.05     # cabinet outer half sizes; it stands on the table, front face at x = -HX
TRAVEL = 0.15                     # drawer travel
T = 0.005                         # wall half thickness
BAR_X = -HX - 2 * T - 0.04        # handle bar axis, in cabinet coordinates when closed (drawer front 1 cm thick)
BAR_Z = 0.05
HOOK_Z = 0.045                    # TCP height while hooking / pushing (palm stays above the cabinet top)
OPEN_Q = 0.10                     # open_drawer succeeds beyond this
CLOSED_Q = 0.015                  # close_drawer succeeds below this


def cabinet_xml() -> str:
    t = T
    body = 'rgba="0.6 0.45 0.3 1"'
    walls = [("cab_top", (0, 0, 2 * HZ - t), (HX, HY, t)), ("cab_bottom", (0, 0, t), (HX, HY, t)),
             ("cab_left", (0, HY - t, HZ), (HX, t, HZ)), ("cab_right", (0, -HY + t, HZ), (HX, t, HZ)),
             ("cab_back", (HX - t, 0, HZ), (t, HY, HZ))]
    geoms = "".join(f'<geom name="{n}" type="box" pos="{p[0]} {p[1]} {p[2]}" size="{s[0]} {s[1]} {s[2]}" {body}/>'
                    for n, p, s in walls)
    iy, iz = HY - 2 * t - 0.003, HZ - 2 * t - 0.003     # drawer box inside the carcass
    d = 'rgba="0.8 0.7 0.5 1"'
    sx, hx = (BAR_X - HX - 2 * t) / 2, (-HX - 2 * t - BAR_X) / 2   # handle standoffs: bar to drawer front
    drawer = (
        f'<geom name="drawer_front" type="box" pos="{-HX - t} 0 {HZ}" size="{t} {HY} {HZ - 0.002}" {d}/>'
        f'<geom name="drawer_bottom" type="box" pos="{-t} 0 {2 * t + 0.004}" size="{HX - 3 * t} {iy} 0.003" {d}/>'
        f'<geom name="drawer_back" type="box" pos="{HX - 3 * t} 0 {HZ - 0.01}" size="0.003 {iy} {iz - 0.01}" {d}/>'
        f'<geom name="handle_bar" type="capsule" fromto="{BAR_X} -0.05 {BAR_Z} {BAR_X} 0.05 {BAR_Z}" size="0.007" '
        f'rgba="0.2 0.2 0.2 1"/>'
        + "".join(f'<geom name="handle_{s}" type="box" pos="{sx} {y} {BAR_Z}" size="{hx} 0.004 0.004" '
                  f'rgba="0.2 0.2 0.2 1"/>' for s, y in (("l", 0.045), ("r", -0.045))))
    return (f'<body name="cabinet" pos="0.15 0 0">{geoms}'
            f'<body name="drawer"><joint name="drawer" type="slide" axis="-1 0 0" range="0 {TRAVEL}" damping="3" '
            f'frictionloss="0.2"/>{drawer}</body></body>')


class DrawerTask(Task):
    """Shared cabinet placement and handle geometry."""

    def worldbody_xml(self) -> str:
        return cabinet_xml()

    def extra_xml(self) -> str:
        # the slide joint keeps the drawer in its carcass; contacts between them would only add jitter
        return '<contact><exclude body1="cabinet" body2="drawer"/></contact>'

    def place(self, rng, q0: float) -> dict[str, str]:
        xy = (rng.uniform(0.12, 0.2), rng.uniform(-0.15, 0.15))
        self.model.body_pos[self.model.body("cabinet").id, :2] = xy
        self.data.qpos[self.model.jnt_qposadr[self.model.joint("drawer").id]] = q0
        cab = self.color(("cab_top", "cab_bottom", "cab_left", "cab_right", "cab_back"), rng)
        self.color(("drawer_front", "drawer_bottom", "drawer_back"), rng, exclude=(cab,))
        return {"color": cab}

    def q(self) -> float:
        return self.joint_q("drawer")

    def bar(self) -> np.ndarray:
        """Handle bar centre in the world (moves with the drawer)."""
        return self.body_pos("drawer") + np.array([BAR_X, 0.0, BAR_Z])


class OpenDrawer(DrawerTask):
    name = "open_drawer"
    templates = ("open the drawer", "pull the drawer of the {color} cabinet open", "open the {color} drawer")
    max_steps = 60

    def reset(self, env, rng):
        return self.template(rng, **self.place(rng, 0.0))

    def success(self, env) -> bool:
        return self.q() > OPEN_Q

    def _hook(self, z: float, dx: float = 0.0):
        b = self.bar()
        # between the bar (radius 7 mm) and the drawer front: the jaw is 2 cm deep along x at yaw 0
        return np.array([b[0] + 0.0165 + dx, b[1], z]), down(0.0), CLOSED

    def phases(self):
        above = lambda env: self._hook(0.15)                                           # noqa: E731
        low = lambda env: self._hook(HOOK_Z)                                           # noqa: E731
        pull = lambda env: self._hook(HOOK_Z, -0.05)                                   # noqa: E731

        def unhooked(env) -> bool:
            p = env.arm.tcp_pos()
            return bool(p[2] > HOOK_Z + 0.02 or abs(p[0] - self._hook(HOOK_Z)[0][0]) > 0.02)

        return [
            Phase("above", above, lambda env, n: reached(env, above(env), 0.01, 5.0)),
            Phase("descend", low, lambda env, n: reached(env, low(env), 0.006, 5.0), step_pos=0.03),
            Phase("pull", pull, lambda env, n: False, step_pos=0.03, abort=unhooked),
        ]
