"""What an evaluation runs: :class:`EvalSettings` (validated on construction, shared by the command line and library
callers), the cameras filled in from the checkpoint (:func:`resolve_settings`) and the camera rig it is seen from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from action_images.policy import (ALL_VIEWS, PolicySettings, check_choice, check_int, check_names,
                                  resolve_policy_cameras)
from action_images.sim.scene import CAMERA_SETS

DEFAULT_CAMERAS = CAMERA_SETS["eval"]   # rendered when neither the flags nor the checkpoint name cameras
VIDEO_FORMATS = ("gif", "mp4")
MAX_JOBS = 64
# EvalSettings field -> its command-line flag (errors name both)
EVAL_FLAGS = {"tasks": "--tasks", "episodes": "--episodes", "seed": "--seed", "cameras": "--cameras",
              "image_size": "--image-size", "max_steps": "--max-steps", "videos": "--videos",
              "video_format": "--video-format", "video_px": "--video-px", "jobs": "--jobs",
              "camera_rig": "--camera-rig", "random_rig": "--random-rig", "rig_distribution": "--rig-distribution",
              "rig_views": "--rig-views", "suite": "--suite", "start_jitter": "--start-jitter"}
RIG_SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation runs; validated on construction, so the command line and library callers share the checks.

    ``tasks``: names or "all"/"a,b" (parsed by ``sim.tasks.parse_tasks``). ``episodes`` per task (>= 1; the (task, k)
    pairs are generated lazily, so a large count costs nothing up front). ``cameras``: rendered views (None: the
    policy cameras, see :func:`resolve_settings`). ``max_steps``: cap on episode length (None: the task's).
    ``videos``: rollout videos for the first N episodes per task, each view upscaled to >= ``video_px``.
    ``jobs``: worker processes (records do not depend on it). ``suite``: the benchmark (``sim.suites``: "sim", the
    built-in tabletop, or "metaworld"). ``start_jitter``: metres by which the hand's start position varies per
    episode (``make_env``; 0: every episode starts at the home pose). ``policy``: the policy's settings.
    """

    tasks: tuple[str, ...] | str = "all"
    episodes: int = 10
    seed: int = 0
    cameras: tuple[str, ...] | None = None
    image_size: int = 64
    perturb_cameras: bool = False
    max_steps: int | None = None
    videos: int = 2
    video_format: str = "gif"
    video_px: int = 256
    jobs: int = 1
    camera_rig: str | None = None
    random_rig: int | None = None
    rig_distribution: str | None = None
    rig_views: int = 4
    policy: PolicySettings = field(default_factory=PolicySettings)
    suite: str = "sim"
    start_jitter: float = 0.0

    def __post_init__(self) -> None:
        from action_images.sim.suites import check_suite, get_suite

        put, f = object.__setattr__, EVAL_FLAGS
        put(self, "suite", check_suite(self.suite, "--suite"))
        suite = get_suite(self.suite)
        tasks = self.tasks if isinstance(self.tasks, str) else list(self.tasks)
        put(self, "tasks", tuple(suite.parse_tasks(tasks, "--tasks")))
        put(self, "episodes", check_int("episodes", self.episodes, 1, flags=f))
        put(self, "seed", check_int("seed", self.seed, 0, 2**63 - 1, flags=f))
        put(self, "cameras", check_names("cameras", self.cameras, 1, flags=f))
        put(self, "image_size", check_int("image_size", self.image_size, 16, 1024, flags=f))
        put(self, "perturb_cameras", bool(self.perturb_cameras))
        if self.max_steps is not None:
            put(self, "max_steps", check_int("max_steps", self.max_steps, 1, flags=f))
        put(self, "videos", check_int("videos", self.videos, 0, flags=f))
        check_choice("video_format", self.video_format, VIDEO_FORMATS, flags=f)
        put(self, "video_px", check_int("video_px", self.video_px, 16, 2048, flags=f))
        put(self, "jobs", check_int("jobs", self.jobs, 1, MAX_JOBS, flags=f))
        put(self, "rig_views", check_int("rig_views", self.rig_views, 2, min(8, suite.max_rig_views), flags=f))
        rigs = [k for k in ("camera_rig", "random_rig", "rig_distribution") if getattr(self, k) is not None]
        if len(rigs) > 1:
            raise ValueError(f"{' and '.join(f[k] for k in rigs)} exclude each other; give one")
        if rigs and self.perturb_cameras:
            raise ValueError(f"--perturb-cameras cannot be combined with {f[rigs[0]]}")
        if self.random_rig is not None:
            put(self, "random_rig", check_int("random_rig", self.random_rig, 0, 2**63 - 1, flags=f))
        if self.rig_distribution is not None:
            check_choice("rig_distribution", self.rig_distribution, RIG_SPLITS, flags=f)
        if self.camera_rig is not None and not suite.camera_rig_files:
            raise ValueError(f"--camera-rig is not supported with --suite {self.suite}; use --random-rig or "
                             "--rig-distribution")
        if self.camera_rig is not None:
            from action_images.sim import load_rig
            try:                                                  # refuses a bad file now, naming it
                load_rig(self.camera_rig, self.image_size)
            except ValueError as e:
                raise ValueError(f"--camera-rig: {e}") from None
            put(self, "camera_rig", str(Path(self.camera_rig).resolve()))
        if self.start_jitter:
            from action_images.sim.env import check_start_jitter, start_jitter_unsupported
            if not suite.start_jitter:
                raise ValueError(start_jitter_unsupported(self.suite))
            put(self, "start_jitter", check_start_jitter(self.start_jitter, f["start_jitter"]))
        else:
            put(self, "start_jitter", 0.0)
        if not isinstance(self.policy, PolicySettings):
            raise TypeError(f"policy must be a PolicySettings; got {type(self.policy).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(tasks=list(self.tasks), cameras=list(self.cameras) if self.cameras else None,
                 policy=self.policy.to_dict())
        return d

    def record_dict(self) -> dict[str, Any]:
        """The settings an episode record depends on (``jobs`` only changes the wall time; the default suite and a
        start jitter of 0 are left out, so records written before they existed still resume)."""
        return {k: v for k, v in self.to_dict().items()
                if k != "jobs" and not (k == "suite" and v == "sim") and not (k == "start_jitter" and v == 0)}


def resolve_settings(settings: EvalSettings, config: Any, warn: bool = True) -> EvalSettings:
    """Settings with the cameras filled in from the checkpoint: the model sees ``--policy-cameras`` (``all``: every
    rendered camera), else ``config.camera_names``, else the first ``num_views`` rendered cameras (with a warning);
    the rendered cameras are ``--cameras``, else the policy cameras, else the suite's default (``DEFAULT_CAMERAS`` for
    the built-in sim). The policy cameras must be rendered."""
    from action_images.sim.suites import get_suite

    suite = get_suite(settings.suite)
    rig = rig_camera_names(settings)
    available = tuple(rig) + tuple(suite.hand_cameras) if rig else tuple(suite.camera_names)
    n_views = max(2, int(config.num_views))
    trained = getattr(config, "camera_names", None)
    pol = settings.policy.camera_names
    if pol == (ALL_VIEWS,):                            # every rendered view: --cameras, else the rig's or the defaults
        pol = tuple(settings.cameras or (rig if rig else suite.eval_cameras))
        if len(pol) < 2:
            raise ValueError(f"--policy-cameras all: needs >= 2 rendered cameras; got {','.join(pol)}")
    if not pol and trained and set(trained) <= set(available):
        pol = list(trained)[:n_views]                  # the checkpoint's cameras, as many as it saw per window
    rendered = settings.cameras or (tuple(pol) if pol else (tuple(rig) if rig else tuple(suite.eval_cameras)))
    if not pol and (trained or rig):
        # a checkpoint trained on other camera names (e.g. random rigs) looks through the first rendered views
        pol = list(rendered)[:n_views]
    pol = resolve_policy_cameras(pol, config, rendered, warn=warn)
    missing = [c for c in pol if c not in rendered]
    if missing:
        raise ValueError(f"--policy-cameras: {','.join(missing)} not among the rendered --cameras "
                         f"{','.join(rendered)}")
    unknown = [c for c in rendered if c not in available]
    if unknown:
        flag = "--cameras" if settings.cameras else "--policy-cameras"        # where the unknown names came from
        raise ValueError(f"{flag}: unknown camera(s) {','.join(unknown)}; choose from {','.join(available)}")
    return replace(settings, cameras=tuple(rendered), policy=replace(settings.policy, camera_names=tuple(pol)))


def rig_camera_names(settings: EvalSettings) -> list[str] | None:
    """The views of the evaluation's camera rig (None: the scene's named cameras)."""
    if settings.camera_rig is not None:
        from action_images.sim import load_rig
        return [c.name for c in load_rig(settings.camera_rig, settings.image_size)]
    if settings.random_rig is not None or settings.rig_distribution is not None:
        return [f"rig{i}" for i in range(settings.rig_views)]
    return None


def env_kwargs(settings: EvalSettings) -> dict[str, Any]:
    """The optional ``make_env`` arguments of the evaluation (``sim.suites.optional_env_kwargs``): its rig (a file,
    one held-out draw for ``--random-rig``, or a draw per episode) and its hand start jitter."""
    from action_images.sim.suites import get_suite, optional_env_kwargs

    rig = settings.camera_rig
    if settings.random_rig is not None:
        rig = get_suite(settings.suite).random_rig(settings.random_rig, settings.rig_views, settings.image_size,
                                                   "heldout")
    return optional_env_kwargs(rig, settings.rig_distribution, settings.rig_views, settings.start_jitter)
