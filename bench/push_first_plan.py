"""Does the policy know where to go? Its first plan of each push_cube (stack_cube, place_in_bin) episode against the
expert's targets.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/push_first_plan.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-9k --episodes 100 --seed 4242 \
        --json bench/results/push_first_plan/first_plan_9k.json

For each episode seed (the scenes ``action-images eval --tasks push_cube --rig-distribution train --seed SEED``
builds), the scripted expert (in ``--push-style``, the style of the checkpoint's push demos) runs once with
rendering off (``collect.run_episode``, the loop of ``collect``) to give its targets; then the policy plans once
from the episode's first observation (every rig view, as the shipped evaluation runs it), and each valid keyframe
k is compared with the expert's target at the same control step (``k * stride - 1``, as in training). Positions
are taken relative to the cube's centre in the frame of the push line (``behind``: along goal -> cube, so the jaw
expert's landing point is +5.5 cm, the cage's 0; ``lateral``: across it).

What it tells apart: a model that knows the push direction puts its keyframes on the expert's side of the cube
(small angle between cube -> plan and cube -> expert target), even if at the wrong distance; a model that averages
over directions collapses them toward the cube (slope of plan on expert near 0, angles spread over ±180°). The
angles are compared with a shuffled control: the same plans against another episode's expert targets. ``ahead``:
how far past the expert's target toward the goal the plan lies, overall and for the scenes with the goal nearer
and farther than the median push distance (a plan drawn toward the mark lies farther ahead when the mark is
farther away; a plan that leads the demos along their path does not). ``time_shift``: for each keyframe, the shift
of the expert's path in control steps that the plans match best (positive: the plans run ahead of the demos).
``fit``: the plans' offsets from the cube regressed on two unit vectors, away from the goal (where the expert comes
down) and toward the hand's start, in centimetres for plan and expert alike.

``--counterfactual`` asks the policy directly whether it looks at the mark: from each first observation it plans
again with the mark moved to the cube's other side (reflected through the cube's centre), with the mark hidden
under the table, and with the scene as is but another draw of the sampler noise (the floor against which the other
two are read); the first two use the same noise as the plan they are compared with. A plan that follows the mark
moves as the expert's targets do under the reflection (through the cube: ``reflect_gain`` 1); one that ignores it
moves by no more than the noise floor (gain 0).

``--start-step N`` plans from the expert's own state after N of its steps instead of the first observation (the
expert's actions replayed from the reset), and compares with the expert's targets from there on, in the frame of
the cube where it is then: whether the plans lead the demos along the push in the middle of it too.

``--task place_in_bin`` or ``stack_cube`` asks the same of the grasping tasks that carry a cube somewhere: "cube" is
the cube the hand grasps (``cube``; stack_cube's ``small``) and "goal" where it goes (the bin; the big cube), so
``fit_plan_away_cm`` < 0 is a grasp drawn toward the place, and the counterfactual moves the bin or the big cube
as it moves the mark. For push_cube and stack_cube the counterfactual also plans with the two objects' colours
exchanged and nothing moved (``swap``): a policy that finds the object to grasp or push by the colour its
instruction names goes to the other one; one that finds it by shape stays. For stack_cube it also plans with the
two cubes' sizes exchanged, each resting on the table where it was, colours kept (``sizes``; from the first
observation only, where both cubes rest on the table): a policy that takes the small cube for the one to move goes
to the other one.

Per keyframe the summary also reads which way the plans miss (``misses_over_2cm*``, ``miss_along/across``): of the
plans more than 2 cm (xy) from the expert's target, how many point toward the goal, and how long their parts along
the cube -> goal line and across it are; and the plans' and the expert's heights. ``--summarise JSON`` computes the
summaries again from an earlier run's recorded episodes, without a model:

    python bench/push_first_plan.py --summarise bench/results/first_plan_grasp/counterfactual_stack_cube_9k.json \
        --json bench/results/first_plan_grasp/miss_direction_stack_cube_9k.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command

TASK = "push_cube"
OBJECTS = {"push_cube": ("cube", "goal"), "place_in_bin": ("cube", "bin"), "stack_cube": ("small", "big")}
SWAPPABLE = ("push_cube", "stack_cube")   # one geom each, named as its body: --counterfactual swaps their colours
NEAR = 0.03          # expert targets this close to the cube's centre have no direction to compare
FAR = 0.06           # a counterfactual plan this far from the plan it is compared with has gone elsewhere
MISS = 0.02          # a plan this far from the expert's target (xy) is a miss whose direction is read


def goal_region(task: str) -> tuple:
    """(low, high) of the table region where the task's reset places the goal (the mark, the bin, the base)."""
    from action_images.sim.tasks import place_in_bin, push_cube, stack_cube

    return {"push_cube": (push_cube.GOAL_LOW, push_cube.GOAL_HIGH),
            "place_in_bin": (place_in_bin.BIN_XY_LOW, place_in_bin.BIN_XY_HIGH),
            "stack_cube": (stack_cube.BASE_XY_LOW, stack_cube.BASE_XY_HIGH)}[task]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def line_frame(xy: np.ndarray, cube: np.ndarray, goal: np.ndarray) -> tuple[float, float]:
    """(behind, lateral) of ``xy`` relative to the cube centre: behind along goal -> cube, lateral to the left of
    cube -> goal."""
    from action_images.sim.tasks.push_cube import push_line_frame

    along, across = push_line_frame(np.asarray(xy, dtype=float) - cube, _unit(goal - cube))
    return -float(along), float(across)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Signed angle from 2-D vector a to b, in degrees."""
    return float(np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b)))


def _xy(ch, j: int) -> list[float] | None:
    return ch.keyframes[j][:2].round(4).tolist() if ch.valid[j] else None


def plan_sizes_exchanged(env, pol, seed: int, a: str, b: str):
    """The plan from the scene with the cubes ``a`` and ``b`` (one box geom each, named as its body) of each other's
    size, each still resting on the table at its place (no step; the scene restored after)."""
    import mujoco

    m = env.model
    ga, gb = m.geom(a).id, m.geom(b).id
    size0, qpos0 = m.geom_size.copy(), env.data.qpos.copy()
    m.geom_size[[ga, gb]] = size0[[gb, ga]]
    for body, g in ((a, ga), (b, gb)):
        move_body(env, body, np.r_[env.task.body_pos(body)[:2], m.geom_size[g][2]])
    pol.reset(seed)                                 # the same sampler noise as the plan compared with
    chunk = pol.plan(env.observe(), env.cameras)
    m.geom_size[:], env.data.qpos[:] = size0, qpos0
    mujoco.mj_forward(m, env.data)
    return chunk


def move_body(env, body: str, pos: np.ndarray) -> None:
    """Put ``body``'s origin at world ``pos`` without a step: a free body (stack_cube's big cube) through its joint,
    a static one (the mark, the bin) through ``model.body_pos``; then ``mj_forward`` for the render."""
    import mujoco

    m = env.model
    bid = m.body(body).id
    jnt = m.body_jntadr[bid]
    if m.body_jntnum[bid] and m.jnt_type[jnt] == mujoco.mjtJoint.mjJNT_FREE:
        adr = m.jnt_qposadr[jnt]
        env.data.qpos[adr:adr + 3] = pos
    else:                                           # body_pos is in the parent's frame: the world's, here
        if m.body_parentid[bid] != 0:
            raise ValueError(f"move_body: {body!r} hangs off another body; only the world's children are moved")
        m.body_pos[bid] = pos
    mujoco.mj_forward(m, env.data)


def first_plans(checkpoint: str, episodes: int, seed: int, sampler_steps: int, cfg_scale: float | None,
                style: str = "jaw", counterfactual: bool = False, start_step: int = 0, task: str = TASK
                ) -> list[dict]:
    """Per episode: the plan's keyframes beside the expert's targets, in the frame of the grasped or pushed cube and
    the place it goes (``OBJECTS[task]``); with ``counterfactual``, also the plans with the goal moved."""
    import mujoco

    from action_images.data.collect import run_episode
    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner
    from action_images.seeds import episode_seed

    pol_kw = {"sampler_steps": sampler_steps, "camera_names": ("all",)}
    if cfg_scale is not None:
        pol_kw["cfg_scale"] = cfg_scale
    obj, target = OBJECTS[task]
    settings = EvalSettings(tasks=(task,), episodes=episodes, seed=seed, rig_distribution="train", rig_views=4,
                            image_size=64, videos=0, policy=PolicySettings(**pol_kw))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runner = EpisodeRunner.from_checkpoint(checkpoint, Path(tmp), settings)
        if getattr(runner.policy.model.config, "history", 0):  # plans from replayed states, steps unrendered
            raise SystemExit(f"--checkpoint {checkpoint} reads past frames (train --history); this probe plans "
                             "from replayed expert states without the steps between")
        env = runner.open(task)
        if task == TASK:
            env.task.style = style                  # the expert whose targets the plans are compared with
        pol = runner.policy
        for k in range(episodes):
            s = episode_seed(seed, task, k)
            env.observe_images = False
            acts = run_episode(env, s, [], hold_steps=0).actions
            env.observe_images = True
            obs, _ = env.reset(seed=s)
            start = min(start_step, len(acts) - 1)
            if start:                               # the expert's own state after ``start`` of its steps
                env.observe_images = False
                for a in acts[:start - 1]:
                    env.step(a)
                env.observe_images = True
                obs = env.step(acts[start - 1])[0]
            acts = acts[start:]                     # the expert's targets from here on
            cube, goal = env.task.body_pos(obj)[:2].copy(), env.task.body_pos(target)[:2].copy()
            pol.reset(s)
            ch = pol.plan(obs, env.cameras)
            if counterfactual:
                gid = env.model.body(target).id
                body_pos0, qpos0 = env.model.body_pos[gid].copy(), env.data.qpos.copy()
                z = env.task.body_pos(target)[2]
                variants = {}
                for name, pos in (("reflect", np.r_[2 * cube - goal, z]), ("hide", np.r_[goal, -0.5])):
                    move_body(env, target, pos)
                    pol.reset(s)                        # the same sampler noise as the plan compared with
                    variants[name] = pol.plan(env.observe(), env.cameras)
                env.model.body_pos[gid], env.data.qpos[:] = body_pos0, qpos0
                mujoco.mj_forward(env.model, env.data)
                if task in SWAPPABLE:                   # the two objects' colours exchanged, nothing moved
                    rgba = env.model.geom_rgba
                    a_id, b_id = env.model.geom(obj).id, env.model.geom(target).id
                    rgba[[a_id, b_id]] = rgba[[b_id, a_id]]
                    pol.reset(s)
                    variants["swap"] = pol.plan(env.observe(), env.cameras)
                    rgba[[a_id, b_id]] = rgba[[b_id, a_id]]
                if task == "stack_cube" and not start:  # the two cubes' sizes exchanged, each on the table
                    variants["sizes"] = plan_sizes_exchanged(env, pol, s, obj, target)
                pol.reset(s + 1_000_003)                # another noise draw: the floor
                variants["noise"] = pol.plan(obs, env.cameras)
            kfs = []
            for j in range(pol.horizon):
                t = (j + 1) * pol.stride - 1
                e = acts[min(t, len(acts) - 1)]
                p = ch.keyframes[j] if ch.valid[j] else None
                kfs.append({"k": j + 1, "expert": [round(v, 4) for v in line_frame(e[:2], cube, goal)],
                            "expert_z": round(float(e[2]), 4),
                            "plan": None if p is None else [round(v, 4) for v in line_frame(p[:2], cube, goal)],
                            "plan_z": None if p is None else round(float(p[2]), 4),
                            "expert_xy": e[:2].round(4).tolist(),
                            "plan_xy": None if p is None else p[:2].round(4).tolist(),
                            # the expert's episode ended before this step: no target to compare with
                            "expert_done": t >= len(acts)})
                if counterfactual:
                    kfs[-1].update({f"{n}_xy": _xy(c, j) for n, c in variants.items()})
            rows.append({"episode": k, "seed": s, "start_step": start, "cube_xy": cube.round(4).tolist(),
                         "goal_xy": goal.round(4).tolist(), "hand_xy": obs["ee_pose"][:2].round(4).tolist(),
                         "keyframes": kfs, "stride": pol.stride, "expert_path": acts[:, :3].round(4).tolist()})
            print(f"  ep {k}: last kf plan {kfs[-1]['plan']} expert {kfs[-1]['expert']}", file=sys.stderr)
        runner.close()                          # and with it the env
    return rows


def _used(kf: dict) -> bool:
    """A keyframe the summaries compare: decoded, and the expert still running at its step."""
    return kf["plan"] is not None and not kf.get("expert_done", False)


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation, or None where it is undefined (fewer than 3 points, or a constant)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y)[0]), 3)


def best_shift(rows: list[dict], shifts=range(-2, 9)) -> dict:
    """For each keyframe k, the time shift (control steps) of the expert's path that the plans match best: the median
    3-D distance between keyframe k and the expert's target at step ``k * stride - 1 + shift``, per shift. A plan
    that runs ahead of the demos matches a later step (shift > 0)."""
    out = {}
    H = max(len(r["keyframes"]) for r in rows)
    for j in range(H):
        med = {}
        for sh in shifts:
            d = []
            for r in rows:
                kf = r["keyframes"][j]
                if not _used(kf) or "expert_path" not in r:
                    continue
                path = np.asarray(r["expert_path"])
                t = int(np.clip((j + 1) * r["stride"] - 1 + sh, 0, len(path) - 1))
                d.append(np.linalg.norm(np.r_[kf["plan_xy"], kf["plan_z"]] - path[t]))
            if d:
                med[sh] = round(100 * float(np.median(d)), 2)
        if med:
            out[f"k{j + 1}"] = {"median_cm_by_shift": med, "best_shift": min(med, key=med.get)}
    return out


def summarise(rows: list[dict], rng_seed: int = 0, task: str = TASK) -> dict:
    """Slopes of plan on expert (behind, lateral), angles cube -> plan vs cube -> expert with a shuffled control, and
    how far the plans lead the expert along the push line (``task``: whose goal region the counterfactual reads)."""
    out: dict = {}
    H = max(len(r["keyframes"]) for r in rows)
    # the shuffled control pairs each episode with the next one in a random cycle: never with itself
    order = np.random.default_rng(rng_seed).permutation(len(rows))
    perm = np.empty(len(rows), dtype=int)
    perm[order] = np.roll(order, -1)
    for j in range(H):
        pe, ee, ang, ang_ctrl, dist_p, dist_e, miss = [], [], [], [], [], [], []
        for i, r in enumerate(rows):
            kf = r["keyframes"][j]
            if not _used(kf):
                continue
            pe.append(kf["plan"])
            ee.append(kf["expert"])
            e_rel = np.array(kf["expert_xy"]) - r["cube_xy"]
            p_rel = np.array(kf["plan_xy"]) - r["cube_xy"]
            dist_p.append(float(np.linalg.norm(p_rel)))
            dist_e.append(float(np.linalg.norm(e_rel)))
            miss.append(float(np.linalg.norm(p_rel - e_rel)))
            if np.linalg.norm(e_rel) >= NEAR and np.linalg.norm(p_rel) > 1e-4:
                ang.append(angle_deg(e_rel, p_rel))
                o = rows[perm[i]]           # another episode's expert offset, in this episode's frame of the table
                o_rel = np.array(o["keyframes"][j]["expert_xy"]) - o["cube_xy"]
                if np.linalg.norm(o_rel) >= NEAR:
                    ang_ctrl.append(angle_deg(o_rel, p_rel))
        if not pe:
            continue
        pe, ee = np.array(pe), np.array(ee)
        # how far past the expert's target toward the goal the plan lies, against the cube-to-goal distance: a plan
        # drawn toward the mark would lie farther past it when the mark is farther away
        push = np.array([np.linalg.norm(np.subtract(r["goal_xy"], r["cube_xy"])) for r in rows
                         if _used(r["keyframes"][j])])
        ahead = ee[:, 0] - pe[:, 0]
        near = push < np.median(push)
        slope = lambda y, x: float((x @ y) / max(x @ x, 1e-12))      # noqa: E731  least squares through 0
        a, c = np.abs(ang), np.abs(ang_ctrl)
        fit = direction_fit([r for r in rows if _used(r["keyframes"][j])], j)
        out[f"k{j + 1}"] = {
            "plans": len(pe),
            "xy_miss_cm_median": round(100 * float(np.median(miss)), 2),
            "expert_behind_cm_median": round(100 * float(np.median(ee[:, 0])), 2),
            "plan_behind_cm_median": round(100 * float(np.median(pe[:, 0])), 2),
            "expert_abs_lateral_cm_median": round(100 * float(np.median(np.abs(ee[:, 1]))), 2),
            "plan_abs_lateral_cm_median": round(100 * float(np.median(np.abs(pe[:, 1]))), 2),
            "expert_to_cube_cm_median": round(100 * float(np.median(dist_e)), 2),
            "plan_to_cube_cm_median": round(100 * float(np.median(dist_p)), 2),
            "slope_behind": round(slope(pe[:, 0], ee[:, 0]), 3),
            "slope_lateral": round(slope(pe[:, 1], ee[:, 1]), 3),
            "angle_compared": len(a),
            "abs_angle_deg_median": round(float(np.median(a)), 1) if len(a) else None,
            "within_45deg": int((a <= 45).sum()), "beyond_90deg": int((a > 90).sum()),
            "control_abs_angle_deg_median": round(float(np.median(c)), 1) if len(c) else None,
            "control_within_45deg": int((c <= 45).sum()), "control_compared": len(c),
            "ahead_cm_median": round(100 * float(np.median(ahead)), 2),
            "ahead_cm_median_nearer_half": round(100 * float(np.median(ahead[near])), 2),
            "ahead_cm_median_farther_half": round(100 * float(np.median(ahead[~near])), 2),
            "ahead_vs_push_distance_spearman": _spearman(push, ahead),
            **fit,
            **miss_direction(rows, j),
        }
        cf = goal_response(rows, j, goal_region(task))
        if cf:
            out[f"k{j + 1}"]["goal_response"] = cf
    return out


def direction_fit(rows: list[dict], j: int) -> dict:
    """Least squares of keyframe j's offset from the cube (plan and expert) on two unit vectors per scene: ``away``
    from the goal (goal -> cube, where the expert comes down) and ``hand`` (cube -> the hand's start); coefficients
    in cm, and the share of the plans' offsets the two explain (R^2; about 0 for plans that follow neither). Only
    from the first observation: later the hand is behind the cube already and the two directions coincide."""
    if len(rows) < 3 or any(r.get("start_step", 0) for r in rows):
        return {}
    X, P, E = [], [], []
    for r in rows:
        cube, kf = np.asarray(r["cube_xy"]), r["keyframes"][j]
        X.append(np.stack([_unit(cube - np.asarray(r["goal_xy"])), _unit(np.asarray(r["hand_xy"]) - cube)], 1))
        P.append(np.asarray(kf["plan_xy"]) - cube)
        E.append(np.asarray(kf["expert_xy"]) - cube)
    X, P, E = np.concatenate(X), np.concatenate(P), np.concatenate(E)
    cp = np.linalg.lstsq(X, P, rcond=None)[0]
    ce = np.linalg.lstsq(X, E, rcond=None)[0]
    r2 = 1 - float(((P - X @ cp) ** 2).sum()) / max(float((P ** 2).sum()), 1e-12)
    return {"fit_plan_away_cm": round(100 * float(cp[0]), 2), "fit_plan_hand_cm": round(100 * float(cp[1]), 2),
            "fit_plan_r2": round(r2, 3),
            "fit_expert_away_cm": round(100 * float(ce[0]), 2), "fit_expert_hand_cm": round(100 * float(ce[1]), 2)}


def miss_direction(rows: list[dict], j: int, over: float = MISS) -> dict:
    """Which way keyframe j's plans miss the expert's target, over the misses longer than ``over`` (xy): how many
    point toward the goal (along cube -> goal), and the median length of their parts along that line and across it,
    in cm; and the median heights of plan and expert (all compared keyframes), in cm. A grasp drawn toward where the
    cube goes next misses along the line, toward the goal, at the expert's height; one drawn early upward misses
    in height; an imprecise one misses in every direction alike."""
    miss, line, z_plan, z_expert = [], [], [], []
    for r in rows:
        kf = r["keyframes"][j]
        if not _used(kf):
            continue
        miss.append(np.asarray(kf["plan_xy"]) - np.asarray(kf["expert_xy"]))
        line.append(_unit(np.asarray(r["goal_xy"]) - np.asarray(r["cube_xy"])))
        if kf.get("plan_z") is not None and kf.get("expert_z") is not None:
            z_plan.append(kf["plan_z"])
            z_expert.append(kf["expert_z"])
    if not miss:
        return {}
    miss, line = np.array(miss), np.array(line)
    along = (miss * line).sum(1)
    across = miss[:, 0] * -line[:, 1] + miss[:, 1] * line[:, 0]
    big = np.linalg.norm(miss, axis=1) > over
    cm = lambda v: round(100 * float(np.median(v)), 2) if len(v) else None    # noqa: E731
    return {f"misses_over_{round(100 * over)}cm": int(big.sum()),
            f"misses_over_{round(100 * over)}cm_toward_goal": int((along[big] > 0).sum()),
            "miss_along_cm_median": cm(np.abs(along[big])), "miss_across_cm_median": cm(np.abs(across[big])),
            "plan_z_cm_median": cm(z_plan), "expert_z_cm_median": cm(z_expert)}


def goal_response(rows: list[dict], j: int, region: tuple | None = None) -> dict:
    """How keyframe j's plan moves when the mark moves (``--counterfactual``): ``reflect_gain``, the least-squares
    slope of the plans' shifts on the expert's (its target reflected through the cube's centre, as the expert's
    landing is when the mark is; None where the expert's target hardly moves, median shift under 2 cm);
    ``reflect_self_gain``, the slope on the plan's own offset reflected through the cube (1: the plan turns with the
    mark, whatever its distance from the cube); median shifts in cm, the expert's along the push for scale, and the
    shift along the push over the scenes whose reflected mark lies where the task places marks (``in_range``);
    ``hide`` and ``noise`` shifts (mark under the table; another sampler draw on the scene as is). ``region``:
    (low, high) of the task's goal region (default push_cube's, :func:`goal_region`)."""
    low, high = region if region is not None else goal_region(TASK)

    pd, ed, od, sh = [], [], [], {"reflect": [], "hide": [], "noise": []}
    along_p, along_e, in_range = [], [], []
    for r in rows:
        kf = r["keyframes"][j]
        if not _used(kf) or any(kf.get(f"{n}_xy") is None for n in sh):
            continue
        cube, p = np.asarray(r["cube_xy"]), np.asarray(kf["plan_xy"])
        d = _unit(np.asarray(r["goal_xy"]) - cube)
        e_shift = -2 * (np.asarray(kf["expert_xy"]) - cube)       # the expert's target reflected through the cube
        p_shift = np.asarray(kf["reflect_xy"]) - p
        pd.append(p_shift)
        ed.append(e_shift)
        od.append(-2 * (p - cube))
        mark = 2 * cube - np.asarray(r["goal_xy"])
        in_range.append(bool(np.all(mark >= low) and np.all(mark <= high)))
        along_p.append(float(p_shift @ d))
        along_e.append(float(e_shift @ d))
        for n in sh:
            sh[n].append(float(np.linalg.norm(np.asarray(kf[f"{n}_xy"]) - p)))
    if not pd:
        return {}
    e_moves = float(np.median(np.linalg.norm(ed, axis=1))) >= 0.02
    pd, ed, od = np.concatenate(pd), np.concatenate(ed), np.concatenate(od)
    inside = np.array(along_p)[np.array(in_range)]
    out = {"scenes": len(along_p),
           "reflect_gain": round(float(pd @ ed / max(ed @ ed, 1e-12)), 3) if e_moves else None,
           "reflect_self_gain": round(float(pd @ od / max(od @ od, 1e-12)), 3),
           "reflect_along_cm_median": round(100 * float(np.median(along_p)), 2),
           "expert_reflect_along_cm_median": round(100 * float(np.median(along_e)), 2),
           "in_range_scenes": int(len(inside)),
           "reflect_along_cm_median_in_range": round(100 * float(np.median(inside)), 2) if len(inside) else None}
    out.update({f"{n}_shift_cm_median": round(100 * float(np.median(v)), 2) for n, v in sh.items()})
    out.update(_swap_response(rows, j))
    out.update(_swap_response(rows, j, "sizes"))
    return out


def _swap_response(rows: list[dict], j: int, name: str = "swap") -> dict:
    """Keyframe j's plan with the two objects' colours exchanged (``swap_xy``; ``name`` "sizes": stack_cube's cubes'
    sizes, ``sizes_xy``): how far it moves (median, and in how many scenes more than ``FAR`` against another noise
    draw), where it lies along the line from the cube to the goal object as a share of their distance (0: at the
    cube, 1: at the other object), and how many plans lie nearer the goal object than the cube, before and after."""
    moved, noise, before, after, nearer, nearer_swapped = [], [], [], [], 0, 0
    for r in rows:
        kf = r["keyframes"][j]
        if not _used(kf) or kf.get(f"{name}_xy") is None:
            continue
        cube, goal = np.asarray(r["cube_xy"]), np.asarray(r["goal_xy"])
        line = goal - cube
        p, q = np.asarray(kf["plan_xy"]), np.asarray(kf[f"{name}_xy"])
        moved.append(float(np.linalg.norm(q - p)))
        noise.append(float(np.linalg.norm(np.asarray(kf["noise_xy"]) - p)) if kf.get("noise_xy") else 0.0)
        before.append(float((p - cube) @ line / (line @ line)))
        after.append(float((q - cube) @ line / (line @ line)))
        nearer += int(np.linalg.norm(p - goal) < np.linalg.norm(p - cube))
        nearer_swapped += int(np.linalg.norm(q - goal) < np.linalg.norm(q - cube))
    if not moved:
        return {}
    tag = "swapped" if name == "swap" else name
    out = {f"{name}_shift_cm_median": round(100 * float(np.median(moved)), 2),
           f"{name}_over_{round(100 * FAR)}cm": int(np.sum(np.array(moved) > FAR)),
           f"share_toward_goal_{tag}_median": round(float(np.median(after)), 3),
           f"nearer_goal_plans_{tag}": nearer_swapped}
    if name == "swap":      # the plans as the scene is, over the keyframes the colour swap compares
        out.update({f"noise_over_{round(100 * FAR)}cm": int(np.sum(np.array(noise) > FAR)),
                    "share_toward_goal_median": round(float(np.median(before)), 3), "nearer_goal_plans": nearer})
    return out


def resummarise(source: str, out: str, argv) -> int:
    """``--summarise``: the summaries of ``source``'s recorded episodes, computed again by this code."""
    if Path(source).resolve() == Path(out).resolve():
        print(f"--summarise {source}: --json names the same file; write the new summaries elsewhere", file=sys.stderr)
        return 2
    try:
        done = json.loads(Path(source).read_text())
        if "summarised_from" in done:      # the episodes stay in the probe's own JSON only
            raise ValueError(f"it holds summaries of {done['summarised_from']}, no episodes: summarise that")
        rows = done["episodes_detail"]
        if not isinstance(rows, list) or not rows:
            raise ValueError("no recorded episodes")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"--summarise {source}: not a JSON of this probe ({e})", file=sys.stderr)
        return 2
    keep = ("checkpoint", "task", "seed", "episodes", "sampler_steps", "cfg_scale", "push_style", "counterfactual",
            "start_step")
    res = {"command": probe_command(__file__, argv), "summarised_from": source,
           "source_command": done.get("command"), **{k: done.get(k) for k in keep},
           "summary": summarise(rows, task=done.get("task", TASK)), "time_shift": best_shift(rows)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    for k, v in res["summary"].items():
        print(k, v)
    return 0


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--checkpoint", default=None, help="the model whose first plans are compared (required unless "
                                                        "--summarise)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--sampler-steps", type=int, default=3)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance (default: the policy's)")
    p.add_argument("--task", default=TASK, choices=sorted(OBJECTS),
                   help="the task whose first plans are compared (default push_cube)")
    p.add_argument("--push-style", default="jaw",
                   help="the expert style to compare with (that of the checkpoint's push demos; default jaw)")
    p.add_argument("--counterfactual", action="store_true",
                   help="also plan with the goal (mark, bin, base) reflected through the cube, hidden, with the two "
                        "objects' colours swapped (push_cube, stack_cube), and with other noise")
    p.add_argument("--start-step", type=int, default=0,
                   help="plan from the expert's state after this many of its steps (default 0: the first observation)")
    p.add_argument("--summarise", default=None, metavar="JSON",
                   help="summarise the episodes of an earlier run's JSON again (its episodes_detail; no model is "
                        "loaded, and the task, seed and settings are the JSON's: the flags that set them are not "
                        "read): the summaries added since it was written")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.summarise:
        return resummarise(a.summarise, a.json, argv)
    if not a.checkpoint:
        p.error("--checkpoint: required (or --summarise JSON)")
    from action_images.sim.tasks.push_cube import STYLES
    if a.episodes < 2:
        p.error(f"--episodes: at least 2 (the shuffled control pairs episodes); got {a.episodes}")
    if a.push_style not in STYLES:
        p.error(f"--push-style: choose from {','.join(STYLES)}")
    if a.start_step < 0:
        p.error(f"--start-step: at least 0; got {a.start_step}")
    rows = first_plans(a.checkpoint, a.episodes, a.seed, a.sampler_steps, a.cfg_scale, a.push_style,
                       a.counterfactual, a.start_step, a.task)
    res = {"command": probe_command(__file__, argv), "checkpoint": a.checkpoint, "task": a.task, "seed": a.seed,
           "episodes": a.episodes, "sampler_steps": a.sampler_steps, "cfg_scale": a.cfg_scale,
           "push_style": a.push_style, "counterfactual": a.counterfactual,
           "start_step": a.start_step,
           "summary": summarise(rows, task=a.task), "time_shift": best_shift(rows), "episodes_detail": rows,
           "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.json, res)
    for k, v in res["summary"].items():
        print(k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
