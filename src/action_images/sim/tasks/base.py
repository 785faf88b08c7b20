"""What every task provides, plus the phase-machine scripted expert they share.

A task contributes MJCF (its bodies), a seeded ``reset`` (poses, colours, instruction), a ``success`` predicate and a
list of expert phases. The expert is closed-loop: each call looks at the *current* state, advances past phases whose
``done`` holds, and returns a target one bounded step from the hand toward the phase goal. So it recovers from
perturbations and works when another controller drove the previous steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from action_images.sim.robot import quat_down

if TYPE_CHECKING:  # pragma: no cover
    from action_images.sim.env import SimEnv

# (name, rgb) palette for randomised object colours; names go into instructions.
COLORS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (0.85, 0.12, 0.1)), ("green", (0.15, 0.7, 0.2)), ("blue", (0.12, 0.25, 0.85)),
    ("yellow", (0.92, 0.8, 0.1)), ("purple", (0.55, 0.2, 0.7)), ("orange", (0.95, 0.5, 0.1)),
    ("cyan", (0.1, 0.75, 0.8)), ("pink", (0.95, 0.45, 0.65)),
)

EXPERT_STEP_POS = 0.045   # metres per control step (0.45 m/s at 10 Hz)
EXPERT_STEP_ROT = 0.3     # radians per control step
OPEN, CLOSED = 1.0, 0.0

Goal = tuple[np.ndarray, np.ndarray, float]   # (tcp position, quaternion xyzw, gripper g)


@dataclass
class Phase:
    """One expert stage: ``goal(env)`` to move to; ``done(env, steps_in_phase)`` says when to go on; ``abort(env)``
    (optional) sends the expert back to the first phase (e.g. a dropped cube or a pushed cube that slipped away)."""

    name: str
    goal: Callable[["SimEnv"], Goal]
    done: Callable[["SimEnv", int], bool]
    step_pos: float = EXPERT_STEP_POS
    abort: Callable[["SimEnv"], bool] | None = None


def reached(env: "SimEnv", goal: Goal, tol: float = 0.01, tol_deg: float = 6.0) -> bool:
    """Whether the tool is within ``tol`` metres and ``tol_deg`` degrees of a goal."""
    pos, quat, _ = goal
    if np.linalg.norm(env.arm.tcp_pos() - pos) > tol:
        return False
    R = Rotation.from_matrix(env.arm.tcp_rot())
    return np.degrees((Rotation.from_quat(quat) * R.inv()).magnitude()) <= tol_deg


class Task:
    """Base class; subclasses set the class attributes and implement the hooks."""

    name: str = ""
    templates: tuple[str, ...] = ()
    max_steps: int = 100

    # ---- model -------------------------------------------------------------------------------------------------------
    def worldbody_xml(self) -> str:
        return ""

    def extra_xml(self) -> str:
        return ""

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        """Look up ids once the model is compiled."""
        self.model, self.data = model, data

    # ---- episode -----------------------------------------------------------------------------------------------------
    def reset(self, env: "SimEnv", rng: np.random.Generator) -> str:
        """Randomise the scene (positions via qpos/body_pos, colours via geom_rgba); return the instruction."""
        raise NotImplementedError

    def success(self, env: "SimEnv") -> bool:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    # ---- expert ------------------------------------------------------------------------------------------------------
    # A planted missed grasp (``collect --missed-grasps``): the tool-x distance (metres, signed) by which the expert's
    # first grasp of the episode is displaced, so the jaw closes beside the object; None: no miss. Tasks whose
    # phases come from ``pick_cube.grasp_phases`` honour it; the miss ends when the first "lift" phase starts, where
    # the lift's abort sees nothing held and sends the expert back to an open-jawed approach. Experts without a
    # "lift" (push_cube's grip) get no planted miss (:attr:`grasps` is False, and ``collect`` plants none).
    grasp_miss: float | None = None
    # Control steps the closed jaw holds still on the object before the lift (``collect --grasp-wait``), beyond the
    # 3 the close takes; read by ``pick_cube.grasp_phases``.
    grasp_wait: int = 0
    _label_mode: bool = False

    def expert_reset(self) -> None:
        self._phase, self._phase_start = 0, 0
        self._phase_list = self.phases()
        self.grasp_miss, self._label_mode = None, False

    @property
    def grasps(self) -> bool:
        """Whether the expert grasps (its phases include the "lift" that ends a planted miss)."""
        return any(ph.name == "lift" for ph in self.phases())

    def grasp_miss_xy(self, yaw: float) -> np.ndarray:
        """The xy displacement of a grasp at tool yaw ``yaw``: along tool x, across the jaw's closing axis (tool y),
        so the fingers close in front of or behind the object instead of on it. Zero without a miss, and while
        :meth:`expert_label` asks for the undisplaced target."""
        if self.grasp_miss is None or self._label_mode:
            return np.zeros(2)
        return self.grasp_miss * np.array([np.cos(yaw), np.sin(yaw)])

    def expert(self, env: "SimEnv") -> np.ndarray:
        """The expert's absolute 8-D target for the current state."""
        phases = self._phase_list
        for _ in range(2):
            while self._phase < len(phases) - 1 and phases[self._phase].done(env, env.step_count - self._phase_start):
                self._phase += 1
                self._phase_start = env.step_count
                if phases[self._phase].name == "lift":   # the displaced jaw has closed: grasp for real from now
                    self.grasp_miss = None
            ph = phases[self._phase]
            if ph.abort is None or not ph.abort(env):
                break
            self._phase, self._phase_start = 0, env.step_count
        pos, quat, g = ph.goal(env)
        return step_toward(env, pos, quat, g, ph.step_pos)

    def expert_label(self, env: "SimEnv") -> np.ndarray:
        """The target the expert would command from this state without a planted miss: the label a recovery demo
        stores (call after :meth:`expert`, which advances the phases; the executed target is :meth:`expert`'s)."""
        ph = self._phase_list[self._phase]
        self._label_mode = True
        try:
            pos, quat, g = ph.goal(env)
        finally:
            self._label_mode = False
        return step_toward(env, pos, quat, g, ph.step_pos)

    @property
    def expert_phase(self) -> str:
        return self._phase_list[self._phase].name

    # ---- helpers for subclasses --------------------------------------------------------------------------------------
    def color(self, geom_names: tuple[str, ...] | str, rng: np.random.Generator,
              exclude: tuple[str, ...] = ()) -> str:
        """Paint geoms one random palette colour (not in ``exclude``); return its name."""
        names = [n for n, _ in COLORS if n not in exclude]
        name = names[rng.integers(len(names))]
        rgb = dict(COLORS)[name]
        for g in (geom_names,) if isinstance(geom_names, str) else geom_names:
            self.model.geom_rgba[self.model.geom(g).id, :3] = rgb
        return name

    def set_free_body(self, joint: str, pos, yaw: float = 0.0) -> None:
        adr = self.model.jnt_qposadr[self.model.joint(joint).id]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = Rotation.from_euler("z", yaw).as_quat(scalar_first=True)

    def body_pos(self, body: str) -> np.ndarray:
        return self.data.xpos[self.model.body(body).id].copy()

    def body_yaw(self, body: str) -> float:
        R = self.data.xmat[self.model.body(body).id].reshape(3, 3)
        return float(np.arctan2(R[1, 0], R[0, 0]))

    def joint_q(self, joint: str) -> float:
        return float(self.data.qpos[self.model.jnt_qposadr[self.model.joint(joint).id]])

    def template(self, rng: np.random.Generator, **fields: str) -> str:
        return self.templates[rng.integers(len(self.templates))].format(**fields)


def step_toward(env: "SimEnv", pos: np.ndarray, quat: np.ndarray, g: float, step_pos: float) -> np.ndarray:
    """A target at most ``step_pos`` / EXPERT_STEP_ROT from the current tool pose toward (pos, quat)."""
    p = env.arm.tcp_pos()
    delta = np.asarray(pos, dtype=np.float64) - p
    n = np.linalg.norm(delta)
    if n > step_pos:
        delta *= step_pos / n
    R = Rotation.from_matrix(env.arm.tcp_rot())
    rel = (Rotation.from_quat(quat) * R.inv()).as_rotvec()
    a = np.linalg.norm(rel)
    if a > EXPERT_STEP_ROT:
        rel *= EXPERT_STEP_ROT / a
    q = (Rotation.from_rotvec(rel) * R).as_quat(canonical=True)
    return np.concatenate([p + delta, q, [float(np.clip(g, 0.0, 1.0))]])


def down(yaw: float = 0.0) -> np.ndarray:
    return quat_down(yaw)


def sample_xy(rng: np.random.Generator, low, high, avoid: list[np.ndarray] = (), min_dist: float = 0.0,
              tries: int = 200) -> np.ndarray:
    """Uniform xy in a box, at least ``min_dist`` from every point in ``avoid`` (rejection sampling)."""
    for _ in range(tries):
        xy = rng.uniform(low, high)
        if all(np.linalg.norm(xy - np.asarray(a)[:2]) >= min_dist for a in avoid):
            return xy
    raise RuntimeError("could not place object; region too small for min_dist")
