"""Why does the world action model fail stack_cube (and the other grasping tasks)? A closed-loop probe beside the
scripted expert on the same seeds.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/stack_cube_failures.py \
        --checkpoint checkpoints/rig8-ctx-3h --episodes 20 --seed 4242 \
        --json bench/results/stack_cube_failures/stack_cube_rig8_ctx_3h.json   # and --task pick_cube, place_in_bin

``--episodes`` episodes of the checkpoint, built as ``action-images eval --tasks TASK --rig-distribution RIGS
--sampler-steps N [--policy-cameras all]`` builds them (:class:`EvalSettings` ->
:meth:`EpisodeRunner.from_checkpoint`), with ``env.step`` wrapped to log, per control step, the grasped cube, the
place target (the big cube, the bin), the TCP and the jaw. Each episode gets one class (:func:`classify`, first match):

- ``success``;
- ``no_grasp``: the cube never rises 2 cm off the table;
- ``dropped``: lifted, then back on the table (for stack_cube: more than 2 cm beside the big cube);
- ``released_off_target`` (stack_cube): let go over the big cube but its centre more than 2 cm (the tolerance) off;
- ``not_released`` (stack_cube): on the big cube within 2 cm, still held when the episode ends;
- ``other``.

Every episode also counts the steps where the jaw is shut on nothing (after a missed or lost grasp) and whether it
opened again afterwards.

Two numbers test one hypothesis, for the policy and the expert alike: the *grasp offset* (where the small cube sits in
the closed jaw, xy from the TCP, measured while it is carried) and the *release error* (small cube xy from the big
cube's centre when the jaw opens above it). The expert lowers its TCP onto the big cube's centre, so a cube held
off-centre lands off-centre by the same amount; a policy that imitates it inherits that unless it reads the offset
from its views.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command

TASKS = {"stack_cube": ("small", "big"), "place_in_bin": ("cube", "bin"), "pick_cube": ("cube", None)}
LIFTED = 0.02         # small cube centre this far above its resting height: in the air
XY_TOL = 0.02         # the task's success tolerance (sim.tasks.stack_cube.XY_TOL)
OPEN_AT = 0.7         # jaw opening (0 closed, 1 open) above which the cube counts as let go (as in success)


def state_row(env) -> dict:
    """The grasped cube ("small"), the place target ("big": the big cube, the bin, or the cube itself for pick_cube),
    the TCP and the jaw opening."""
    task = env.task
    obj, target = TASKS[task.name]
    small, tcp = task.body_pos(obj), env.arm.tcp_pos()
    big = task.body_pos(target) if target else small
    return {"small": small.round(4).tolist(), "big": big.round(4).tolist(), "tcp": tcp.round(4).tolist(),
            "opening": round(float(env.arm.opening()), 3)}


def wrap_step(env, log: list) -> None:
    inner = env.step

    def step(action):
        row = state_row(env)
        row["gripper_cmd"] = round(float(np.asarray(action)[7]), 3)
        out = inner(action)
        row["success_after"] = bool(out[4].get("success", False))
        log.append(row)
        return out

    env.step = step


def classify(log: list[dict], success: bool, task: str) -> dict:
    """The class of one episode (module docstring) with its grasp offset and (stack_cube) release error."""
    from action_images.sim.tasks.stack_cube import BASE_HALF, TOP_HALF

    stack = task == "stack_cube"
    top_half, base_half = TOP_HALF, BASE_HALF
    small = np.array([r["small"] for r in log])
    big = np.array([r["big"] for r in log])
    tcp = np.array([r["tcp"] for r in log])
    opening = np.array([r["opening"] for r in log])
    lifted = small[:, 2] > small[0, 2] + LIFTED
    rel = small - tcp                                  # a cube held high or low in the jaw is still held
    held = lifted & (opening < OPEN_AT) & (np.linalg.norm(rel[:, :2], axis=1) < 0.03) & (np.abs(rel[:, 2]) < 0.04)
    xy_err = np.linalg.norm(small[:, :2] - big[:, :2], axis=1)
    on_top = np.abs(small[:, 2] - big[:, 2] - top_half - base_half) < 0.01
    info = {"grasp_offset_m": None, "release_err_m": None, "final_xy_err_m": round(float(xy_err[-1]), 4),
            "big_moved_m": round(float(np.linalg.norm(big[-1, :2] - big[0, :2])), 4), "steps": len(log) - 1}
    # the jaw shut on nothing (a held cube keeps it 0.1-0.6 open): after a missed or lost grasp
    empty = (opening < 0.05) & ~held
    info["empty_closed_steps"] = int(empty.sum())
    info["reopened_after_empty"] = bool(empty.any() and (opening[int(np.flatnonzero(empty)[0]):] > OPEN_AT).any())
    if held.any():
        info["grasp_offset_m"] = round(float(np.median(np.linalg.norm(small[held, :2] - tcp[held, :2], axis=1))), 4)
    if held.any() and stack:
        last_held = int(np.flatnonzero(held)[-1])
        after = np.flatnonzero((opening > OPEN_AT) & (np.arange(len(log)) > last_held))
        if after.size:
            info["release_err_m"] = round(float(xy_err[int(after[0])]), 4)
            info["release_height_m"] = round(float(small[int(after[0]), 2] - big[int(after[0]), 2]
                                                   - top_half - base_half), 4)
    if success:
        cls = "success"
    elif not lifted.any():
        cls = "no_grasp"
    elif not stack:
        cls = "dropped" if small[-1, 2] < small[0, 2] + 0.01 else "other"
    elif not on_top[-1] and small[-1, 2] < top_half + 0.01 and xy_err[-1] > XY_TOL:
        cls = "dropped" if info["release_err_m"] is None or info["release_err_m"] > 0.06 else "released_off_target"
    elif info["release_err_m"] is not None and info["release_err_m"] > XY_TOL:
        cls = "released_off_target"
    elif on_top[-1] and xy_err[-1] <= XY_TOL and opening[-1] < OPEN_AT:
        cls = "not_released"
    else:
        cls = "other"
    return {"class": cls, **info}


def run(task: str, checkpoint: str | None, episodes: int, seed: int, rigs: str, sampler_steps: int,
        cameras: str | None, out: Path) -> list[dict]:
    """Policy episodes (``checkpoint``), or the scripted expert on the same seeds (``checkpoint`` None)."""
    rows = []
    if checkpoint is None:
        from action_images.data.collect import run_episode
        from action_images.seeds import episode_seed
        from action_images.sim.suites import get_suite

        env = get_suite("sim").make_env(task, render=False, rig_distribution=rigs, rig_views=4, image_size=64)
        for k in range(episodes):
            log: list[dict] = []
            wrap_step(env, log)
            rec = run_episode(env, episode_seed(seed, task, k), [], hold_steps=0)
            env.step = type(env).step.__get__(env)
            log.append(state_row(env))                  # the state the last step left
            rows.append({"episode": k, "success": bool(rec.success),
                         **classify(log, bool(rec.success), task)})
        env.close()
        return rows
    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner

    names = tuple(cameras.split(",")) if cameras else None
    settings = EvalSettings(tasks=(task,), episodes=episodes, seed=seed, rig_distribution=rigs, rig_views=4,
                            image_size=64, videos=0,
                            policy=PolicySettings(sampler_steps=sampler_steps, camera_names=names))
    runner = EpisodeRunner.from_checkpoint(checkpoint, out, settings)
    env = runner.open(task)                             # runner.episode reuses this env (its step wrapped)
    for k in range(episodes):
        log = []
        wrap_step(env, log)
        t0 = time.perf_counter()
        rec = runner.episode(task, k)
        env.step = type(env).step.__get__(env)
        log.append(state_row(env))
        row = {"episode": k, "success": bool(rec["success"]), **classify(log, rec["success"], task),
               "wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"  ep {k:2d}: {row['class']:20s} grasp offset {row['grasp_offset_m']} release err "
              f"{row['release_err_m']} final {row['final_xy_err_m']} shut on nothing {row['empty_closed_steps']} "
              f"steps", file=sys.stderr)
    runner.close()
    return rows


def summary(rows: list[dict]) -> dict:
    classes: dict[str, list[int]] = {}
    for r in rows:
        classes.setdefault(r["class"], []).append(r["episode"])

    def med(key: str, subset=None) -> float | None:
        v = [r[key] for r in (subset if subset is not None else rows) if r.get(key) is not None]
        return round(float(np.median(v)), 4) if v else None

    return {"successes": int(sum(r["success"] for r in rows)), "episodes": len(rows), "classes": classes,
            "grasp_offset_median_m": med("grasp_offset_m"),
            "grasp_offset_median_m_successes": med("grasp_offset_m", [r for r in rows if r["success"]]),
            "grasp_offset_median_m_failures": med("grasp_offset_m", [r for r in rows if not r["success"]]),
            "release_err_median_m": med("release_err_m"),
            "release_err_within_tol": int(sum(r["release_err_m"] is not None and r["release_err_m"] <= XY_TOL
                                              for r in rows)),
            "released": int(sum(r["release_err_m"] is not None for r in rows)),
            "jaw_shut_on_nothing": int(sum(r["empty_closed_steps"] > 0 for r in rows)),
            "jaw_shut_on_nothing_then_reopened": int(sum(r["reopened_after_empty"] for r in rows))}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="stack_cube", choices=tuple(TASKS))
    p.add_argument("--checkpoint", default="checkpoints/rig8-ctx-3h")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--rig-distribution", default="train", choices=("train", "heldout"))
    p.add_argument("--sampler-steps", type=int, default=6)
    p.add_argument("--policy-cameras", default=None, help="e.g. all (default: the checkpoint's, as eval)")
    p.add_argument("--json", default=None, help="default: bench/results/stack_cube_failures/TASK_rig8_ctx_3h.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out: dict = {"command": probe_command(__file__, argv),
                 "task": a.task, "checkpoint": a.checkpoint, "seed": a.seed, "rig_distribution": a.rig_distribution,
                 "sampler_steps": a.sampler_steps, "policy_cameras": a.policy_cameras}
    with tempfile.TemporaryDirectory() as tmp:
        pol = run(a.task, a.checkpoint, a.episodes, a.seed, a.rig_distribution, a.sampler_steps, a.policy_cameras,
                  Path(tmp))
    exp = run(a.task, None, a.episodes, a.seed, a.rig_distribution, a.sampler_steps, None, Path("."))
    out["policy"] = {"summary": summary(pol), "episodes": pol}
    out["expert"] = {"summary": summary(exp), "episodes": exp}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    path = Path(a.json or f"bench/results/stack_cube_failures/{a.task}_rig8_ctx_3h.json")
    atomic_write_json(path, out)
    print(json.dumps({"policy": out["policy"]["summary"], "expert": out["expert"]["summary"]}, indent=1))
    print(f"wrote {path} ({out['wall_s']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
