"""Task registry: one module per task, each defining a :class:`~action_images.sim.tasks.base.Task` subclass."""

from __future__ import annotations

from action_images.sim.tasks.close_drawer import CloseDrawer
from action_images.sim.tasks.open_drawer import OpenDrawer
from action_images.sim.tasks.pick_cube import PickCube
from action_images.sim.tasks.place_in_bin import PlaceInBin
from action_images.sim.tasks.press_button import PressButton
from action_images.sim.tasks.push_cube import PushCube
from action_images.sim.tasks.reach_target import ReachTarget
from action_images.sim.tasks.stack_cube import StackCube

TASK_CLASSES = {cls.name: cls for cls in (ReachTarget, PushCube, PickCube, PlaceInBin, StackCube, OpenDrawer,
                                          CloseDrawer, PressButton)}
TASKS: tuple[str, ...] = tuple(TASK_CLASSES)


def parse_tasks(spec: str | list[str] | tuple[str, ...], flag: str = "--tasks") -> list[str]:
    """``"all"`` or comma separated task names -> the list of names; unknown names raise with the choices."""
    names = list(spec) if isinstance(spec, (list, tuple)) else (
        list(TASKS) if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()])
    if not names:
        raise ValueError(f"{flag}: name at least one task; choose from {list(TASKS)} or 'all'")
    bad = [t for t in names if t not in TASK_CLASSES]
    if bad:
        raise ValueError(f"{flag}: unknown task(s) {bad or spec!r}; choose from {list(TASKS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"{flag}: a task is named twice in {spec!r}")
    return names
