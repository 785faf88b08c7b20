"""Does the policy read where to go from the scene, or keep to where the hand is? Plans from the expert's state with
the hand moved a few centimetres, against the expert's own targets from there.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/hand_offset.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-9k --episodes 100 --seed 4242 --start-step 4 \
        --json bench/results/hand_offset/push_9k_step4.json

For each episode seed (the scenes ``action-images eval --tasks TASK --rig-distribution train --seed SEED`` builds)
the scripted expert runs ``--start-step`` steps from the reset, unrendered; there, for each offset (centimetres
along the line from the object to its goal, and across it to the left; ``bench/push_first_plan.py``'s frame), the
hand is moved by that much at its height and orientation (``MOVE_STEPS`` control steps toward the moved target, for
the offset 0, 0 too, which holds the hand where it is, so every plan comes from the same step of the episode;
``moved_cm`` records how far it got), and the policy plans once from there (every rig view, the same sampler noise
for every offset of an episode, no resample when the views disagree). The expert, which re-plans from wherever the hand is, gives its
targets at the keyframe steps of a look-ahead from the same state (``keyframe_oracle.expert_keyframes``), so each
plan has a label from its own state.

``--move-in`` says which input carries the move: ``both`` (the default: the hand is moved, so the frames show it
there and the current action image is drawn there), ``frames`` (the frames of the moved hand, the action image drawn
at the undisplaced hand) or ``drawing`` (the frames of the undisplaced hand, the action image drawn at the moved
one; the expert's targets are then those from the undisplaced state, where the hand really is). Both the frames and
the drawing are what the policy would see of a real state; the two partial moves tell which of them the plans keep
to.

``follow``: per keyframe, the share of the hand's displacement the plans take with them (the shift of keyframe k
between the displaced and the undisplaced plan, projected on the displacement, over its length; median over
episodes): 1 for a policy that keeps to where the hand is, 0 for one that goes where the scene says. The expert
goes back at once (a 3 cm move is within one step of it). ``miss_cm``: the plans' distance from the expert's
targets from their own state (xy, median); the move can cost the expert a step, so the later keyframes' misses
also hold that much of a lag.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command

MOVE_STEPS = 2          # control steps that carry the hand to its displaced place (a 3 cm move takes one)
OFFSETS = "0,0;3,0;-3,0;0,3;0,-3"
MOVE_IN = ("both", "frames", "drawing")


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


firstplan = _bench("push_first_plan")
oracle = _bench("keyframe_oracle")


def parse_offsets(text: str) -> list[tuple[float, float]]:
    """'along,across;...' in centimetres -> [(along, across)] in metres; (0, 0) comes first, added if missing."""
    out = []
    for part in text.split(";"):
        vals = [float(v) for v in part.split(",")]
        if len(vals) != 2 or not all(np.isfinite(vals)):
            raise ValueError(f"{part!r} is not 'along,across'")
        out.append((vals[0] / 100, vals[1] / 100))
    out = [o for o in out if o != (0.0, 0.0)]
    if len(set(out)) != len(out):
        raise ValueError("an offset is given twice")
    return [(0.0, 0.0), *out]


def world_offset(along: float, across: float, obj_xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
    """The xy displacement ``along`` the line object -> goal and ``across`` it (to its left)."""
    d = firstplan._unit(np.asarray(goal_xy, dtype=float) - np.asarray(obj_xy, dtype=float))
    return along * d + across * np.array([-d[1], d[0]])


def move_hand(env, offset_xy: np.ndarray, gripper: float) -> float:
    """``MOVE_STEPS`` control steps toward the hand's place moved by ``offset_xy`` (height and orientation kept; a
    zero offset holds it); returns how far it moved across the table (metres)."""
    start = env.arm.tcp_pos()
    target = start + np.r_[offset_xy, 0.0]
    quat = env.arm.tcp_quat()
    for _ in range(MOVE_STEPS):
        env.step(np.r_[target, quat, gripper])
    return float(np.linalg.norm(env.arm.tcp_pos()[:2] - start[:2]))


def offset_plans(checkpoint: str, episodes: int, seed: int, start_step: int, offsets, sampler_steps: int,
                 task: str, style: str = "jaw", move_in: str = "both") -> list[dict]:
    """Per episode and offset: the plan's keyframes and the expert's targets from the state the hand is in
    (``move_in``: which input shows the move, module docstring)."""
    if move_in not in MOVE_IN:
        raise ValueError(f"move_in must be one of {MOVE_IN}; got {move_in!r}")
    if not offsets or tuple(offsets[0]) != (0.0, 0.0):
        raise ValueError("offsets must start with (0, 0), the undisplaced plan every other is compared with "
                         "(parse_offsets puts it first)")
    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner
    from action_images.seeds import episode_seed

    obj, goal = firstplan.OBJECTS[task]
    settings = EvalSettings(tasks=(task,), episodes=episodes, seed=seed, rig_distribution="train", rig_views=4,
                            image_size=64, videos=0,
                            policy=PolicySettings(sampler_steps=sampler_steps, camera_names=("all",),
                                                  max_resamples=0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runner = EpisodeRunner.from_checkpoint(checkpoint, Path(tmp), settings)
        if getattr(runner.policy.model.config, "history", 0):
            raise SystemExit(f"--checkpoint {checkpoint} reads past frames (train --history); this probe plans from "
                             "states whose past frames it does not render")
        env, pol = runner.open(task), runner.policy
        if task == "push_cube":
            env.task.style = style
        for k in range(episodes):
            s = episode_seed(seed, task, k)
            env.observe_images = False
            env.reset(seed=s)
            a = None
            for _ in range(start_step):
                a = env.expert_action()
                env.step(a)
            gripper = float(a[7]) if a is not None else float(env.expert_action()[7])
            snap = oracle.Snapshot(env)
            obj_xy, goal_xy = env.task.body_pos(obj)[:2].copy(), env.task.body_pos(goal)[:2].copy()
            per, still = [], None
            for along, across in offsets:              # (0, 0) first: the undisplaced state
                snap.restore(env)
                off = world_offset(along, across, obj_xy, goal_xy)
                moved = move_hand(env, off, gripper)
                env.observe_images = True
                obs = env.observe()
                env.observe_images = False
                if still is None:
                    still = (obs, oracle.Snapshot(env))
                if move_in == "frames":                # the moved hand's frames, the still hand drawn
                    obs = {**obs, "ee_pose": still[0]["ee_pose"]}
                elif move_in == "drawing":             # the still hand's frames and state, the moved hand drawn
                    obs = {**still[0], "ee_pose": obs["ee_pose"]}
                    still[1].restore(env)
                pol.reset(s)                            # the same sampler noise for every offset
                ch = pol.plan(obs, env.cameras)
                labels, _ = oracle.expert_keyframes(env, pol.horizon, pol.stride, pol.execute_k)
                per.append({"offset_cm": [round(100 * along, 2), round(100 * across, 2)],
                            "offset_xy": off.round(4).tolist(), "moved_cm": round(100 * moved, 2),
                            "hand_xy": env.arm.tcp_pos()[:2].round(4).tolist(),
                            "plan_xy": [ch.keyframes[j][:2].round(4).tolist() if ch.valid[j] else None
                                        for j in range(pol.horizon)],
                            "expert_xy": labels[:, :2].round(4).tolist()})
            rows.append({"episode": k, "seed": s, "obj_xy": obj_xy.round(4).tolist(),
                         "goal_xy": goal_xy.round(4).tolist(), "offsets": per})
            print(f"  ep {k}: moved {[p['moved_cm'] for p in per]} cm", file=sys.stderr)
        runner.close()
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per offset (other than 0, 0) and keyframe: ``follow`` (the median share of the displacement the plans
    keep), ``miss_cm`` (plan to the expert's target from the same state, xy), the episodes compared, and the
    hand's median move; for offset 0, 0 the miss alone."""
    out: dict = {}
    n_off = len(rows[0]["offsets"])
    H = len(rows[0]["offsets"][0]["expert_xy"])
    for i in range(n_off):
        key = "offset_{}_{}".format(*rows[0]["offsets"][i]["offset_cm"])
        entry: dict = {"moved_cm_median": round(float(np.median([r["offsets"][i]["moved_cm"] for r in rows])), 2)}
        for j in range(H):
            miss, follow = [], []
            for r in rows:
                base, o = r["offsets"][0], r["offsets"][i]
                p = o["plan_xy"][j]
                if p is None:
                    continue
                miss.append(float(np.linalg.norm(np.subtract(p, o["expert_xy"][j]))))
                if i == 0 or base["plan_xy"][j] is None:
                    continue
                u = np.asarray(o["offset_xy"])
                n2 = float(u @ u)
                follow.append(float((np.subtract(p, base["plan_xy"][j])) @ u) / n2)
            kf = {"compared": len(miss),
                  "miss_cm_median": round(100 * float(np.median(miss)), 2) if miss else None}
            if follow:
                kf.update({"follow_compared": len(follow), "follow_median": round(float(np.median(follow)), 3)})
            entry[f"k{j + 1}"] = kf
        out[key] = entry
    return out


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", default="push_cube", choices=sorted(firstplan.OBJECTS))
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--start-step", type=int, default=4,
                   help="expert steps from the reset before the hand is moved (default 4: push_cube's expert is "
                        "then above where it comes down)")
    p.add_argument("--offsets", default=OFFSETS,
                   help=f"'along,across;...' in cm, along the object -> goal line and across it (default {OFFSETS})")
    p.add_argument("--sampler-steps", type=int, default=3)
    p.add_argument("--push-style", default="jaw", help="push_cube's expert style (that of the checkpoint's demos)")
    p.add_argument("--move-in", default="both", choices=MOVE_IN,
                   help="the input that shows the move: both (the hand is moved), frames (the action image drawn at "
                        "the undisplaced hand) or drawing (the frames of the undisplaced hand)")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        offsets = parse_offsets(a.offsets)
    except ValueError as e:
        p.error(f"--offsets: {e}")
    if len(offsets) < 2:
        p.error("--offsets: give at least one offset other than 0,0")
    if a.episodes < 1:
        p.error(f"--episodes: at least 1; got {a.episodes}")
    if a.start_step < 0:
        p.error(f"--start-step: at least 0; got {a.start_step}")
    from action_images.sim.tasks.push_cube import STYLES
    if a.push_style not in STYLES:
        p.error(f"--push-style: choose from {','.join(STYLES)}")
    rows = offset_plans(a.checkpoint, a.episodes, a.seed, a.start_step, offsets, a.sampler_steps, a.task,
                        a.push_style, a.move_in)
    res = {"command": probe_command(__file__, argv), "checkpoint": a.checkpoint, "task": a.task, "seed": a.seed,
           "episodes": a.episodes, "start_step": a.start_step, "sampler_steps": a.sampler_steps,
           "push_style": a.push_style, "move_in": a.move_in, "summary": summarise(rows), "episodes_detail": rows,
           "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.json, res)
    for k, v in res["summary"].items():
        print(k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
