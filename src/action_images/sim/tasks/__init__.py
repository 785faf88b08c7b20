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
