"""Benchmark suites behind one interface: the built-in tabletop (``sim``) and Meta-World v3 (``metaworld``).

``collect`` and ``eval`` take ``--suite`` and ask :func:`get_suite` for the environment factory, the task names,
the camera names and the random rigs; everything downstream (dataset, windows, model, policy, codec) is the same.
Meta-World is imported only when its suite is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np

    from action_images.geometry import Camera

SUITES = ("sim", "metaworld")
DEFAULT_SUITE = "sim"


class Env(Protocol):
    """The environment every suite's ``make_env`` gives (:class:`~action_images.sim.env.SimEnv`,
    :class:`~action_images.sim.metaworld.MetaWorldEnv`): the gymnasium API with an absolute 8-D target
    ``[x, y, z, qx, qy, qz, qw, gripper]`` as the action. Observations hold ``ee_pose``, ``instruction``, ``camera_K``,
    ``camera_T_cam_world`` and, when the env renders and ``observe_images`` is True, ``images`` (view name -> HxWx3
    uint8); ``info["success"]`` says whether the task is done."""

    max_steps: int
    fps: int                # control steps per second (videos play at this rate)
    # False: the next observations carry no ``images`` until it is set back to True (rendering is most of a step's
    # cost; the evaluator renders only the steps where the policy plans or a video is recorded)
    observe_images: bool

    @property
    def cameras(self) -> list[Camera]:
        """Calibrated cameras for the current state, in the order of the env's ``cameras``."""
        ...

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]: ...

    def observe(self) -> dict[str, Any]:
        """The observation of the current state without a step (for probes that edit the scene)."""
        ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's absolute 8-D target for the current state."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Suite:
    """What the commands need from a benchmark suite.

    ``make_env(task, cameras=..., image_size=..., perturb_cameras=..., camera_seed=..., render=..., rig=...,
    rig_distribution=..., rig_views=...)`` gives an :class:`Env` (8-D absolute targets, ``expert_action()``,
    calibrated ``cameras``, ``observe_images``); ``parse_tasks(spec, flag)`` turns "all" or "a,b" into names (one-line
    ValueError naming ``flag``); ``camera_names``: every named view; ``hand_cameras``: views that move with the hand
    (allowed beside a rig's views); ``collect_cameras`` / ``eval_cameras``: the defaults; ``max_rig_views``: how many
    rig cameras the scene can place; ``random_rig(seed, n_views, size, split)``; ``camera_rig_files``: whether
    ``--camera-rig FILE`` works; ``start_jitter``: whether ``make_env`` takes ``start_jitter`` (hand start poses
    drawn per episode)."""

    name: str
    make_env: Callable[..., Env]
    task_names: Callable[[], tuple[str, ...]]
    parse_tasks: Callable[..., list[str]]
    camera_names: tuple[str, ...]
    hand_cameras: tuple[str, ...]
    collect_cameras: tuple[str, ...]
    eval_cameras: tuple[str, ...]
    max_rig_views: int
    random_rig: Callable[..., list]
    camera_rig_files: bool
    start_jitter: bool = False


def optional_env_kwargs(rig: Any = None, rig_distribution: str | None = None, rig_views: int = 4,
                        start_jitter: float = 0.0) -> dict[str, Any]:
    """The optional ``make_env`` arguments that were asked for, and no others, so that a suite whose ``make_env``
    lacks one (Meta-World has no ``start_jitter``) is never given it: a fixed ``rig`` (file or cameras), a rig drawn
    per episode from ``rig_distribution`` with ``rig_views`` views, a hand start jittered by ``start_jitter``."""
    out: dict[str, Any] = {}
    if rig is not None:
        out["rig"] = rig
    if rig_distribution is not None:
        out |= {"rig_distribution": rig_distribution, "rig_views": int(rig_views)}
    if start_jitter:
        out["start_jitter"] = float(start_jitter)
    return out


def check_suite(name: Any, flag: str = "--suite") -> str:
    if name not in SUITES:
        raise ValueError(f"{flag} must be one of {', '.join(SUITES)}; got {name!r}")
    return str(name)


def get_suite(name: str = DEFAULT_SUITE, flag: str = "--suite") -> Suite:
    """The suite called ``name`` (ValueError naming ``flag`` for another name; ``metaworld`` needs the package)."""
    name = check_suite(name, flag)
    if name == "sim":
        from action_images import sim
        from action_images.sim.tasks import parse_tasks

        return Suite("sim", sim.make_env, lambda: tuple(sim.TASKS), parse_tasks, tuple(sim.CAMERA_NAMES),
                     ("wrist",), tuple(sim.CAMERA_SETS["all_static"]), tuple(sim.CAMERA_SETS["eval"]),
                     sim.RIG_SLOTS, sim.random_rig, True, start_jitter=True)
    try:
        from action_images.sim import metaworld as mw
        import metaworld  # noqa: F401  (the package itself, so a missing install is reported here)
    except ImportError as e:
        raise ValueError(f"{flag} metaworld needs the metaworld package ({e}); pip install metaworld==3.1.1") from None
    return Suite("metaworld", mw.make_env, mw.task_names, mw.parse_tasks, mw.CAMERA_NAMES, mw.HAND_CAMERAS,
                 mw.DEFAULT_CAMERAS, mw.CAMERA_SETS["eval"], mw.RIG_SLOTS, mw.random_rig, False)
