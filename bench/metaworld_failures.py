"""Why does the world action model fail Meta-World episodes? Where the hand stops, against where the expert goes.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/metaworld_failures.py \
        --checkpoint runs/mw11-ctx-decay-long --tasks door-open-v3,window-open-v3,plate-slide-v3 --episodes 50 \
        --seed 31337 --json bench/results/metaworld/failures.json

What it does (one process, one thread):

1. Plays ``--episodes`` closed-loop episodes per task exactly as ``action-images eval --suite metaworld --tasks ...
   --seed SEED --sampler-steps 6`` does (:class:`EvalSettings` -> :meth:`EpisodeRunner.from_checkpoint`, whose
   ``episode`` runs the library's ``rollout``), with ``env.step`` wrapped to log the TCP and the object
   (Meta-World's observation ``obs[4:7]``) at every control step, and each plan's decoded keyframes.
2. Rolls Meta-World's scripted expert out on the same episode seeds (``collect.run_episode``, the loop of
   ``action-images collect``, with the training data's ``--hold-steps``), keeping its TCP path, its first success step
   and the frames it records after success.
3. Classifies every failure: **stalled** when the TCP moves less than ``STALL_M`` over the last ``STALL_STEPS`` control
   steps, with the step the stall begins (each plan's own motion, from the pose it starts at to its last keyframe, is
   logged beside it as ``plan_move_m``: a stalled hand may still be given plans that move); whether the end lies within
   ``NEAR_M`` of a TCP position the expert's demo holds **after success** (the frames ``--hold-steps`` adds) and closer
   to those than to the expert's path before success, and how far it lies from each; how far the object moved from its
   start; the TCP's closest approach to the object (Meta-World's ``obs[4:7]``: the handle, the puck, ...) with the
   offset there, against the expert's closest approach before success. A failure "never within the expert's reach" comes
   no closer to the object than the expert's closest approach plus ``REACH_M``. At the end: the hand's offset from the
   object, and whether Meta-World's mocap (which the hand follows) sits at its box limit, where targets beyond the box
   no longer move the hand.

Writes the per-episode summary to ``--json`` and prints the counts.
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

STALL_STEPS = 150     # a failure whose TCP moves less than STALL_M over its last STALL_STEPS steps has stalled
STALL_M = 0.02
NEAR_M = 0.03         # a stall this close to an expert TCP position counts as "at" it
REACH_M = 0.02        # margin over the expert's closest approach to the object (see the docstring's point 3)


def run_policy(checkpoint: str, tasks: list[str], episodes: int, seed: int, sampler_steps: int, out: Path
               ) -> list[dict]:
    """Closed-loop episodes as ``eval`` plays them; per episode the TCP and object path after each step, the control
    step of each plan and how far it moves the hand (its start to its last keyframe)."""
    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner

    settings = EvalSettings(tasks=tuple(tasks), episodes=episodes, seed=seed, suite="metaworld", image_size=64,
                            videos=0, policy=PolicySettings(sampler_steps=sampler_steps))
    runner = EpisodeRunner.from_checkpoint(checkpoint, out, settings)
    pol = runner.policy
    results = []
    for task in tasks:
        env = runner.open(task)
        plans_at: list[int] = []
        plan_inner = pol.plan

        def plan(obs, cameras, _inner=plan_inner, _env=env):
            plans_at.append(_env.step_count)
            return _inner(obs, cameras)

        pol.plan = plan
        for k in range(episodes):
            tcp, obj = [], []

            def after_step(e, out, _tcp=tcp, _obj=obj):
                _tcp.append(e.ee_pose()[:3].copy())
                _obj.append(np.asarray(e._mw_obs[4:7], dtype=np.float64).copy())

            plans_at.clear()
            rec = runner.logged_episode(task, k, after_step)
            # the hand's mocap at Meta-World's box limit (within 1 mm on some axis): targets beyond it do not move it
            mocap = env.mocap_pos
            at_limit = bool(np.any(np.minimum(mocap - env.mw.mocap_low, env.mw.mocap_high - mocap) < 1e-3))
            moves = [float(np.linalg.norm(c.keyframes[-1][:3] - c.current[:3])) if c.valid[-1] else None
                     for c in pol.chunks]
            results.append({"task": task, "episode": k, "seed": rec["seed"], "success": rec["success"],
                            "length": rec["length"], "tcp": np.array(tcp), "obj": np.array(obj),
                            "mocap_at_limit_end": at_limit, "plans_at": list(plans_at), "plan_move_m": moves})
            print(f"{task} {k}: {'ok' if rec['success'] else 'FAIL'} {rec['length']}", file=sys.stderr)
        pol.plan = plan_inner
    runner.close()
    return results


def run_experts(episodes: list[tuple[str, int]], hold_steps: int) -> list[dict]:
    """The scripted expert on each (task, seed), one env per task: its TCP path, first success step, object path."""
    from action_images.data.collect import run_episode
    from action_images.sim.metaworld import make_env

    out: list[dict] = []
    env, env_task = None, None
    obj: list[np.ndarray] = []
    try:
        for task, seed in episodes:
            if task != env_task:
                if env is not None:
                    env.close()
                env, env_task = make_env(task, cameras=("corner",), image_size=16), task
                inner = env.step

                def step(action, _inner=inner, _env=env):
                    obj.append(np.asarray(_env._mw_obs[4:7], dtype=np.float64).copy())   # the object before the step
                    return _inner(action)

                env.step = step
            obj.clear()
            rec = run_episode(env, seed, ["corner"], hold_steps=hold_steps)
            # states are the TCP before each step; the frames after success are the last rec.hold_steps ones
            tcp = np.asarray(rec.states)[:, :3]
            n = len(tcp)
            out.append({"success": bool(rec.success), "t_success": n - int(rec.hold_steps), "tcp": tcp,
                        "obj": np.array(obj[:n])})
    finally:
        if env is not None:
            env.close()
    return out


def classify(p: dict, e: dict) -> dict:
    tcp = p["tcp"]
    n = len(tcp)
    tail = tcp[max(0, n - STALL_STEPS):]
    span = float(np.max(np.linalg.norm(tail - tail[-1], axis=1))) if len(tail) else 0.0
    stalled = (not p["success"]) and n >= STALL_STEPS and span < STALL_M
    t_stall = None
    if stalled:                                        # first step from which the TCP stays within STALL_M of its end
        d = np.linalg.norm(tcp - tcp[-1], axis=1)
        far = np.nonzero(d >= STALL_M)[0]
        t_stall = int(far[-1] + 1) if len(far) else 0
    pre, post = e["tcp"][:e["t_success"]], e["tcp"][e["t_success"]:]
    end = tcp[-1]
    d_post = float(np.min(np.linalg.norm(post - end, axis=1))) if len(post) else None
    d_pre = float(np.min(np.linalg.norm(pre - end, axis=1))) if len(pre) else None
    obj0, objN = p["obj"][0], p["obj"][-1]
    # closest approach of the TCP to the object (Meta-World's obs[4:7]: the handle, puck, ...), and the offset there
    d_obj = np.linalg.norm(tcp - p["obj"], axis=1)
    i = int(np.argmin(d_obj))
    d_exp = np.linalg.norm(e["tcp"][:e["t_success"]] - e["obj"][:e["t_success"]], axis=1)
    return {"closest_to_object_m": round(float(d_obj[i]), 4),
            "offset_at_closest_m": (tcp[i] - p["obj"][i]).round(4).tolist(), "t_closest": i,
            "expert_closest_to_object_m": round(float(d_exp.min()), 4) if len(d_exp) else None,
            "stalled": bool(stalled), "t_stall": t_stall, "tail_span_m": round(span, 4),
            "end_to_expert_post_success_m": None if d_post is None else round(d_post, 4),
            "end_to_expert_pre_success_m": None if d_pre is None else round(d_pre, 4),
            "at_post_success_hold": bool(d_post is not None and d_post < NEAR_M
                                         and (d_pre is None or d_post <= d_pre)),
            "object_moved_m": round(float(np.linalg.norm(objN - obj0)), 4),
            "end_tcp": end.round(4).tolist(), "end_offset_from_object_m": (end - objN).round(4).tolist(),
            "mocap_at_limit_end": p.get("mocap_at_limit_end")}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/mw11-ctx-decay-long")
    p.add_argument("--tasks", default="door-open-v3,window-open-v3,plate-slide-v3")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--sampler-steps", type=int, default=6)
    p.add_argument("--hold-steps", type=int, default=80, help="the training data's collect --hold-steps")
    p.add_argument("--json", default="bench/results/metaworld/failures.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tasks = [t for t in a.tasks.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        pol = run_policy(a.checkpoint, tasks, a.episodes, a.seed, a.sampler_steps, Path(tmp))
    rows, summary = [], {}
    experts = run_experts([(r["task"], r["seed"]) for r in pol], a.hold_steps)
    for r, e in zip(pol, experts):
        c = classify(r, e)
        rows.append({"task": r["task"], "episode": r["episode"], "seed": r["seed"], "success": r["success"],
                     "length": r["length"], "expert_success": e["success"], "expert_t_success": e["t_success"],
                     "plans_at": r["plans_at"],
                     "plan_move_m": [None if m is None else round(m, 4) for m in r["plan_move_m"]], **c})
        s = summary.setdefault(r["task"], {"episodes": 0, "successes": 0, "failures": 0, "stalled": 0,
                                           "stalled_at_post_success_hold": 0, "expert_successes": 0,
                                           "failures_never_within_expert_reach": 0, "stalled_with_mocap_at_limit": 0})
        s["episodes"] += 1
        s["successes"] += int(r["success"])
        s["expert_successes"] += int(e["success"])
        if not r["success"]:
            s["failures"] += 1
            s["stalled"] += int(c["stalled"])
            s["stalled_at_post_success_hold"] += int(c["stalled"] and c["at_post_success_hold"])
            s["stalled_with_mocap_at_limit"] += int(c["stalled"] and bool(c["mocap_at_limit_end"]))
            # never as close to the object as the expert gets, plus REACH_M: the hand did not get to it
            s["failures_never_within_expert_reach"] += int(
                c["closest_to_object_m"] > (c["expert_closest_to_object_m"] or 0.0) + REACH_M)
    out = {"command": probe_command(__file__, argv),
           "checkpoint": a.checkpoint, "seed": a.seed, "sampler_steps": a.sampler_steps, "hold_steps": a.hold_steps,
           "stall": {"steps": STALL_STEPS, "metres": STALL_M}, "near_m": NEAR_M, "summary": summary,
           "episodes": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(a.json, out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
