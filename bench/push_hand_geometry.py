"""Where does a push_cube policy put the hand relative to the cube? Closed-loop episodes, hand and cube logged.

    OMP_NUM_THREADS=2 MUJOCO_GL=egl .venv/bin/python bench/push_hand_geometry.py \
        --checkpoint runs/rig8-ctx-recover-noise-palm --episodes 20 \
        --json bench/results/push_palm/hand_geometry_palm.json

Runs the evaluation's push_cube episodes (the same seeds, rigs and policy settings as ``action-images eval --tasks
push_cube --seed S --rig-distribution R --policy-cameras all --sampler-steps 3``) with the hand's pose and the cube's
position read after every control step. For the steps with the TCP low (below ``--low-cm``, where a push happens) it
reports the TCP's offset from the cube's centre in the frame of the episode's push line (the start cube-to-goal
direction): *along* (negative: behind the cube, where a push starts) and *across* (absolute), their medians and
their values at the first low step (where the hand first comes down; *on the goal side* when along > 0; its distance
to the goal and to the cube, *nearer the goal* when the first is smaller). The experts
aim the TCP 5.5 cm behind the cube (jaw style), 10 cm (jaw_back), 13.5 cm (palm, whose palm face leads the TCP by
9 cm) or at its centre (cage, cage_wait, cage_slow: the open jaw comes down around it). Also per episode: how far
the cube moved, how close it ended to the goal, the steps with the hand horizontal (tool +z within 0.2 of level: the
palm style's pose), and how high the cube's centre rose above where it rests on the table, at most and at the last step
(a push keeps it on the table; a grasp carries it).
``--cfg-scale 0`` runs the policy without its instruction; ``--expert`` runs the scripted expert on the same
episode seeds instead (no model, no rendering), the reference for what a push does to the cube.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def cm(metres: float) -> float:
    """Metres as centimetres rounded to 0.01."""
    return round(100 * float(metres), 2)


def push_frame(tcp_xy: np.ndarray, cube_xy: np.ndarray, goal_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(along, across) of TCP positions ``[T, 2]`` relative to cube positions ``[T, 2]``, in the frame of the line
    from the first cube position to the goal: along > 0 toward the goal, across > 0 to its left."""
    from action_images.sim.tasks.push_cube import push_line_frame

    d = goal_xy - cube_xy[0]
    return push_line_frame(tcp_xy - cube_xy, d / max(float(np.linalg.norm(d)), 1e-9))


MEDIANS = ("low_along_cm", "low_across_cm", "first_low_along_cm", "first_low_across_cm", "first_low_goal_cm",
           "first_low_cube_cm", "cube_moved_cm", "cube_goal_cm", "final_tcp_z_cm", "horizontal_steps",
           "cube_lift_cm", "end_cube_lift_cm")


def summarise(rows: list[dict]) -> dict:
    """Medians over the episodes, successes and failures apart, and how many first came down on the goal's side."""
    out = {}
    for name, want in (("successes", True), ("failures", False)):
        sel = [r for r in rows if r["success"] == want]
        first = [r["first_low_along_cm"] for r in sel]
        out[name] = {"episodes": len(sel), "first_low_on_the_goal_side": sum(f is not None and f > 0 for f in first),
                     "never_low": sum(f is None for f in first),
                     "first_low_nearer_the_goal": sum(r.get("first_low_goal_cm") is not None
                                                      and r["first_low_goal_cm"] < r["first_low_cube_cm"] for r in sel)}
        for k in MEDIANS:
            values = [r[k] for r in sel if r[k] is not None]
            out[name][f"{k}_median"] = float(np.median(values)) if values else None
    return out


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/rig8-ctx-recover-noise-9k")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--rig-distribution", default="train", choices=("train", "heldout"))
    p.add_argument("--sampler-steps", type=int, default=3)
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (0: no instruction)")
    p.add_argument("--expert", action="store_true", help="the scripted expert on the same episode seeds, no model")
    p.add_argument("--low-cm", type=float, default=6.0, help="TCP height below which a step counts as low (default 6)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be >= 1")
    if a.sampler_steps < 1:
        p.error("--sampler-steps must be >= 1")
    if not 0 <= a.cfg_scale < 100:
        p.error("--cfg-scale must be in [0, 100)")
    if not 0 < a.low_cm < 50:
        p.error("--low-cm must be in (0, 50)")
    from scipy.spatial.transform import Rotation

    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner

    t0 = time.time()
    runner = None
    if a.expert:                                   # the same scenes (episode seeds), rendering off
        from action_images.seeds import episode_seed
        from action_images.sim import make_env
        env = make_env("push_cube", render=False)
    else:
        policy = PolicySettings(camera_names="all", sampler_steps=a.sampler_steps, cfg_scale=a.cfg_scale)
        settings = EvalSettings(tasks=("push_cube",), episodes=a.episodes, seed=a.seed,
                                rig_distribution=a.rig_distribution, rig_views=4, videos=0, policy=policy)
        runner = EpisodeRunner.from_checkpoint(a.checkpoint, Path(a.json or ".").parent, settings)   # videos=0
        env = runner.open("push_cube")
    rows = []
    for k in range(a.episodes):
        log: list[tuple[np.ndarray, float, np.ndarray, float]] = []

        def after_step(e, out, _log=log):
            pose = np.asarray(out[0]["ee_pose"], dtype=np.float64)
            approach_z = float(Rotation.from_quat(pose[3:7]).as_matrix()[2, 2])
            cube = e.task.body_pos("cube")
            _log.append((pose[:3].copy(), approach_z, cube[:2].copy(), float(cube[2])))

        if runner is None:
            seed = episode_seed(a.seed, "push_cube", k)
            env.reset(seed=seed)
            for _ in range(env.max_steps):
                out = env.step(env.expert_action())
                after_step(env, out)
                if out[2] or out[3]:
                    break
            rec = {"seed": seed, "success": bool(out[4]["success"])}
        else:
            rec = runner.logged_episode("push_cube", k, after_step)
        tcp = np.array([x[0] for x in log])
        cube = np.array([x[2] for x in log])
        goal = env.task.goal_xy()
        along, across = push_frame(tcp[:, :2], cube, goal)
        low = tcp[:, 2] < a.low_cm / 100
        row = {"episode": k, "seed": rec["seed"], "success": bool(rec["success"]), "length": len(log),
               "low_steps": int(low.sum()),
               "low_along_cm": cm(np.median(along[low])) if low.any() else None,
               "low_across_cm": cm(np.median(np.abs(across[low]))) if low.any() else None,
               "first_low_along_cm": cm(along[low][0]) if low.any() else None,
               "first_low_across_cm": cm(abs(across[low][0])) if low.any() else None,
               "first_low_goal_cm": cm(np.linalg.norm(tcp[low][0, :2] - goal)) if low.any() else None,
               "first_low_cube_cm": cm(np.linalg.norm(tcp[low][0, :2] - cube[low][0])) if low.any() else None,
               "horizontal_steps": int((np.abs([x[1] for x in log]) < 0.2).sum()),
               "cube_lift_cm": cm(max(x[3] for x in log) - env.task.half),
               "end_cube_lift_cm": cm(log[-1][3] - env.task.half),
               "cube_moved_cm": cm(np.linalg.norm(cube[-1] - cube[0])),
               "cube_goal_cm": cm(np.linalg.norm(cube[-1] - goal)),
               "final_tcp_z_cm": cm(tcp[-1, 2])}
        rows.append(row)
        print(f"ep {k}: {'OK ' if row['success'] else 'FAIL'} low along {row['low_along_cm']} cm, across "
              f"{row['low_across_cm']} cm, cube moved {row['cube_moved_cm']} cm, ends {row['cube_goal_cm']} cm "
              "from the goal", file=sys.stderr, flush=True)
    if runner is not None:
        runner.close()
    policy_only = {"checkpoint": a.checkpoint, "rig_distribution": a.rig_distribution, "cfg_scale": a.cfg_scale,
                   "sampler_steps": a.sampler_steps}
    out = {"command": probe_command(__file__, argv), "expert": a.expert, "seed": a.seed,
           **{k: None if a.expert else v for k, v in policy_only.items()},
           "summary": summarise(rows), "episodes": rows, "wall_s": round(time.time() - t0, 1)}
    print(out["summary"])
    if a.json:
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
