"""Why does the shipped world action model fail push_cube? A closed-loop probe, the expert on the same seeds, and the
push_cube demos of the training data.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/push_cube_failures.py \
        --checkpoint checkpoints/rig8-ctx-3h --episodes 10 --seed 4242 --data data/rig8 \
        --json bench/results/push_cube_failures.json

What it does (one process, one thread; about 1-2 minutes on the 2 shared cores):

1. ``--episodes`` closed-loop push_cube episodes of the checkpoint on the training rig distribution, built exactly as
   ``action-images eval --tasks push_cube --rig-distribution train --sampler-steps 6 --seed SEED`` builds them
   (:class:`EvalSettings` -> :meth:`EpisodeRunner.from_checkpoint`, whose ``episode`` runs the library's
   ``rollout``); ``env.step`` is wrapped to log, per control step, the cube and goal xy, their distance, the TCP, its
   lateral offset from the push line and signed distance behind the cube (as ``PushCube._off_line``), its height, the
   gripper command, the commanded target pose, the cube's tilt, and what the scripted expert would command from the
   same state (a DAgger-style label; the expert's phase machine is stepped along, which does not touch the env).
   Each plan's decoded keyframes are kept too. Then one plan from the *expert's* states (open loop, in-distribution
   input) at four push moments, and at task-neutral moments for push_cube and pick_cube, against the expert's
   targets.
2. The scripted expert (``collect.run_episode``, the loop of ``action-images collect``) on the same episode seeds,
   and the expert with one kind of policy-like error at a time (gripper 0.17, push yaw +20/+45 deg, xy target
   offsets of 1/2/3 cm held per 4-step chunk) on 30 seeds: how precise a pusher must be.
3. Classifies every policy failure (see :func:`classify`) with the step where it happens.
4. The push_cube demos of ``--data``: count, lengths, expert re-approaches (aborts, by replaying each demo's seed with
   the expert, render off, and checking that the replay reproduces the stored actions), and how many pixels the cube
   (and the 3.5 cm success radius) spans in the 64 px training views and the 48 px model input (segmentation of the
   episode's first frame in each of its 4 training-rig views), and how many training windows take a keyframe target
   from the frames recorded after success (``--hold-steps``).

Writes the per-episode summary (and the per-step logs) to ``--json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command

TASK = "push_cube"
LOW_Z = 0.06          # TCP below this: at pushing height (PUSH_Z = 0.03; cube top at 0.05)
MOVED = 0.01          # cube displacement that counts as "pushed"
TILT_DEG = 20.0       # a cube face this far off the table: knocked over


# ---- per-step geometry ---------------------------------------------------------------------------------------------
def cube_tilt_deg(env) -> float:
    """Angle between the world z axis and the cube's most vertical face normal (0 = resting flat)."""
    R = env.data.xmat[env.model.body("cube").id].reshape(3, 3)
    return float(np.degrees(np.arccos(np.clip(np.abs(R[2, :]).max(), -1.0, 1.0))))


def tool_yaw(quat_xyzw: np.ndarray) -> float:
    R = Rotation.from_quat(quat_xyzw).as_matrix()
    return float(np.arctan2(R[1, 0], R[0, 0]))


def state_row(env) -> dict:
    """The push geometry of the current state (PushCube._off_line's quantities, signed)."""
    task = env.task
    cube, goal = task.body_pos("cube"), task.goal_xy()
    tcp = env.arm.tcp_pos()
    d = goal - cube[:2]
    dist = float(np.linalg.norm(d))
    d = d / max(dist, 1e-6)
    rel = tcp[:2] - cube[:2]
    return {"cube_xy": cube[:2].round(4).tolist(), "cube_z": round(float(cube[2]), 4),
            "goal_xy": goal.round(4).tolist(), "dist": round(dist, 4),
            "tcp": tcp.round(4).tolist(), "tcp_z": round(float(tcp[2]), 4),
            # signed lateral offset from the cube->goal line (|.| > 0.02 makes the expert abort) and the distance
            # behind the cube along it (the expert aborts when it is < 0.02; the push target is 0.045 - 0.03)
            "lateral": round(float(rel[0] * d[1] - rel[1] * d[0]), 4), "behind": round(float(-(rel @ d)), 4),
            "tcp_cube_xy": round(float(np.linalg.norm(rel)), 4),
            "opening": round(env.arm.opening(), 3), "tilt_deg": round(cube_tilt_deg(env), 1)}


def wrap_step(env, log: list, label_with_expert: bool, phase_of=None):
    """Replace ``env.step`` by one that logs the state before each step, the command, and (optionally) the expert's
    label for the same state."""
    inner = env.step

    def step(action):
        row = state_row(env)
        a = np.asarray(action, dtype=np.float64)
        row.update(t=env.step_count, cmd_pos=a[:3].round(4).tolist(), cmd_yaw_deg=round(np.degrees(tool_yaw(a[3:7])), 1),
                   gripper_cmd=round(float(a[7]), 3),
                   tcp_yaw_deg=round(np.degrees(tool_yaw(env.arm.tcp_quat())), 1))
        if label_with_expert:
            e = env.task.expert(env)
            row.update(expert_pos=e[:3].round(4).tolist(), expert_yaw_deg=round(np.degrees(tool_yaw(e[3:7])), 1),
                       expert_phase=env.task.expert_phase,
                       cmd_vs_expert=round(float(np.linalg.norm(a[:3] - e[:3])), 4))
        if phase_of is not None:
            row["phase"] = phase_of()
        out = inner(action)
        row["success_after"] = bool(out[4].get("success", False))
        log.append(row)
        return out

    env.step = step


# ---- classification ------------------------------------------------------------------------------------------------
def classify(log: list[dict], success: bool) -> dict:
    """Failure class of one episode, with the control step where it shows.

    The *approach* is judged where the TCP first comes down to pushing height (z < 6 cm) before the cube has moved
    1 cm: ``onto_cube`` (TCP within 3 cm xy of the cube centre: it descends on the cube, skipping the 5.5 cm
    standoff), ``to_goal`` (within 5 cm of the goal marker: it went for the mark, not the cube), ``beside`` (more
    than 2 cm off the push line), ``in_front`` (on the goal side of the cube), ``behind`` (where the expert
    descends: on the line, behind the cube) or ``never_low`` (hovers above). A failed episode whose approach is not
    ``behind`` gets the approach as its class (the first thing that went wrong). After a good approach the *outcome*
    names it: ``never_pushes`` (cube never moved 1 cm), ``wrong_way`` (cube ends farther from the goal),
    ``drift_off_line`` (progress, but the final error is mostly across the initial cube->goal line and > 3.5 cm),
    ``stops_short`` (progress, error mostly along the line, short of the goal), ``overshoot``.
    ``tumbled`` (a cube face > 20 deg off the table at some step) is reported as a flag only: the expert's pushes
    rock the cube that far too."""
    c0, g = np.array(log[0]["cube_xy"]), np.array(log[0]["goal_xy"])
    dist0 = float(np.linalg.norm(g - c0))
    u = (g - c0) / dist0
    cubes = np.array([r["cube_xy"] for r in log])
    disp = np.linalg.norm(cubes - c0, axis=1)
    dists = np.array([r["dist"] for r in log])
    tz = np.array([r["tcp_z"] for r in log])
    t_moved = int(np.argmax(disp >= MOVED)) if (disp >= MOVED).any() else None
    t_low = int(np.argmax(tz < LOW_Z)) if (tz < LOW_Z).any() else None
    cf = np.array(log[-1]["cube_xy"])
    err = g - cf
    along, across = float(err @ u), float(abs(err[0] * u[1] - err[1] * u[0]))
    progress = dist0 - float(dists[-1])
    tilt = np.array([r["tilt_deg"] for r in log])
    tcp_goal = np.array([np.linalg.norm(np.array(r["tcp"][:2]) - np.array(r["goal_xy"])) for r in log])
    info = {"dist0": round(dist0, 4), "dist_final": round(float(dists[-1]), 4), "dist_min": round(float(dists.min()), 4),
            "t_dist_min": int(dists.argmin()), "progress": round(progress, 4),
            "final_err_along": round(along, 4), "final_err_across": round(across, 4),
            "t_first_low": t_low, "t_cube_moved": t_moved, "max_tilt_deg": float(tilt.max()),
            "tumbled": bool(tilt.max() > TILT_DEG), "min_tcp_z": round(float(tz.min()), 4),
            "min_tcp_goal_xy_before_cube_moved": round(float(tcp_goal[:t_moved].min()), 4) if t_moved else
            round(float(tcp_goal.min()), 4),
            "steps_low": int((tz < LOW_Z).sum()),
            # lift-offs while the cube is not on the goal: hand at pushing height, commanded >1.5 cm up (the demos'
            # post-success move, learned as a target by 81 % of the hand-low training windows)
            "premature_lift_steps": [i for i, r in enumerate(log) if r["tcp_z"] < LOW_Z and r["dist"] > 0.035
                                     and r["cmd_pos"][2] - r["tcp_z"] > 0.015
                                     and (i == 0 or not (log[i - 1]["tcp_z"] < LOW_Z
                                                         and log[i - 1]["cmd_pos"][2] - log[i - 1]["tcp_z"] > 0.015))],
            # the hand within 2 cm of the goal marker's centre while the cube is > 5 cm from it: went for the mark
            "t_hand_at_goal_without_cube": next((i for i, r in enumerate(log) if tcp_goal[i] < 0.02
                                                 and r["dist"] > 0.05), None),
            "steps_low_on_line": int(sum(abs(r["lateral"]) <= 0.02 and 0.0 <= r["behind"] <= 0.08 and r["tcp_z"] < LOW_Z
                                         for r in log))}
    approach, t_app = "never_low", None
    if t_low is not None and (t_moved is None or t_low <= t_moved):
        r = log[t_low]
        info["at_first_low"] = {k: r[k] for k in ("lateral", "behind", "tcp_cube_xy", "tcp_z")}
        info["at_first_low"]["tcp_goal_xy"] = round(float(tcp_goal[t_low]), 4)
        t_app = t_low
        if r["tcp_cube_xy"] < 0.03:
            approach = "onto_cube"
        elif tcp_goal[t_low] < 0.05 and r["tcp_cube_xy"] > 0.05:
            approach = "to_goal"
        elif abs(r["lateral"]) > 0.02:
            approach = "beside"
        elif r["behind"] < 0.0:
            approach = "in_front"
        else:
            approach = "behind"
    elif t_low is not None:                       # the cube moved before the hand got low (swept from above)
        approach, t_app = "hit_cube_from_above", t_moved
    info["approach"], info["t_approach"] = approach, t_app
    if success:
        return {"class": "success", "t": len(log), **info}
    if approach != "behind":
        return {"class": approach, "t": t_app, **info}
    if t_moved is None:
        return {"class": "never_pushes", "t": t_low, **info}
    if progress < 0.0:
        return {"class": "wrong_way", "t": t_moved, **info}
    if across > 0.035 and across >= abs(along):
        return {"class": "drift_off_line", "t": int(dists.argmin()), **info}
    if along > 0:
        return {"class": "stops_short", "t": int(dists.argmin()), **info}
    return {"class": "overshoot", "t": int(dists.argmin()), **info}


# ---- 1. the policy -------------------------------------------------------------------------------------------------
def run_policy(checkpoint: str, episodes: int, seed: int, sampler_steps: int, out: Path,
               open_loop: bool = True) -> tuple[list[dict], dict]:
    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner
    from action_images.seeds import episode_seed

    settings = EvalSettings(tasks=(TASK,), episodes=episodes, seed=seed, rig_distribution="train", rig_views=4,
                            image_size=64, videos=0, policy=PolicySettings(sampler_steps=sampler_steps))
    runner = EpisodeRunner.from_checkpoint(checkpoint, out, settings)
    if getattr(runner.policy.model.config, "history", 0):  # plans from replayed states, steps unrendered
        raise SystemExit(f"--checkpoint {checkpoint} reads past frames (train --history); this probe plans "
                         "from replayed expert states without the steps between")
    env = runner.open(TASK)                             # runner.episode reuses this env (its step wrapped)
    pol = runner.policy
    print(f"policy: views {pol.camera_names}, H={pol.horizon}, stride={pol.stride}, execute_k={pol.execute_k}, "
          f"model {pol.image_size} px", file=sys.stderr)
    results = []
    plan_inner, plan_at = pol.plan, []

    def plan(obs, cameras):                              # note the control step at which each chunk is planned
        plan_at.append(env.step_count)
        return plan_inner(obs, cameras)

    pol.plan = plan
    for k in range(episodes):
        log: list[dict] = []
        plan_at.clear()
        wrap_step(env, log, label_with_expert=True)
        t0 = time.perf_counter()
        rec = runner.episode(TASK, k)
        env.step = type(env).step.__get__(env)          # unwrap
        plans = [{"t": int(i), "decision": c.decision,
                  "current": c.current[:3].round(4).tolist(),
                  "keyframes": [None if not v else kf[:3].round(4).tolist() + [round(float(kf[7]), 3)]
                                for kf, v in zip(c.keyframes, c.valid)]}
                 for i, c in zip(plan_at, pol.chunks)]
        cls = classify(log, rec["success"])
        res = {"episode": k, "seed": episode_seed(seed, TASK, k), "success": rec["success"], "length": rec["length"],
               "decisions": rec["decisions"], "rig_seed": env.rig_seed, "classification": cls,
               "wall_s": round(time.perf_counter() - t0, 1), "steps": log, "plans": plans}
        results.append(res)
        print(f"  policy ep {k}: {'OK ' if rec['success'] else 'FAIL'} len {rec['length']:2d} "
              f"d0 {cls['dist0']:.3f} -> {cls['dist_final']:.3f} (min {cls['dist_min']:.3f}) class {cls['class']} "
              f"@ {cls['t']}  ({res['wall_s']} s)", file=sys.stderr)
    pol.plan = plan_inner
    ol: dict = {}
    if open_loop:
        ol["plans"] = open_loop_on_expert(runner, [episode_seed(seed, TASK, k) for k in range(episodes)])
        ol["generic"] = {t: open_loop_generic(runner, t, [episode_seed(seed, t, k) for k in range(episodes)])
                         for t in (TASK, "pick_cube")}
    runner.close()
    return results, ol



# ---- 1b. open loop from the expert's own states --------------------------------------------------------------------
def open_loop_on_expert(runner, seeds: list[int]) -> list[dict]:
    """One plan of the policy from the expert's state at four moments of each episode (start; hand above the
    behind point, about to descend; hand low behind the cube, about to push; mid-push), against the expert's own
    targets at the keyframe times (keyframe k = 1..H is the target commanded at step t + k*stride - 1, as in
    training). Separates per-plan error from closed-loop compounding: the input is exactly in-distribution."""
    from action_images.data.collect import run_episode

    env, pol = runner.env, runner.policy
    rows = []
    for s in seeds:
        phases: list[str] = []
        inner = env.step

        def step(action, inner=inner):
            phases.append(env.task.expert_phase)
            return inner(action)

        env.step = step
        env.observe_images = False
        rec = run_episode(env, s, [], hold_steps=10)        # the demo this seed would give (collect's loop)
        env.step = type(env).step.__get__(env)
        acts = rec.actions
        first = {p: phases.index(p) for p in ("descend", "push") if p in phases}
        push_steps = [i for i, p in enumerate(phases[:len(acts) - rec.hold_steps]) if p == "push"]  # before success
        moments = {"start": 0, "above_behind": first.get("descend"), "low_behind": first.get("push"),
                   "mid_push": push_steps[len(push_steps) // 2] if push_steps else None}
        for name, q in moments.items():
            if q is not None:
                rows.append({"seed": s, "moment": name, "t": q,
                             **_plan_vs_expert(env, pol, s, acts, q, rec.states[q])})
    return rows


def _plan_vs_expert(env, pol, seed: int, acts: np.ndarray, q: int, state: np.ndarray | None = None) -> dict:
    """Replay the expert's first ``q`` actions from reset(seed), plan once, compare the keyframes with the expert's
    targets at the keyframe times."""
    env.observe_images = False
    env.reset(seed=seed)
    for t in range(q):
        env.step(acts[t])
    env.observe_images = True
    obs = env.observe()
    replay_err = None if state is None else float(np.abs(obs["ee_pose"][:3] - state[:3]).max())
    pol.reset(seed)
    ch = pol.plan(obs, env.cameras)
    kf_err, kf = [], []
    for k in range(pol.horizon):
        e = acts[min(q + (k + 1) * pol.stride - 1, len(acts) - 1)]
        if not ch.valid[k]:
            kf.append(None)
            continue
        p = ch.keyframes[k]
        kf_err.append({"k": k + 1, "xy_err": round(float(np.linalg.norm(p[:2] - e[:2])), 4),
                       "z_err": round(float(p[2] - e[2]), 4), "g": round(float(p[7]), 3), "g_expert": round(float(e[7]), 3)})
        kf.append(p[:3].round(4).tolist())
    out = {"keyframe_errors": kf_err, "keyframes": kf, "replay_tcp_err": replay_err}
    if env.task_name == TASK:
        geo = state_row(env)
        last = next((ch.keyframes[k] for k in reversed(range(pol.horizon)) if ch.valid[k]), None)
        rel = None
        if last is not None:
            cube, goal = np.array(geo["cube_xy"]), np.array(geo["goal_xy"])
            d = (goal - cube) / max(np.linalg.norm(goal - cube), 1e-6)
            r = last[:2] - cube
            rel = {"to_cube_xy": round(float(np.linalg.norm(r)), 4),
                   "to_goal_xy": round(float(np.linalg.norm(last[:2] - goal)), 4),
                   "lateral": round(float(r[0] * d[1] - r[1] * d[0]), 4), "behind": round(float(-(r @ d)), 4),
                   "z": round(float(last[2]), 4)}
        out.update(last_keyframe_rel=rel, state={k: geo[k] for k in ("lateral", "behind", "tcp_z", "tcp_cube_xy", "dist")})
    return out


def open_loop_generic(runner, task: str, seeds: list[int]) -> dict:
    """The same one-plan comparison for any task at task-neutral moments (0, 1/3 and 2/3 of the expert's steps to
    success): push_cube against pick_cube (which the same model solves 14/20)."""
    from action_images.data.collect import run_episode

    env, pol = runner.suite.make_env(task, **runner.env_kwargs), runner.policy
    errs: dict[str, list] = {}
    for s in seeds:
        env.observe_images = False
        rec = run_episode(env, s, [], hold_steps=10)
        ts = len(rec.actions) - rec.hold_steps
        for name, q in (("t0", 0), ("third", ts // 3), ("two_thirds", 2 * ts // 3)):
            r = _plan_vs_expert(env, pol, s, rec.actions, q)
            errs.setdefault(name, []).extend(e["xy_err"] for e in r["keyframe_errors"])
            errs.setdefault("z_" + name, []).extend(abs(e["z_err"]) for e in r["keyframe_errors"])
    env.close()
    out = {m: {"keyframes": len(v), "xy_err_cm_median": round(100 * float(np.median(v)), 2),
               "xy_err_cm_mean": round(100 * float(np.mean(v)), 2)} for m, v in errs.items() if not m.startswith("z_")}
    allv = [x for m, v in errs.items() if not m.startswith("z_") for x in v]
    allz = [x for m, v in errs.items() if m.startswith("z_") for x in v]
    out["all"] = {"keyframes": len(allv), "xy_err_cm_median": round(100 * float(np.median(allv)), 2),
                  "xy_err_cm_mean": round(100 * float(np.mean(allv)), 2),
                  "abs_z_err_cm_median": round(100 * float(np.median(allz)), 2)}
    return out


def summarise_open_loop(rows: list[dict]) -> dict:
    out = {}
    for m in ("start", "above_behind", "low_behind", "mid_push"):
        rs = [r for r in rows if r["moment"] == m]
        errs = [e for r in rs for e in r["keyframe_errors"]]
        if not errs:
            continue
        rel = [r["last_keyframe_rel"] for r in rs if r["last_keyframe_rel"]]
        out[m] = {"plans": len(rs),
                  "xy_err_cm_median": round(100 * float(np.median([e["xy_err"] for e in errs])), 2),
                  "xy_err_cm_mean": round(100 * float(np.mean([e["xy_err"] for e in errs])), 2),
                  "z_err_cm_mean": round(100 * float(np.mean([e["z_err"] for e in errs])), 2),
                  "gripper_mean": round(float(np.mean([e["g"] for e in errs])), 3),
                  "last_kf_abs_lateral_cm_median": round(100 * float(np.median([abs(x["lateral"]) for x in rel])), 2),
                  "last_kf_behind_cm_median": round(100 * float(np.median([x["behind"] for x in rel])), 2),
                  "last_kf_to_cube_cm_median": round(100 * float(np.median([x["to_cube_xy"] for x in rel])), 2),
                  "last_kf_nearer_goal_than_cube": int(sum(x["to_goal_xy"] < x["to_cube_xy"] for x in rel)),
                  "last_kf_on_line_behind": int(sum(abs(x["lateral"]) <= 0.02 and x["behind"] >= 0.02 for x in rel))}
    return out


# ---- 2. the expert -------------------------------------------------------------------------------------------------
def run_expert(seeds: list[int]) -> list[dict]:
    from action_images.data.collect import run_episode
    from action_images.sim.suites import get_suite

    env = get_suite("sim").make_env(TASK, render=False, rig_distribution="train", rig_views=4, image_size=64)
    out = []
    for k, s in enumerate(seeds):
        log: list[dict] = []
        wrap_step(env, log, label_with_expert=False, phase_of=lambda: env.task.expert_phase)
        rec = run_episode(env, s, [], hold_steps=0)
        env.step = type(env).step.__get__(env)
        phases = [r["phase"] for r in log]
        aborts = sum(1 for a, b in zip(phases, phases[1:]) if a == "push" and b != "push")
        cls = classify(log, rec.success)
        out.append({"episode": k, "seed": s, "success": rec.success, "length": len(log), "aborts": aborts,
                    "phase_counts": {p: phases.count(p) for p in dict.fromkeys(phases)},
                    "dist0": cls["dist0"], "t_first_low": cls["t_first_low"], "t_cube_moved": cls["t_cube_moved"],
                    "max_tilt_deg": cls["max_tilt_deg"], "steps": log})
        print(f"  expert ep {k}: {'OK ' if rec.success else 'FAIL'} len {len(log):2d} aborts {aborts} "
              f"phases {out[-1]['phase_counts']}", file=sys.stderr)
    env.close()
    return out


# ---- 2b. how precise must a pusher be? the expert with the policy's kinds of error --------------------------------
PERTURBATIONS = (("expert", 0.0, None, 0.0), ("gripper_0.17", 0.0, 0.17, 0.0), ("push_yaw_+20deg", 0.0, None, 20.0), ("push_yaw_+45deg", 0.0, None, 45.0),
                 ("xy_bias_1cm", 0.01, None, 0.0), ("xy_bias_2cm", 0.02, None, 0.0), ("xy_bias_3cm", 0.03, None, 0.0))


def run_expert_perturbed(seeds: list[int], chunk: int = 4) -> dict:
    """The scripted expert with one kind of error at a time: a fixed gripper command, a yaw offset, or an xy offset
    on its targets drawn N(0, sigma^2) per axis and held for ``chunk`` steps (a target error that persists for one
    executed chunk, as a mislocalised keyframe would). Success rate, steps and knocked-over count per kind."""
    from action_images.sim.suites import get_suite

    env = get_suite("sim").make_env(TASK, render=False, rig_distribution="train", rig_views=4, image_size=64)
    out = {}
    for name, sigma, grip, yaw in PERTURBATIONS:
        ok, lens, tilted, aborts = 0, [], 0, 0
        for k, s in enumerate(seeds):
            rng = np.random.default_rng([s, 7])
            env.reset(seed=s)
            off, max_tilt, prev = np.zeros(2), 0.0, None
            for t in range(env.max_steps):
                a = env.expert_action()
                ph = env.task.expert_phase
                aborts += int(prev == "push" and ph != "push")
                prev = ph
                if t % chunk == 0:
                    off = rng.normal(0.0, sigma, 2) if sigma > 0 else np.zeros(2)
                a[:2] += off
                if grip is not None:
                    a[7] = grip
                if yaw and ph == "push":           # (elsewhere the expert's 6 deg gates would stall it)
                    a[3:7] = (Rotation.from_euler("z", np.radians(yaw)) * Rotation.from_quat(a[3:7])).as_quat()
                _, _, term, trunc, info = env.step(a)
                max_tilt = max(max_tilt, cube_tilt_deg(env))
                if term or trunc:
                    break
            ok += int(info["success"])
            lens.append(t + 1)
            tilted += int(max_tilt > TILT_DEG)
        out[name] = {"episodes": len(seeds), "successes": ok, "mean_length": round(float(np.mean(lens)), 1),
                     "tumbled": tilted, "push_aborts": aborts}
        print(f"  expert {name:14s}: {ok}/{len(seeds)} mean len {np.mean(lens):.1f} tumbled {tilted} "
              f"aborts {aborts}", file=sys.stderr)
    env.close()
    return out


# ---- 4. the training data ------------------------------------------------------------------------------------------
def analyse_data(root: str, max_seg: int, horizon: int = 4, stride: int = 2) -> dict:
    from action_images.data.lerobot import LeRobotDataset
    from action_images.data.lerobot_format import COLLECT_PATH, read_json
    from action_images.data.windows import center_box
    from action_images.sim.suites import get_suite

    ds = LeRobotDataset(root, check_files=False)
    collect_path = Path(root) / COLLECT_PATH
    collected = read_json(collect_path, "collection record").get("config", {}) if collect_path.exists() else {}
    noise = float(collected.get("action_noise") or 0.0)
    eps = [i for i in range(ds.num_episodes) if ds.episode_info(i).get("extra/task_name") == TASK]
    all_lens = {}
    for i in range(ds.num_episodes):
        all_lens.setdefault(ds.episode_info(i).get("extra/task_name"), []).append(int(ds.episode_lengths[i]))
    env = get_suite("sim").make_env(TASK, render=True, rig_distribution="train", rig_views=4, image_size=64)
    env.observe_images = False
    cube_gid = env.model.geom("cube").id
    rows = []
    for n, i in enumerate(eps):
        ep = ds.episode(i)
        info = ds.episode_info(i)
        seed = int(info["extra/seed"])
        obs, _ = env.reset(seed=seed)
        env.observe_images = False
        env.task.expert_reset()
        phases, max_err, max_rot, push_lat, push_behind, t_success = [], 0.0, 0.0, [], [], None
        for t in range(len(ep)):
            a = env.expert_action()
            phases.append(env.task.expert_phase)
            b = ep.actions[t]
            max_err = max(max_err, float(np.abs(a[[0, 1, 2, 7]] - b[[0, 1, 2, 7]]).max()))
            max_rot = max(max_rot, float(np.degrees((Rotation.from_quat(a[3:7]) * Rotation.from_quat(b[3:7]).inv())
                                                    .magnitude())))
            if phases[-1] == "push" and t_success is None:
                r = state_row(env)
                push_lat.append(abs(r["lateral"]))
                push_behind.append(r["behind"])
            info_t = env.step(b)[4]           # the stored action: the replay follows the demo exactly
            if t_success is None and info_t.get("success"):
                t_success = t + 1
        held = int(info.get("extra/hold_steps", 0) or 0)
        ts_stored = len(ep) - held                # collect's loop: the frames after success are the held ones
        # re-approaches read from the stored arrays alone: the commanded z rises >1.5 cm above a hand at push height
        rising = (ep.actions[:, 2] - ep.states[:, 2] > 0.015) & (ep.states[:, 2] < LOW_Z)
        starts = [t for t in range(len(ep)) if rising[t] and (t == 0 or not rising[t - 1])]
        ts = t_success if t_success is not None else len(phases)
        pre, post = phases[:ts], phases[ts:]
        abort = lambda ph: sum(1 for a, b in zip(ph, ph[1:]) if a == "push" and b != "push")   # noqa: E731
        aborts = abort(pre)
        aborts_after = abort(phases) - aborts
        xy = ep.states[:, :2]
        # training windows (data.windows): start frames 0..ts-1 only; keyframe k = frame min(t0 + k*stride, T-1),
        # its target actions[that - 1]. Which start frames see the expert's post-success re-approach as a target?
        T_ = len(ep)
        win = []
        for t0 in range(ts_stored):
            idx = [min(t0 + k * stride, T_ - 1) - 1 for k in range(1, horizon + 1)]
            post = [j for j in idx if j >= ts_stored]
            win.append((bool(ep.states[t0, 2] < LOW_Z), bool(post),
                        bool(any(ep.actions[j, 2] > LOW_Z for j in post))))
        row = {"episode_index": i, "seed": seed, "length": len(ep), "t_success": t_success,
               "t_success_stored": ts_stored,
               "windows": len(win), "windows_hand_low": sum(w[0] for w in win),
               "windows_with_post_success_keyframes": sum(w[1] for w in win),
               "windows_with_post_success_lift_keyframe": sum(w[2] for w in win),
               "windows_hand_low_with_post_success_lift_keyframe": sum(w[0] and w[2] for w in win),
               "stored_reapproaches_before_success": int(sum(t < ts_stored for t in starts)),
               "stored_reapproaches_after_success": int(sum(t >= ts_stored for t in starts)),
               "stored_hand_xy_travel_after_success": round(float(np.linalg.norm(np.diff(xy[ts_stored - 1:], axis=0),
                                                                                 axis=1).sum()), 4),
               "stored_hand_max_z_after_success": round(float(ep.states[ts_stored:, 2].max()), 4) if held else None,
               "aborts_before_success": aborts, "aborts_after_success": aborts_after,
               "phases_before_success": {p: pre.count(p) for p in dict.fromkeys(pre)},
               "phases_after_success": {p: post.count(p) for p in dict.fromkeys(post)},
               "after_success_max_tcp_rise": round(float(max([0.0] + [s_[2] - ep.states[ts][2]
                                                                       for s_ in ep.states[ts:]])), 4)
               if ts < len(ep) else 0.0,
               "replay_max_abs_pos_grip_err": round(max_err, 6), "replay_max_rot_err_deg": round(max_rot, 3),
               "push_max_lateral": round(max(push_lat), 4) if push_lat else None,
               "push_min_behind": round(min(push_behind), 4) if push_behind else None,
               "gripper_values": sorted({round(float(g), 3) for g in ep.actions[:, 7]})}
        row["_z"] = ep.states[:ts_stored, 2]
        if n < max_seg:                       # pixels of the cube / goal in the first frame of each training view
            env.reset(seed=seed)
            cams = env.cameras
            spans, spans48, counts, tol48, px_per_cm48 = [], [], [], [], []
            for cam in cams:
                seg = env.segmentation(cam.name)
                ys, xs = np.nonzero(seg == cube_gid)
                counts.append(int(len(xs)))
                span = float(max(np.ptp(xs) + 1, np.ptp(ys) + 1)) if len(xs) else 0.0
                spans.append(span)
                box = center_box(cam)
                scale = 48.0 / box[2]
                spans48.append(span * scale)
                # 1 cm / 3.5 cm on the table at the cube, in 48 px model pixels (mean over x and y directions)
                c = env.task.body_pos("cube")
                cam48 = cam.cropped(*box[:2], box[2], box[2]).resized(48, 48)
                uv, _ = cam48.project(np.array([c, c + [0.01, 0, 0], c + [0, 0.01, 0]]))
                ppc = float(np.mean([np.linalg.norm(uv[1] - uv[0]), np.linalg.norm(uv[2] - uv[0])]))
                px_per_cm48.append(ppc)
                tol48.append(3.5 * ppc)
            row.update(cube_px_count_64=counts, cube_span_px_64=spans, cube_span_px_48=[round(s, 1) for s in spans48],
                       px_per_cm_48=[round(p, 2) for p in px_per_cm48],
                       success_radius_px_48=[round(p, 1) for p in tol48])
        rows.append(row)
    env.close()
    lens = np.array([r["length"] for r in rows])
    ts_ = np.array([r["t_success"] or r["length"] for r in rows])
    ab = np.array([r["aborts_before_success"] for r in rows])
    ab_after = np.array([r["aborts_after_success"] for r in rows])
    seg_rows = [r for r in rows if "cube_span_px_64" in r]
    flat = lambda key: np.array([x for r in seg_rows for x in r[key]])      # noqa: E731
    summary = {
        "dataset": root, "push_cube_demos": len(rows), "all_tasks_demos": {k: len(v) for k, v in all_lens.items()},
        "mean_length_by_task": {k: round(float(np.mean(v)), 2) for k, v in all_lens.items()},
        "push_length": {"mean": round(float(lens.mean()), 2), "min": int(lens.min()), "max": int(lens.max()),
                        "p50": float(np.median(lens)), "hist": {int(v): int((lens == v).sum()) for v in np.unique(lens)}},
        "stored": {
            "steps_to_success": _stats(np.array([r["t_success_stored"] for r in rows], float)),
            "frames_after_success_fraction": round(float(sum(r["length"] - r["t_success_stored"] for r in rows))
                                                   / float(lens.sum()), 3),
            "demos_with_reapproach_before_success": int(sum(r["stored_reapproaches_before_success"] > 0
                                                            for r in rows)),
            "demos_with_reapproach_after_success": int(sum(r["stored_reapproaches_after_success"] > 0 for r in rows)),
            "hand_xy_travel_after_success_cm": _stats(100 * np.array([r["stored_hand_xy_travel_after_success"]
                                                                      for r in rows])),
            "hand_max_z_after_success_cm": _stats(100 * np.array([r["stored_hand_max_z_after_success"] for r in rows
                                                                  if r["stored_hand_max_z_after_success"]
                                                                  is not None])),
            # windows are drawn per episode, then a start frame: these fractions are the share of push_cube windows
            "window_share_with_post_success_keyframes": round(float(np.mean(
                [r["windows_with_post_success_keyframes"] / r["windows"] for r in rows])), 3),
            "window_share_with_post_success_lift_keyframe": round(float(np.mean(
                [r["windows_with_post_success_lift_keyframe"] / r["windows"] for r in rows])), 3),
            "hand_low_windows_with_post_success_lift_keyframe": [
                int(sum(r["windows_hand_low_with_post_success_lift_keyframe"] for r in rows)),
                int(sum(r["windows_hand_low"] for r in rows))],
            "frames_hand_low_before_success": int(sum(int((r["_z"] < LOW_Z).sum()) for r in rows)),
            "frames_hand_low_before_success_fraction_of_all_frames": round(
                float(sum(int((r["_z"] < LOW_Z).sum()) for r in rows)) / float(sum(sum(v) for v in all_lens.values())),
                4),
        },
        "replay_note": "replaying the stored actions reproduces the hand exactly but the pushed cube only to ~1 cm "
                       "(contact sensitivity), so the replay's phases after the first contact are approximate",
        "action_noise": noise,
        **({"noise_note": "collected with --action-noise: the stored actions are the expert's labels, not what ran, so "
                          "the replay's phases and aborts do not follow the demos, and a re-approach read from the "
                          "stored arrays also counts corrections of noise that pushed the hand down"}
           if noise > 0 else {}),
        "steps_to_success": {"mean": round(float(ts_.mean()), 2), "min": int(ts_.min()), "max": int(ts_.max())},
        "frames_after_success_fraction": round(float((lens - ts_).sum() / lens.sum()), 3),
        "demos_with_aborts_before_success": int((ab > 0).sum()), "aborts_before_success_total": int(ab.sum()),
        "aborts_before_success_hist": {int(v): int((ab == v).sum()) for v in np.unique(ab)},
        "demos_with_aborts_after_success": int((ab_after > 0).sum()),
        "phases_after_success_total": _sum_counts([r["phases_after_success"] for r in rows]),
        "phases_before_success_total": _sum_counts([r["phases_before_success"] for r in rows]),
        "after_success_max_tcp_rise_mean": round(float(np.mean([r["after_success_max_tcp_rise"] for r in rows])), 4),
        "push_max_lateral_before_success": _stats(np.array([r["push_max_lateral"] for r in rows
                                                            if r["push_max_lateral"] is not None])),
        "replay_max_abs_pos_grip_err": float(max(r["replay_max_abs_pos_grip_err"] for r in rows)),
        "replay_max_rot_err_deg": float(max(r["replay_max_rot_err_deg"] for r in rows)),
        "push_frames_before_success_fraction_of_all_frames": round(
            float(sum(r["phases_before_success"].get("push", 0) for r in rows))
            / float(sum(sum(v) for v in all_lens.values())), 4),
        "pixels": {"views": int(len(flat("cube_span_px_64"))),
                   "cube_span_px_64": _stats(flat("cube_span_px_64")),
                   "cube_span_px_48": _stats(flat("cube_span_px_48")),
                   "cube_pixel_count_64": _stats(flat("cube_px_count_64")),
                   "px_per_cm_48": _stats(flat("px_per_cm_48")),
                   "success_radius_px_48": _stats(flat("success_radius_px_48")),
                   "views_cube_invisible": int((flat("cube_px_count_64") == 0).sum())},
        "episodes": rows}
    for r in rows:
        r.pop("_z", None)
    return summary


def _sum_counts(dicts: list[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _stats(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    return {"mean": round(float(x.mean()), 2), "min": round(float(x.min()), 2), "p10": round(float(np.percentile(x, 10)), 2),
            "p50": round(float(np.median(x)), 2), "max": round(float(x.max()), 2)}


# ---- main ----------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/rig8-ctx-3h")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--sampler-steps", type=int, default=6, help="as the shipped claims rows (default 6)")
    p.add_argument("--data", default="data/rig8")
    p.add_argument("--seg-episodes", type=int, default=40, help="demos whose first frame is segmented for pixel sizes")
    p.add_argument("--json", default="bench/results/push_cube_failures.json")
    p.add_argument("--perturb-episodes", type=int, default=30, help="episodes per expert perturbation")
    p.add_argument("--skip-policy", action="store_true")
    p.add_argument("--keep-steps", action="store_true", help="keep per-step logs in the JSON (default: policy only)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from action_images.seeds import episode_seed

    t0 = time.perf_counter()
    out: dict = {"command": probe_command(__file__, argv),
                 "checkpoint": a.checkpoint, "seed": a.seed, "episodes": a.episodes, "sampler_steps": a.sampler_steps,
                 "rig_distribution": "train"}
    seeds = [episode_seed(a.seed, TASK, k) for k in range(a.episodes)]
    if not a.skip_policy:
        with tempfile.TemporaryDirectory() as tmp:
            pol, ol = run_policy(a.checkpoint, a.episodes, a.seed, a.sampler_steps, Path(tmp))
        out["open_loop_on_expert_states"] = {"summary": summarise_open_loop(ol["plans"]),
                                             "generic_moments_by_task": ol["generic"], "plans": ol["plans"]}
        print(json.dumps({k: v for k, v in out["open_loop_on_expert_states"].items() if k != "plans"}, indent=1),
              file=sys.stderr)
        classes: dict[str, list] = {}
        for r in pol:
            classes.setdefault(r["classification"]["class"], []).append(r["episode"])
        approaches: dict[str, list] = {}
        for r in pol:
            approaches.setdefault(r["classification"]["approach"], []).append(r["episode"])
        out["policy"] = {"successes": int(sum(r["success"] for r in pol)), "classes": classes,
                         "approaches": approaches,
                         "tumbled": [r["episode"] for r in pol if r["classification"]["tumbled"]],
                         "hand_at_goal_without_cube": [r["episode"] for r in pol
                                                       if r["classification"]["t_hand_at_goal_without_cube"] is not None],
                         "premature_lifts_per_episode": [len(r["classification"]["premature_lift_steps"]) for r in pol],
                         "failures_never_improving_after_step_25": [
                             r["episode"] for r in pol if not r["success"]
                             and r["classification"]["t_dist_min"] <= 25],
                         "mean_abs_yaw_err_vs_expert_label_deg": round(float(np.mean(
                             [abs((s["cmd_yaw_deg"] - s["expert_yaw_deg"] + 90) % 180 - 90)
                              for r in pol for s in r["steps"]])), 1),
                         "mean_gripper_cmd": round(float(np.mean([s["gripper_cmd"] for r in pol for s in r["steps"]])),
                                                   3),
                         "min_tcp_z_median": float(np.median([r["classification"]["min_tcp_z"] for r in pol])),
                         "mean_cmd_vs_expert_m": round(float(np.mean([s["cmd_vs_expert"] for r in pol
                                                                      for s in r["steps"]])), 4),
                         "episodes": pol}
    exp = run_expert(seeds)
    out["expert"] = {"successes": int(sum(r["success"] for r in exp)),
                     "mean_length": round(float(np.mean([r["length"] for r in exp])), 2),
                     "aborts_total": int(sum(r["aborts"] for r in exp)),
                     "episodes": exp if a.keep_steps else [{k: v for k, v in r.items() if k != "steps"} for r in exp]}
    out["expert_perturbed"] = run_expert_perturbed([episode_seed(a.seed, TASK, k) for k in range(a.perturb_episodes)])
    print("data ...", file=sys.stderr)
    from action_images.baselines import read_meta        # the checkpoint's window shape (H keyframes, stride)

    mcfg = read_meta(a.checkpoint)[1].get("config", {})
    out["data"] = analyse_data(a.data, a.seg_episodes, int(mcfg.get("horizon", 4)), int(mcfg.get("stride", 2)))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    path = Path(a.json)
    atomic_write_json(path, out)
    print(f"wrote {path} ({out['wall_s']} s)", file=sys.stderr)
    if "policy" in out:
        print(json.dumps({"policy_classes": out["policy"]["classes"], "expert_successes": out["expert"]["successes"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
