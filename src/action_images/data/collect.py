"""``action-images collect``: run the scripted experts of a benchmark suite and write a LeRobot v3.0 dataset.

    action-images collect --tasks pick_cube --episodes 100 --out data/pick_cube
    action-images collect --suite metaworld --tasks drawer-open-v3,reach-v3 --episodes 50 --out data/mw

``--suite`` picks the simulator (``sim``: the built-in tabletop; ``metaworld``: Meta-World v3 with its own scripted
policies, docs/metaworld.md); the dataset layout is the same.

``--episodes`` is per task; one dataset holds every task (``task_index`` per episode). Attempt ``k`` of task ``t`` uses
the seed ``episode_seed(--seed, t, k)`` whatever else is collected, and attempts run in the order (k, task position),
so a run killed at any point and continued with ``--resume`` produces the same dataset as an uninterrupted run
(failed attempts after the last stored episode are simply replayed). Only successful episodes are kept unless
``--keep-failed``; each stored episode records ``extra/task_name``, ``extra/attempt``, ``extra/seed``, ``extra/success``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import seeds
from ..geometry import Camera
from ..runfiles import args_dict, atomic_write_json, check_out_dir, split_list
from .lerobot import LeRobotDataset
from .lerobot_format import COLLECT_PATH, DEFAULT_CRF, INFO_PATH, read_json
from .lerobot_writer import DatasetWriter, plan_start

DEFAULT_CAMERAS = "front,left,right,top"
# settings that must match to continue a run with --resume
RESUME_KEYS = ("suite", "seed", "cameras", "image_size", "perturb_cameras", "keep_failed", "hold_steps",
               "hold_action", "random_rig", "rig_views", "camera_rig", "action_noise", "action_noise_prob",
               "missed_grasps", "push_style", "grasp_wait", "stack_sizes", "policy", "policy_steps",
               "policy_sampler_steps", "start_jitter")
RIG_SPLITS = ("train", "heldout")
HOLD_ACTIONS = ("expert", "still")


# Allowed ranges of the numeric flags, checked before any work starts. Images: at least 8 px (the sim's floor) and at
# most 1024 px: one episode is held in memory until it is written (4 views x 100+ frames x 1024^2 x 3 bytes is over
# a gigabyte) and MuJoCo's offscreen buffer grows with it. crf: the range libx264 accepts.
IMAGE_SIZE_RANGE = (8, 1024)
CRF_RANGE = (0, 51)
# --action-noise in metres: up to 5 cm per axis, about one expert step; beyond that the demos are mostly noise
ACTION_NOISE_RANGE = (0.0, 0.05)
# --missed-grasps: how far (metres, along tool x, either sign) a planted miss displaces the first grasp. The cubes are
# 4-4.4 cm wide and a finger pad ~1 cm: from 3.5 cm on, the closing fingers pass in front of or behind the cube.
MISS_DISTANCE = (0.035, 0.05)
# --grasp-wait: extra control steps the closed jaw holds still before the lift (the close itself takes 3)
GRASP_WAIT_RANGE = (0, 20)
# --policy-sampler-steps: the driving policy's sampler steps (what evaluations use: 3 to 6)
POLICY_SAMPLER_STEPS_RANGE = (1, 50)
POLICY_DEFAULTS = {"policy_steps": 40, "policy_sampler_steps": 3}   # named unused when given without --policy


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..sim.suites import DEFAULT_SUITE, SUITES
    from ..sim.tasks.push_cube import STYLES as PUSH_STYLES
    from ..sim.env import START_JITTER_HELP
    from ..sim.tasks.stack_cube import SIZES as STACK_SIZES

    p.add_argument("--suite", default=DEFAULT_SUITE, choices=SUITES,
                   help="benchmark suite: the built-in tabletop (sim, default) or Meta-World v3 (metaworld: task "
                        "names like drawer-open-v3, views corner,corner2,corner3,corner4 by default)")
    p.add_argument("--tasks", default=None, help="task name, comma-separated names, or 'all' (default)")
    p.add_argument("--task", dest="task_deprecated", default=None, help=argparse.SUPPRESS)  # old name of --tasks
    p.add_argument("--episodes", type=int, default=100, help="episodes to store per task, >= 1 (default 100)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--cameras", default=None, help=f"comma-separated views (default {DEFAULT_CAMERAS}; with a rig: "
                                                   "the rig's views)")
    p.add_argument("--rig-distribution", default=None, choices=RIG_SPLITS,
                   help="a new random camera rig every episode, drawn from this split of the simulator's rig "
                        "distribution (views rig0..; calibration stored per frame)")
    p.add_argument("--random-rig", dest="random_rig_deprecated", default=None, choices=RIG_SPLITS,
                   help=argparse.SUPPRESS)   # old name of --rig-distribution
    p.add_argument("--rig-views", type=int, default=4,
                   help="views of a --rig-distribution rig, 2..8 (2..5 with --suite metaworld; default 4)")
    p.add_argument("--camera-rig", default=None,
                   help="place the static cameras exactly as in this meta/cameras.json-format file")
    p.add_argument("--image-size", type=int, default=64,
                   help=f"square image size in pixels, {IMAGE_SIZE_RANGE[0]}..{IMAGE_SIZE_RANGE[1]} (default 64)")
    p.add_argument("--seed", type=int, default=0, help="base seed, >= 0; episode seeds derive from it (default 0)")
    p.add_argument("--perturb-cameras", action="store_true",
                   help="jitter camera poses per episode; calibration is then stored per frame")
    p.add_argument("--resume", action="store_true", help="continue an interrupted collection in --out")
    p.add_argument("--keep-failed", action="store_true", help="also store episodes where the expert failed")
    p.add_argument("--max-attempts", type=int, default=None,
                   help="give up on a task after this many attempts, >= 1 (default 3 x episodes + 10)")
    p.add_argument("--video-crf", type=int, default=DEFAULT_CRF,
                   help=f"H.264 crf, {CRF_RANGE[0]}..{CRF_RANGE[1]} (0 = lossless YUV, default)")
    p.add_argument("--hold-steps", type=int, default=0,
                   help="keep recording this many expert steps after success, >= 0 (default 0: stop at success); "
                        "they give training windows real future keyframes instead of the clipped last frame")
    p.add_argument("--hold-action", choices=HOLD_ACTIONS, default="expert",
                   help="the action of the frames after success: 'expert' (default) goes on running the scripted "
                        "expert, 'still' holds the pose the hand had at success with the last gripper command, so "
                        "an expert that moves on after success (push_cube lifts and re-approaches) does not teach "
                        "the policy to leave a finished task")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="noise injection (DART): before success, each executed target's position moves by "
                        "N(0, sigma^2) metres per axis on a random --action-noise-prob share of the steps, while the "
                        "stored action stays the expert's, so the demos show the expert recovering from states it "
                        "would not visit itself; sigma in 0..0.05 (default 0: the expert's own actions)")
    p.add_argument("--action-noise-prob", type=float, default=0.5,
                   help="share of the steps before success that get --action-noise, in 0..1 (default 0.5; the "
                        "noise-free steps let the expert's own tolerances be met)")
    p.add_argument("--missed-grasps", type=float, default=0.0,
                   help="recovery demos: the share of episodes, in 0..1, whose first grasp the expert makes "
                        f"{MISS_DISTANCE[0] * 100:g}-{MISS_DISTANCE[1] * 100:g} cm beside the cube (the jaw closes "
                        "on nothing), then sees it, opens and grasps again; the stored actions stay the undisplaced "
                        "expert's, so the demos teach reopening a jaw shut on nothing (tasks that grasp: pick_cube, "
                        "place_in_bin, stack_cube; default 0)")
    p.add_argument("--push-style", default="jaw", choices=PUSH_STYLES,
                   help="how push_cube's expert pushes: jaw (top-down, the half-open jaw's fingertips on the cube; "
                        "the default; a meta/collect.json without push_style means it), jaw_back (the same, coming "
                        "down 10 cm behind the cube instead of 5.5 and sliding in), jaw_high (the jaw, travelling "
                        "18 cm above the table instead of 10), palm (the hand turned horizontal, its 13 cm palm "
                        "leading: forgives a hand 3.5 cm off the push line), cage (the "
                        "jaw fully open comes down around the cube and slides it, the finger behind it pushing), "
                        "cage_wait (the cage, holding still 4 steps once down around the cube) or cage_slow (the "
                        "cage pushing with its targets 2.5 cm ahead of the cube's centre, not 4.5) or grip (not a "
                        "push: the jaw closes on the cube and slides it along the table to the mark; its release "
                        "comes after success, in the --hold-steps); docs/benchmark.md")
    p.add_argument("--start-jitter", type=float, default=0.0, metavar="M",
                   help=START_JITTER_HELP + "; the objects are placed as without it (docs/dataset.md)")
    p.add_argument("--stack-sizes", default="fixed", choices=STACK_SIZES,
                   help="stack_cube's cubes: fixed (the task: the cube to move is the smaller; the default; a "
                        "meta/collect.json without stack_sizes means it) or equal (the cube to move at the base's "
                        "size, so only the instruction's colours say which cube goes on which); docs/dataset.md")
    p.add_argument("--grasp-wait", type=int, default=0,
                   help=f"control steps the grasping experts (pick_cube, place_in_bin, stack_cube, push_cube's grip) "
                        f"hold the closed jaw still on the cube before they lift or slide it, beyond the 3 the close "
                        f"takes, in {GRASP_WAIT_RANGE[0]}..{GRASP_WAIT_RANGE[1]} (default 0); docs/dataset.md")
    p.add_argument("--policy", default=None,
                   help="DAgger: a policy checkpoint (world action model or baseline) drives each episode from the "
                        "reset, seeing every collected view, until a step drawn per episode (uniformly in "
                        "1..--policy-steps, from the episode seed) or success; the expert takes over from there. Every "
                        "frame stores the expert's own target from the state it shows, so the demos label the states "
                        "the policy leads to (built-in sim only; default: the expert drives)")
    p.add_argument("--policy-steps", type=int, default=POLICY_DEFAULTS["policy_steps"],
                   help="--policy: the most control steps the policy drives an episode, >= 1 (default 40)")
    p.add_argument("--policy-sampler-steps", type=int, default=POLICY_DEFAULTS["policy_sampler_steps"],
                   help=f"--policy: its sampler steps, {POLICY_SAMPLER_STEPS_RANGE[0]}..{POLICY_SAMPLER_STEPS_RANGE[1]} "
                        "(default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")


def noise_rng(seed: int) -> np.random.Generator:
    """The action-noise stream of the episode with this seed: its own stream, so the noise leaves the scene's draws
    (and a noise-free collection with the same seeds) unchanged."""
    return np.random.default_rng([int(seed), 0x6E6F6973])


def _grasps(task: str) -> bool:
    """Whether the built-in task ``task``'s expert grasps (so ``--missed-grasps`` can plant a miss in it)."""
    from ..sim.tasks import TASK_CLASSES
    return task in TASK_CLASSES and TASK_CLASSES[task]().grasps


def miss_rng(seed: int) -> np.random.Generator:
    """The missed-grasp stream of the episode with this seed (its own stream, like :func:`noise_rng`)."""
    return np.random.default_rng([int(seed), 0x6D697373])


def takeover_rng(seed: int) -> np.random.Generator:
    """The ``--policy`` takeover stream of the episode with this seed (its own stream, like :func:`noise_rng`)."""
    return np.random.default_rng([int(seed), 0x74616B65])


def episode_seed(base_seed: int, task: str, attempt: int) -> int:
    """Seed of attempt ``attempt`` of ``task`` (``seeds.episode_seed`` for collection, whatever else is collected)."""
    return seeds.episode_seed(base_seed, task, attempt, purpose="collect")


def _load_cameras() -> tuple[str, ...]:
    """The sim's camera names (a function so tests can substitute a fake simulator)."""
    from ..sim import CAMERA_NAMES
    return tuple(CAMERA_NAMES)


def _load_sim() -> tuple[Callable[..., Any], tuple[str, ...]]:
    """The sim's ``make_env`` and ``TASKS`` (a function so tests can substitute a fake simulator)."""
    from ..sim import TASKS, make_env
    return make_env, tuple(TASKS)


@dataclass
class Recorded:
    instruction: str
    actions: np.ndarray
    states: np.ndarray
    images: dict[str, np.ndarray]
    cameras: dict[str, list[Camera]]
    success: bool
    hold_steps: int = 0   # frames recorded after the first success (at the end of the episode)
    grasp_miss: float | None = None   # the planted miss of the first grasp (metres along tool x), if any
    driven: int = 0       # control steps a --policy executed before the expert took over (or success came)

    def cameras_move(self) -> bool:
        return any(not (np.array_equal(c.K, seq[0].K) and np.array_equal(c.T_cam_world, seq[0].T_cam_world))
                   for seq in self.cameras.values() for c in seq)


def run_episode(env: Any, seed: int, camera_names: list[str], hold_steps: int = 0,
                hold_action: str = "expert", action_noise: float = 0.0, action_noise_prob: float = 0.5,
                missed_grasps: float = 0.0, driver: Any = None, takeover: int = 0) -> Recorded:
    """Roll the expert out from ``reset(seed)``; frame t = (images_t, ee_pose_t, calibration_t, expert action_t).

    The episode ends at success (or the task's step limit); with ``hold_steps`` > 0 it goes on for that many more
    recorded steps after the first success (the env keeps stepping past ``terminated``): the expert's actions, or
    with ``hold_action="still"`` one fixed target, the hand's pose at success with the last gripper command.
    With ``action_noise`` > 0, before success a random ``action_noise_prob`` share of the steps executes the
    expert's target moved by N(0, action_noise^2) per position axis (``noise_rng(seed)``); the frame stores the
    expert's own target, the label of the state the noise led to. With ``missed_grasps`` > 0, that share of the
    episodes (``miss_rng(seed)``) plants a miss in the expert's first grasp (``Task.grasp_miss``, a distance drawn
    from ``MISS_DISTANCE`` with a random sign); the frames store :meth:`Task.expert_label`, the undisplaced target,
    so the demo shows the jaw closing beside the cube, then the expert's own recovery. Tasks whose expert does not
    grasp (``Task.grasps``) get no miss. With a ``driver`` (a policy: ``reset(seed)``, ``act(obs, cameras)``), its
    actions are executed for the first ``takeover`` steps before success, the expert's after (``action_noise`` moves
    the expert's executed steps only); the frames store the expert's targets throughout (the expert is asked at every
    step, so it follows the state the driver leads to). ``Recorded.driven``: the steps the driver executed."""
    if hold_action not in HOLD_ACTIONS:
        raise ValueError(f"hold_action must be one of {HOLD_ACTIONS}; got {hold_action!r}")
    rng = noise_rng(seed) if action_noise > 0 else None
    obs, info = env.reset(seed=seed)
    if driver is not None:
        driver.reset(seed)
    miss = None
    if missed_grasps > 0 and getattr(getattr(env, "task", None), "grasps", False):
        mrng = miss_rng(seed)
        if mrng.uniform() < missed_grasps:
            miss = float(mrng.choice((-1.0, 1.0)) * mrng.uniform(*MISS_DISTANCE))
            env.task.grasp_miss = miss
    instruction = str(obs["instruction"])
    imgs: dict[str, list[np.ndarray]] = {c: [] for c in camera_names}
    cams: dict[str, list[Camera]] = {c: [] for c in camera_names}
    states, actions = [], []
    success = bool(info.get("success", False))
    held = driven = 0
    still: np.ndarray | None = None
    for step in range(int(env.max_steps) + int(hold_steps)):
        for c in camera_names:
            imgs[c].append(np.array(obs["images"][c], dtype=np.uint8, copy=True))
        for c, cam in zip(camera_names, env.cameras):
            cams[c].append(cam)
        states.append(np.asarray(obs["ee_pose"], dtype=np.float64).copy())
        if success and hold_action == "still":
            if still is None:
                last_gripper = actions[-1][7:] if actions else np.asarray(env.expert_action(), np.float64)[7:]
                still = np.concatenate([states[-1][:7], last_gripper])
            a = still.copy()
        else:
            a = np.asarray(env.expert_action(), dtype=np.float64).copy()
        executed = a
        if miss is not None and not success:          # the miss is executed, the undisplaced target is stored
            a = np.asarray(env.task.expert_label(env), dtype=np.float64).copy()
        actions.append(a)
        drive = driver is not None and step < takeover and not success
        if drive:
            executed = np.asarray(driver.act(obs, env.cameras), dtype=np.float64)
            driven += 1
        if rng is not None and not success:
            kick, offset = rng.uniform() < action_noise_prob, rng.normal(0.0, action_noise, 3)
            if kick and not drive:
                executed = executed.copy()
                executed[:3] += offset
        if success:
            held += 1
        obs, _, terminated, truncated, info = env.step(executed)
        success = success or bool(info.get("success", False))
        if (success and held >= hold_steps) or (truncated and not success):
            break
    return Recorded(instruction, np.stack(actions), np.stack(states), {c: np.stack(v) for c, v in imgs.items()},
                    cams, success, held, miss, driven)


@dataclass
class Progress:
    """Per-task counts recovered from the dataset (so a resumed run knows where each task stopped)."""

    stored: dict[str, int] = field(default_factory=dict)
    next_attempt: dict[str, int] = field(default_factory=dict)
    failed_stored: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, ds: LeRobotDataset | None, tasks: list[str]) -> "Progress":
        p = cls({t: 0 for t in tasks}, {t: 0 for t in tasks}, {t: 0 for t in tasks})
        if ds is None:
            return p
        for i in range(ds.num_episodes):
            info = ds.episode_info(i)
            name, k = info.get("extra/task_name"), info.get("extra/attempt")
            if name is None or k is None:
                raise ValueError(f"{ds.root}: episode {i} has no extra/task_name / extra/attempt; it was not written "
                                 "by `action-images collect` and cannot be resumed")
            for d in (p.stored, p.next_attempt, p.failed_stored):
                d.setdefault(name, 0)
            p.stored[name] += 1
            p.next_attempt[name] = max(p.next_attempt[name], int(k) + 1)
            p.failed_stored[name] += 0 if info.get("extra/success", True) else 1
        return p

    def failed(self, task: str, keep_failed: bool) -> int:
        """Failed attempts so far: exact even after a resume (attempts < next_attempt that were not stored)."""
        if keep_failed:
            return self.failed_stored[task]
        return self.next_attempt[task] - self.stored[task]


def _fail(msg: str) -> int:
    print(f"action-images collect: {msg}", file=sys.stderr)
    return 2


def _names(spec: str, flag: str, choices: tuple[str, ...], allow_all: bool) -> list[str]:
    """A comma separated list of distinct names from ``choices`` (or ``all``); ``ValueError`` naming ``flag``."""
    import difflib

    names = list(choices) if allow_all and spec.strip() == "all" else split_list(spec, flag)
    bad = [n for n in names if n not in choices]
    if bad or not names or len(set(names)) != len(names):
        close = sorted({c for n in bad for c in difflib.get_close_matches(n, choices, n=3, cutoff=0.6)})
        what = (f"unknown {bad}" + (f" (did you mean {', '.join(close)}?)" if close else "")) if bad \
            else ("repeated names" if names else "no names")
        raise ValueError(f"{flag}: {what} in {spec!r}; choose from {', '.join(choices)}"
                         + (" or 'all'" if allow_all else "") + ", each at most once")
    return names


def check_args(args: argparse.Namespace, all_tasks: tuple[str, ...],
               all_cameras: tuple[str, ...], suite: Any = None) -> tuple[list[str], list[str]]:
    """(tasks, cameras) from the command line; ``ValueError`` with one line naming the flag and its allowed range.
    ``suite``: a ``sim.suites.Suite`` other than the built-in sim (its task parser, default views, rig limits)."""
    spec = args.tasks if args.tasks is not None else args.task_deprecated
    if args.tasks is not None and args.task_deprecated is not None:
        raise ValueError("--task is the old name of --tasks; give only --tasks")
    if suite is not None:
        tasks = suite.parse_tasks("all" if spec is None else spec, "--tasks")
    else:
        tasks = _names("all" if spec is None else spec, "--tasks", all_tasks, allow_all=True)
    hand = ("wrist",) if suite is None else tuple(suite.hand_cameras)
    max_views = 8 if suite is None else int(suite.max_rig_views)
    if suite is not None and args.missed_grasps:
        raise ValueError(f"--missed-grasps is not supported with --suite {suite.name}: it plants misses in the "
                         "built-in experts' grasps")
    if suite is not None and args.grasp_wait:
        raise ValueError(f"--grasp-wait is not supported with --suite {suite.name}: it changes the built-in "
                         "experts' grasps")
    if suite is not None and args.push_style != "jaw":
        raise ValueError(f"--push-style is not supported with --suite {suite.name}: it picks the built-in "
                         "push_cube expert's style")
    if suite is not None and args.start_jitter and not getattr(suite, "start_jitter", False):
        from ..sim.env import start_jitter_unsupported
        raise ValueError(start_jitter_unsupported(suite.name))
    if suite is not None and args.stack_sizes != "fixed":
        raise ValueError(f"--stack-sizes is not supported with --suite {suite.name}: it sizes the built-in "
                         "stack_cube's cubes")
    if suite is not None and args.policy:
        raise ValueError(f"--policy is not supported with --suite {suite.name}: it is asked for the built-in "
                         "experts' labels at the states the policy leads to")
    if args.policy and not (Path(args.policy) / "config.json").is_file():
        raise ValueError(f"--policy: {args.policy} is not a checkpoint folder (no config.json)")
    if suite is not None and args.camera_rig and not suite.camera_rig_files:
        raise ValueError(f"--camera-rig is not supported with --suite {suite.name}; use --rig-distribution")
    if args.random_rig_deprecated is not None:
        if args.rig_distribution is not None:
            raise ValueError("--random-rig is the old name of --rig-distribution; give only --rig-distribution")
        args.rig_distribution = args.random_rig_deprecated
    if args.rig_distribution and args.camera_rig:
        raise ValueError("--rig-distribution and --camera-rig exclude each other; give one")
    if (args.rig_distribution or args.camera_rig) and args.perturb_cameras:
        raise ValueError("--perturb-cameras cannot be combined with --rig-distribution or --camera-rig")
    if args.rig_distribution:
        if not 2 <= args.rig_views <= max_views:
            raise ValueError(f"--rig-views must be in 2..{max_views}; got {args.rig_views}")
        all_cameras = tuple(f"rig{i}" for i in range(args.rig_views)) + hand
    elif args.camera_rig:
        from ..sim import load_rig
        try:
            rig = load_rig(args.camera_rig, args.image_size)
        except (OSError, ValueError) as e:
            raise ValueError(f"--camera-rig: {getattr(e, 'strerror', None) or e}") from None
        all_cameras = tuple(c.name for c in rig) + ("wrist",)
    default = ",".join(c for c in all_cameras if c not in hand) if (args.rig_distribution or args.camera_rig) \
        else (DEFAULT_CAMERAS if suite is None else ",".join(suite.collect_cameras))
    cameras = _names(args.cameras or default, "--cameras", all_cameras, allow_all=False)
    from ..sim.env import check_start_jitter

    check_start_jitter(args.start_jitter, "--start-jitter")
    lo, hi = IMAGE_SIZE_RANGE
    checks = [("--episodes", args.episodes, 1, None), ("--image-size", args.image_size, lo, hi),
              ("--seed", args.seed, 0, None), ("--hold-steps", args.hold_steps, 0, None),
              ("--video-crf", args.video_crf, *CRF_RANGE), ("--action-noise", args.action_noise, *ACTION_NOISE_RANGE),
              ("--action-noise-prob", args.action_noise_prob, 0.0, 1.0),
              ("--missed-grasps", args.missed_grasps, 0.0, 1.0), ("--grasp-wait", args.grasp_wait, *GRASP_WAIT_RANGE),
              ("--policy-steps", args.policy_steps, 1, None),
              ("--policy-sampler-steps", args.policy_sampler_steps, *POLICY_SAMPLER_STEPS_RANGE)]
    if args.max_attempts is not None:
        checks.append(("--max-attempts", args.max_attempts, 1, None))
    for flag, value, lo, hi in checks:
        if not np.isfinite(value) or value < lo or (hi is not None and value > hi):
            raise ValueError(f"{flag} must be {f'in {lo}..{hi}' if hi is not None else f'>= {lo}'}; got {value}")
    return tasks, cameras


def run(args: argparse.Namespace) -> int:
    from ..sim.tasks.base import Task

    suite_name = getattr(args, "suite", "sim")
    suite = None
    try:
        if suite_name == "sim":
            make_env, all_tasks = _load_sim()
            all_cameras = _load_cameras()
        else:
            from ..sim.suites import get_suite
            suite = get_suite(suite_name)
            make_env, all_tasks, all_cameras = suite.make_env, suite.task_names(), suite.camera_names
    except ImportError as e:
        return _fail(f"the simulator is not available ({e})")
    except ValueError as e:
        return _fail(str(e))
    try:
        tasks, cameras = check_args(args, tuple(all_tasks), tuple(all_cameras), suite)
    except ValueError as e:
        return _fail(str(e))
    if args.missed_grasps and suite is None:
        without = [t for t in tasks if not _grasps(t)]
        if without:
            print(f"action-images collect: --missed-grasps plants misses only where the expert grasps; "
                  f"{', '.join(without)}: none", file=sys.stderr)
    if args.grasp_wait and suite is None:
        without = [t for t in tasks if not (_grasps(t) or (t == "push_cube" and args.push_style == "grip"))]
        if without:
            print(f"action-images collect: --grasp-wait holds the jaw only where the expert grasps; "
                  f"{', '.join(without)}: none", file=sys.stderr)
    if args.push_style != "jaw" and suite is None and "push_cube" not in tasks:
        print(f"action-images collect: --push-style {args.push_style} changes push_cube's expert only; push_cube is "
              "not among --tasks", file=sys.stderr)
    if not args.policy and any(getattr(args, k) != v for k, v in POLICY_DEFAULTS.items()):
        print("action-images collect: --policy-steps and --policy-sampler-steps apply with --policy only; no policy "
              "drives these episodes", file=sys.stderr)
    if args.stack_sizes != "fixed" and suite is None and "stack_cube" not in tasks:
        print(f"action-images collect: --stack-sizes {args.stack_sizes} changes stack_cube's scenes only; stack_cube "
              "is not among --tasks", file=sys.stderr)
    if args.task_deprecated is not None:
        print("action-images collect: --task is deprecated; use --tasks (same values)", file=sys.stderr)
    if args.random_rig_deprecated is not None:
        print("action-images collect: --random-rig is deprecated; use --rig-distribution (same values)",
              file=sys.stderr)
    out = Path(args.out)
    try:
        check_out_dir(out)
    except ValueError as e:
        return _fail(str(e))
    config = {"suite": suite_name, "seed": int(args.seed), "cameras": cameras, "image_size": int(args.image_size),
              "perturb_cameras": bool(args.perturb_cameras), "keep_failed": bool(args.keep_failed),
              "hold_steps": int(args.hold_steps), "hold_action": args.hold_action,
              "random_rig": args.rig_distribution,
              "rig_views": int(args.rig_views) if args.rig_distribution else None,
              "camera_rig": str(Path(args.camera_rig).resolve()) if args.camera_rig else None,
              "action_noise": float(args.action_noise),
              "action_noise_prob": float(args.action_noise_prob) if args.action_noise > 0 else None,
              "missed_grasps": float(args.missed_grasps), "push_style": args.push_style,
              "grasp_wait": int(args.grasp_wait), "stack_sizes": args.stack_sizes,
              "policy": str(Path(args.policy).resolve()) if args.policy else None,
              "policy_steps": int(args.policy_steps) if args.policy else None,
              "policy_sampler_steps": int(args.policy_sampler_steps) if args.policy else None,
              "start_jitter": float(args.start_jitter)}
    if (out / INFO_PATH).exists():
        if not args.resume:
            return _fail(f"{out} already holds a dataset; pass --resume to continue it or choose another --out")
        try:
            prev = read_json(out / COLLECT_PATH, "collection record") if (out / COLLECT_PATH).exists() else {}
        except ValueError as e:
            return _fail(str(e))
        if not isinstance(prev, dict) or not isinstance(prev.get("config", {}), dict):
            return _fail(f"{out / COLLECT_PATH}: expected a JSON object with a 'config' object")
        # datasets from before these flags had none of them
        before = {"suite": "sim", "hold_steps": 0, "hold_action": "expert", "random_rig": None, "rig_views": None,
                  "camera_rig": None, "action_noise": 0.0, "action_noise_prob": None, "missed_grasps": 0.0,
                  "push_style": "jaw", "grasp_wait": 0, "stack_sizes": "fixed", "policy": None, "policy_steps": None,
                  "policy_sampler_steps": None, "start_jitter": 0.0, **prev.get("config", {})}
        diff = {k: (before.get(k), config[k]) for k in RESUME_KEYS if before.get(k) != config[k]}
        if diff:
            return _fail(f"--resume with different settings than {out / COLLECT_PATH}: "
                         + ", ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
    try:  # refuse, before any episode runs, a dataset the writer would have to overwrite or delete files of
        ds, _ = plan_start(out, args.resume)
        progress = Progress.from_dataset(ds, tasks)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    max_attempts = args.max_attempts if args.max_attempts is not None else 3 * args.episodes + 10
    cli = {k: v for k, v in args_dict(args).items()
           if k not in ("task_deprecated", "random_rig_deprecated", "no_progress")}
    record = {"command": "collect", "args": {**cli, "tasks": ",".join(tasks)},
              "seed": int(args.seed), "config": config}

    driver = None
    if args.policy:                   # DAgger: a checkpoint drives the first steps, seeing every collected view
        from ..baselines import load_model
        from ..baselines.policy import make_policy
        from ..policy import ALL_VIEWS, PolicySettings
        try:
            model = load_model(args.policy)
        except (OSError, ValueError) as e:
            return _fail(f"--policy: {e}")
        driver = make_policy(model, PolicySettings(sampler_steps=int(args.policy_sampler_steps),
                                                   camera_names=(ALL_VIEWS,)))
    envs: dict[str, Any] = {}
    writer: DatasetWriter | None = None
    # per-frame calibration when cameras are perturbed or move (e.g. a wrist camera); decided on the first episode
    per_frame = bool(args.perturb_cameras or args.rig_distribution) or (ds is not None and ds.num_episodes > 0
                                                                  and ds.per_frame_cameras)
    t0, new_frames, new_eps = time.time(), 0, 0
    try:
        from tqdm import tqdm
        target_total = args.episodes * len(tasks)
        bar = tqdm(total=target_total, initial=min(target_total, sum(progress.stored[t] for t in tasks)),
                   desc=f"collect {','.join(tasks) if len(tasks) <= 3 else f'{len(tasks)} tasks'}", unit="ep",
                   dynamic_ncols=True, disable=args.no_progress)
        while True:
            pending = [t for t in tasks if progress.stored[t] < args.episodes and progress.next_attempt[t] < max_attempts]
            if not pending:
                break
            task = min(pending, key=lambda t: (progress.next_attempt[t], tasks.index(t)))
            if task not in envs:
                from ..sim.suites import optional_env_kwargs
                extra = optional_env_kwargs(args.camera_rig, args.rig_distribution, args.rig_views, args.start_jitter)
                envs[task] = make_env(task, cameras=tuple(cameras), image_size=args.image_size,
                                      perturb_cameras=args.perturb_cameras, camera_seed=None, render=True, **extra)
                if task == "push_cube" and suite is None:
                    envs[task].task.style = args.push_style
                if task == "stack_cube" and suite is None:
                    envs[task].task.sizes = args.stack_sizes
                expert = getattr(envs[task], "task", None)
                if suite is None and isinstance(expert, Task):     # the built-in experts (test fakes have none)
                    expert.grasp_wait = int(args.grasp_wait)
            env = envs[task]
            k = progress.next_attempt[task]
            seed = episode_seed(args.seed, task, k)
            takeover = int(takeover_rng(seed).integers(1, args.policy_steps + 1)) if driver is not None else 0
            rec = run_episode(env, seed, cameras, args.hold_steps, args.hold_action, args.action_noise,
                              args.action_noise_prob, args.missed_grasps, driver, takeover)
            progress.next_attempt[task] = k + 1
            if rec.success or args.keep_failed:
                if writer is None:
                    per_frame = per_frame or rec.cameras_move()
                    try:
                        writer = DatasetWriter(out, fps=int(env.fps), image_size=(args.image_size, args.image_size),
                                               cameras=[seq[0] for seq in rec.cameras.values()],
                                               resume=ds is not None, per_frame_cameras=per_frame, crf=args.video_crf)
                    except (ValueError, OSError) as e:
                        bar.close()
                        return _fail(str(e))
                    atomic_write_json(out / COLLECT_PATH, {**record, "status": "running"})
                writer.add_episode(instruction=rec.instruction, actions=rec.actions, states=rec.states,
                                   images=rec.images, cameras=rec.cameras,
                                   extra={"task_name": task, "attempt": k, "seed": seed, "success": rec.success,
                                          "hold_steps": rec.hold_steps,
                                          # metres; 0: none planted (a miss is >= 3.5 cm). Only in datasets
                                          # collected with misses: every episode of a dataset has the same keys
                                          **({"grasp_miss": rec.grasp_miss or 0.0} if args.missed_grasps else {}),
                                          # --policy: the control steps the policy drove before the expert took over
                                          **({"takeover": rec.driven} if driver is not None else {})})
                progress.stored[task] += 1
                progress.failed_stored[task] += 0 if rec.success else 1
                new_frames += len(rec.actions)
                new_eps += 1
                bar.update(1)
            bar.set_postfix(failed=sum(progress.failed(t, args.keep_failed) for t in tasks))
        bar.close()
    finally:
        if writer is not None:
            writer.close()
        for env in envs.values():
            env.close()

    wall = time.time() - t0
    summary = {t: {"stored": progress.stored[t], "failed_attempts": progress.failed(t, args.keep_failed),
                   "attempts": progress.next_attempt[t]} for t in tasks}
    short = [t for t in tasks if progress.stored[t] < args.episodes]
    if writer is not None or ds is not None:
        atomic_write_json(out / COLLECT_PATH, {**record, "status": "incomplete" if short else "complete",
                                               "tasks": summary, "new_episodes": new_eps, "new_frames": new_frames,
                                               "wall_s": round(wall, 2)})
    failed = sum(v["failed_attempts"] for v in summary.values())
    stored = sum(v["stored"] for v in summary.values())
    print(f"collect: {stored} episodes stored in {out} ({new_eps} new, {new_frames} frames, {wall:.1f} s, "
          f"{new_frames / max(wall, 1e-9):.1f} frames/s); {failed} failed attempt(s) "
          f"{'stored (--keep-failed)' if args.keep_failed else 'dropped'}")
    for t, v in summary.items():
        print(f"  {t}: {v['stored']} stored, {v['failed_attempts']} failed of {v['attempts']} attempts")
    if short:
        print(f"action-images collect: gave up after {max_attempts} attempts on {', '.join(short)} (the dataset "
              "holds every episode collected so far; raise --max-attempts and --resume to continue)", file=sys.stderr)
        return 1
    return 0

