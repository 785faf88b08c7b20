"""push_cube: push a cube across the table onto a flat goal marker (non-prehensile, needs closed-loop re-aiming).

The expert moves the cube in one of eight styles (``PushCube.style``; ``collect --push-style``), seven of them pushes:

- ``"jaw"`` (the default; a dataset whose ``meta/collect.json`` names no ``push_style`` used it): top-down, the
  half-open jaw's two fingertips against the cube's back face. The contact is as wide as the cube, so a hand
  2.5 cm off the push line pushes the cube's edge, turns it and loses it.
- ``"jaw_back"``: the jaw, but the hand comes down 10 cm behind the cube's centre instead of 5.5 and slides in
  at push height, so a hand that comes down a few centimetres too close still lands behind the cube.
- ``"jaw_high"``: the jaw, but the hand travels to its landing 18 cm above the table instead of 10 cm (after an
  abort it first rises straight up to 18 cm), then comes straight down. A plan that lags the demos starts down
  before it is above the landing point, so from a start on the mark's side its path crosses the cube on the way
  down; starting down from 18 cm, it crosses higher (the cube's top is 5 cm above the table).
- ``"palm"``: the hand turned horizontal, its approach axis pointing back along the push and tool +x up, so the
  palm (13 cm wide, 5 cm tall) leads and pushes with its flat face while the open fingers trail. With every target
  3.5 cm off the push line it succeeds 39-40 times in 40, where the jaw fails every time (``bench/push_styles.py``).
- ``"cage"``: the jaw fully open (8 cm between the fingers), its closing axis along the push, comes down around the
  cube itself, the way a grasp does, and slides it along the table with the finger behind it; the finger ahead keeps
  the cube from turning away. Nothing squeezes the cube: at the mark the hand rises and leaves it there. The place
  where the hand comes down is the cube, a point the policy sees, not a point on the bare table behind it.
- ``"cage_wait"``: the cage, holding still for ``CAGE_WAIT`` steps once it is down around the cube before it slides
  it, so that the demos' keyframes around the landing sit at the landing: plans trained on the cage run about 4 cm
  ahead of its demos along the push (``bench/push_first_plan.py``); trained on cage_wait, 2.5 cm.
- ``"cage_slow"``: the cage, but while it pushes each target lies only ``CAGE_SLOW_ADVANCE`` past where the back
  finger meets the cube (the cage's lies 3 cm past it), so the cube moves about a centimetre per step and the push's
  targets lie 2.5 cm ahead of the cube's centre, not 4.5. It asks whether the plans' lead along the push follows the
  pushing targets (it does not: docs/probes.md, push-targets). It forgives less across the push than the cage
  (``bench/push_styles.py``).
- ``"grip"``: not a push. The jaw comes down on the cube the way pick_cube's grasp does, closes on it, slides it
  along the table to the mark with its bottom ``GRIP_LIFT`` above the table, opens and rises. The task's success
  check is the same (the cube on the table at the mark) and is met while the jaw still holds the cube, so the
  release and the rise lie in a demo's hold steps (``collect --hold-steps``, 10 in the probe). It changes two things
  at once: where the hand comes down (the cube, as pick_cube's grasp does, not a place on the bare table set by the
  cube and the mark together) and the contact (held, so the cube cannot slip or turn away from the push line). It
  takes no aiming offset and no planted missed grasp.
"""

from __future__ import annotations

import numpy as np

from action_images.geometry import matrix_to_quat
from action_images.sim.tasks.base import CLOSED, OPEN, Phase, Task, down, reached, sample_xy
from action_images.sim.tasks.pick_cube import cube_xml, dropped, grasp_phases

TOL = 0.035             # success: cube centre within this xy distance of the goal
REST_TOL = 0.02         # ... and within this height of resting on the table (a cube tipped on an edge: 1 cm up)
PUSH_G = 0.35           # half-open jaw: two finger tips touch the cube face, so it does not spin
PUSH_Z = 0.03           # TCP height while pushing (finger pads span 2-9 cm above the table)
STANDOFF = 0.045        # TCP distance behind the cube centre before contact
GOAL_LOW, GOAL_HIGH = (-0.15, -0.22), (0.2, 0.22)   # the table region (x, y) where reset places the mark
STYLES = ("jaw", "jaw_back", "jaw_high", "palm", "cage", "cage_wait", "cage_slow", "grip")
JAW_BACK_STANDOFF = 0.09   # jaw_back style: STANDOFF's counterpart where the hand comes down (plus the same 1 cm)
JAW_HIGH_Z = 0.18       # jaw_high style: TCP height of the approach above the landing point (and of the rise)
PALM_FRONT = 0.09       # palm style: the palm's front face ahead of the TCP (palm centre 7.5 cm + half its 3 cm)
PALM_STANDOFF = PALM_FRONT + 0.035   # TCP distance behind the cube centre before contact (a turned cube's corner)
PALM_Z = 0.03           # TCP height while pushing with the palm: its 5 cm face spans 0.5-5.5 cm above the table
PALM_ABOVE_Z = 0.12     # TCP height of the approach above the push line (the horizontal hand clears the cube)
PALM_OFF_LINE = 0.05    # lateral offset (m) at which the palm's push re-approaches; the face is 13 cm wide
CAGE_LEAD = 0.015       # cage style: the TCP this far ahead of the cube's centre while pushing (back finger on it)
CAGE_DONE = 0.01        # cage style: the cube this close to the goal's centre ends the push; the hand rises
CAGE_OFF = 0.03         # cage style: the TCP this far from the cube's centre across or along the push: re-approach
CAGE_WAIT = 4           # cage_wait style: control steps the hand holds still around the cube before it pushes
CAGE_ADVANCE = 0.03     # cage style: push targets this far past CAGE_LEAD ahead of the cube's centre
CAGE_SLOW_ADVANCE = 0.01   # cage_slow style: the same, so the push targets lie 2.5 cm ahead of the centre
GRIP_LIFT = 0.002       # grip style: the held cube's bottom this far above the table while it slides (no drag)


def push_line_frame(rel_xy: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(along, across) of offsets ``rel_xy`` [..., 2] from the cube in the frame of the unit push direction ``d``
    (cube -> goal): along > 0 toward the goal, across > 0 to the left of it. The expert's re-approach test and the
    push probes (bench/push_hand_geometry.py, bench/push_first_plan.py) share it."""
    rel = np.asarray(rel_xy, dtype=float)
    return rel @ d, rel[..., 1] * d[0] - rel[..., 0] * d[1]


def rise_from_hand(env, z: float, g: float):
    """Straight up from where the hand is to height ``z``, its orientation kept: after an abort or a release the
    hand never sweeps across the cube."""
    p = env.arm.tcp_pos()
    return np.array([p[0], p[1], z]), env.arm.tcp_quat(), g


def palm_quat(d: np.ndarray) -> np.ndarray:
    """Scalar-last quaternion of the palm push: tool +z (approach) = -d in the table plane, tool +x = world up."""
    z = np.array([-d[0], -d[1], 0.0]) / max(float(np.hypot(d[0], d[1])), 1e-9)
    x = np.array([0.0, 0.0, 1.0])
    return matrix_to_quat(np.stack([x, np.cross(z, x), z], axis=1))


class PushCube(Task):
    name = "push_cube"
    templates = ("push the {color} cube onto the {goal} mark", "slide the {color} block to the {goal} target",
                 "move the {color} cube onto the {goal} circle by pushing it")
    max_steps = 80
    style = "jaw"           # the expert's push (module docstring); the task itself does not depend on it
    # A planted aiming error (metres): every target the expert commands moves this far across the push line (to its
    # left) and along it (toward the goal), the way a policy's plans are off; for probes of what a style forgives.
    aim_offset: tuple[float, float] = (0.0, 0.0)

    def worldbody_xml(self) -> str:
        return (cube_xml("cube", half=0.025, mass=0.08) +
                '<body name="goal" pos="0 0 0.0005"><geom name="goal" type="cylinder" size="0.04 0.0005" '
                'contype="0" conaffinity="0" rgba="0 1 0 1"/></body>')

    def reset(self, env, rng):
        cube = sample_xy(rng, (-0.1, -0.15), (0.15, 0.15))
        for _ in range(200):
            ang, dist = rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 0.18)
            goal = cube + dist * np.array([np.cos(ang), np.sin(ang)])
            # keep the goal on the table region the arm reaches, and the hand's approach side reachable
            behind = cube - (STANDOFF + 0.02) * (goal - cube) / dist
            if (np.all(goal >= GOAL_LOW) and np.all(goal <= GOAL_HIGH)
                    and np.all(behind >= (-0.22, -0.3)) and np.all(behind <= (0.28, 0.3))):
                break
        self.half = 0.025
        self.set_free_body("cube", [cube[0], cube[1], self.half], rng.uniform(-np.pi / 4, np.pi / 4))
        self.model.body_pos[self.model.body("goal").id, :2] = goal
        color = self.color("cube", rng)
        return self.template(rng, color=color, goal=self.color("goal", rng, exclude=(color,)))

    def goal_xy(self) -> np.ndarray:
        return self.body_pos("goal")[:2]

    def success(self, env) -> bool:
        """The cube on the mark: its centre within ``TOL`` of the goal across the table and on the table, not
        carried above the mark (its centre at most ``REST_TOL`` above resting height)."""
        pos = self.body_pos("cube")
        return bool(np.linalg.norm(pos[:2] - self.goal_xy()) < TOL and pos[2] - self.half <= REST_TOL)

    def _goal_dist(self) -> float:
        """The cube's centre to the mark's, across the table."""
        return float(np.linalg.norm(self.goal_xy() - self.body_pos("cube")[:2]))

    def _dir(self) -> np.ndarray:
        d = self.goal_xy() - self.body_pos("cube")[:2]
        return d / max(np.linalg.norm(d), 1e-6)

    def _behind(self, z: float, extra: float = 0.0):
        d = self._dir()
        standoff = PALM_STANDOFF if self.style == "palm" else STANDOFF
        xy = self.body_pos("cube")[:2] - (standoff + extra) * d
        if self.aim_offset != (0.0, 0.0):
            xy = xy + self.aim_offset[0] * np.array([-d[1], d[0]]) + self.aim_offset[1] * d
        if self.style == "palm":
            return np.array([xy[0], xy[1], z]), palm_quat(d), OPEN
        # tool +x along the push so the finger axis (tool y) lies across it; the jaw is symmetric under a half
        # turn, so take the yaw within ±90° (less wrist rotation)
        yaw = float((np.arctan2(d[1], d[0]) + np.pi / 2) % np.pi - np.pi / 2)
        return np.array([xy[0], xy[1], z]), down(yaw), PUSH_G

    def _cage(self, z: float, lead: float = 0.0):
        """Cage style: the open jaw centred ``lead`` metres ahead of the cube's centre along the push, its closing
        axis (tool y) along the push (tool +x across it, the yaw taken within ±90° as the jaw's is)."""
        d = self._dir()
        xy = self.body_pos("cube")[:2] + lead * d
        if self.aim_offset != (0.0, 0.0):
            xy = xy + self.aim_offset[0] * np.array([-d[1], d[0]]) + self.aim_offset[1] * d
        yaw = float((np.arctan2(d[1], d[0]) + np.pi) % np.pi - np.pi / 2)   # atan2(d) - 90°, wrapped to ±90°
        return np.array([xy[0], xy[1], z]), down(yaw), OPEN

    def _cage_phases(self) -> list[Phase]:
        """Above the cube -> down around it -> slide it to the mark -> rise, leaving it there."""

        advance = CAGE_SLOW_ADVANCE if self.style == "cage_slow" else CAGE_ADVANCE

        def push(env):
            return self._cage(PUSH_Z, min(CAGE_LEAD + advance, self._goal_dist() + CAGE_LEAD))

        def up(env):  # jaw open: a cube between the fingers stays on the table
            return rise_from_hand(env, 0.1, OPEN)

        above = lambda env: self._cage(0.1)                                            # noqa: E731
        low = lambda env: self._cage(PUSH_Z)                                           # noqa: E731
        wait = CAGE_WAIT if self.style == "cage_wait" else 0
        return [
            Phase("rise", up, lambda env, n: env.arm.tcp_pos()[2] > 0.08),
            Phase("above", above, lambda env, n: reached(env, above(env), 0.012, 6.0)),
            Phase("descend", low, lambda env, n: reached(env, low(env), 0.006, 6.0), step_pos=0.03),
            Phase("wait", low, lambda env, n: n >= wait, step_pos=0.03),
            Phase("push", push, lambda env, n: self._goal_dist() < CAGE_DONE, step_pos=0.03, abort=self._off_line),
            Phase("release", up, lambda env, n: False),
        ]

    def _grip_phases(self) -> list[Phase]:
        """Above the cube -> down -> close on it (pick_cube's grasp) -> slide it to the mark -> open -> rise."""

        def slide(env):  # move the hand by what separates the held cube from the mark, the cube just off the table
            p = env.arm.tcp_pos()
            xy = p[:2] + self.goal_xy() - self.body_pos("cube")[:2]
            return np.array([xy[0], xy[1], self.half + GRIP_LIFT]), env.arm.tcp_quat(), CLOSED

        def release(env):
            return env.arm.tcp_pos(), env.arm.tcp_quat(), OPEN

        def up(env):  # jaw open: a cube it let go of stays on the table
            return rise_from_hand(env, 0.12, OPEN)

        return [
            Phase("rise", up, lambda env, n: env.arm.tcp_pos()[2] > 0.08),
            *grasp_phases(self, "cube")[:3],   # above, descend, close
            Phase("slide", slide, lambda env, n: self._goal_dist() < CAGE_DONE, step_pos=0.03,
                  abort=lambda env: dropped(self, "cube")),
            Phase("release", release, lambda env, n: n >= 3),
            Phase("up", up, lambda env, n: False),
        ]

    def _off_line(self, env) -> bool:
        """Hand no longer behind the cube on the push line (cube slipped sideways): re-approach."""
        along, across = push_line_frame(env.arm.tcp_pos()[:2] - self.body_pos("cube")[:2], self._dir())
        along, lateral = float(along), abs(float(across))
        if self.style == "palm":   # or the palm's face 3 cm past the cube's centre: the cube is beside it
            return lateral > PALM_OFF_LINE or along > -(PALM_FRONT - 0.03)
        if self.style.startswith("cage"):   # the cube is no longer between the fingers
            return lateral > CAGE_OFF or abs(along) > CAGE_OFF
        return lateral > 0.02 or along > -0.02

    def phases(self):
        if self.style not in STYLES:
            raise ValueError(f"push_cube style must be one of {STYLES}; got {self.style!r}")
        if self.style == "grip" and self.aim_offset != (0.0, 0.0):
            raise ValueError(f"push_cube style grip takes no aim_offset (it grasps the cube); got {self.aim_offset}")
        if self.style.startswith("cage"):
            return self._cage_phases()
        if self.style == "grip":
            return self._grip_phases()
        palm = self.style == "palm"
        z_above, z_push = (PALM_ABOVE_Z, PALM_Z) if palm else (0.1, PUSH_Z)
        z_risen = 0.1 if palm else 0.08             # the rise ends above this height
        if self.style == "jaw_high":                # travel with the TCP 13 cm above the cube's top
            z_above, z_risen = JAW_HIGH_Z, JAW_HIGH_Z - 0.02
        tol_above, tol_low, tol_deg = (0.015, 0.01, 8.0) if palm else (0.012, 0.008, 6.0)
        # where the hand comes down: jaw_back lands farther behind the cube, then slides in at push height
        back = JAW_BACK_STANDOFF - STANDOFF + 0.01 if self.style == "jaw_back" else 0.01
        above = lambda env: self._behind(z_above, back)                                # noqa: E731
        low = lambda env: self._behind(z_push, back)                                   # noqa: E731

        def push(env):
            pos, quat, g = self._behind(z_push)
            pos[:2] += self._dir() * min(0.03, self._goal_dist() + 0.005)
            return pos, quat, g

        def up(env):  # after an abort the jaw is beside the cube: rise first
            return rise_from_hand(env, z_above, OPEN if palm else PUSH_G)

        return [
            Phase("rise", up, lambda env, n: env.arm.tcp_pos()[2] > z_risen),
            Phase("above", above, lambda env, n: reached(env, above(env), tol_above, tol_deg)),
            Phase("descend", low, lambda env, n: reached(env, low(env), tol_low, tol_deg), step_pos=0.03),
            Phase("push", push, lambda env, n: False, step_pos=0.03, abort=self._off_line),
        ]
