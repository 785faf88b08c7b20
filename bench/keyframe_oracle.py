"""Can the policy's way of acting succeed at all? The expert's own keyframes, executed as the policy executes a plan.

    MUJOCO_GL=egl .venv/bin/python bench/keyframe_oracle.py --tasks all --episodes 100 \
        --json bench/results/keyframe_oracle/oracle.json

At every replanning step the probe saves the simulation, lets the scripted expert act for ``horizon * stride``
control steps from there, takes its commanded targets at the steps the training windows draw keyframes from (keyframe
k: the target of step ``k * stride - 1``, as ``data.windows`` builds them), restores the simulation and executes the
first ``execute_k`` targets of :func:`action_images.policy.interpolate_chunk` through those keyframes: the plan a
perfect model would generate, acted on exactly as ``ActionImagesPolicy`` acts (position linear, rotation slerp,
gripper linear; then replan). Success on the evaluation's scenes (``--seed``, ``action-images eval``'s episode
seeds), beside the expert acting at every step. A task the oracle fails is one no model of this action
representation can solve by imitation alone; what remains between a trained model and the oracle is the model.
No rendering and no model; about 0.2 s per episode.
"""

from __future__ import annotations

import sys
import time

import mujoco
import numpy as np

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command

STATE = mujoco.mjtState.mjSTATE_INTEGRATION


class Snapshot:
    """The simulation's integration state and the env's and expert's step bookkeeping, to restore after a look-ahead."""

    def __init__(self, env):
        m, d = env.model, env.data
        self.state = np.empty(mujoco.mj_stateSize(m, STATE))
        mujoco.mj_getState(m, d, self.state, STATE)
        t = env.task
        self.env_fields = (env.step_count, env._success)
        self.task_fields = (t._phase, t._phase_start, t.grasp_miss)

    def restore(self, env) -> None:
        mujoco.mj_setState(env.model, env.data, self.state, STATE)
        mujoco.mj_forward(env.model, env.data)
        env.step_count, env._success = self.env_fields
        env.task._phase, env.task._phase_start, env.task.grasp_miss = self.task_fields


def expert_keyframes(env, horizon: int, stride: int, execute_k: int, blur: int = 0) -> tuple[np.ndarray, tuple]:
    """The expert's targets at steps ``k * stride - 1`` (k = 1..horizon) of a look-ahead from the current state, and
    its phase bookkeeping after ``execute_k`` steps of it; the simulation is put back as it was. With ``blur`` > 0
    each keyframe's position and gripper are the mean of the targets ``blur`` steps either side of its step (the
    look-ahead runs ``blur`` steps further; windows are clipped at its first step, so the first keyframes' means
    lean forward): the plan of a model that knows the expert's path but not when along it the expert will be,
    averaged over that uncertainty. Rotation is kept."""
    snap = Snapshot(env)
    targets, phase = [], None
    for i in range(horizon * stride + blur):
        targets.append(env.expert_action())
        env.step(targets[-1])
        if i + 1 == execute_k:
            phase = (env.task._phase, env.task._phase_start, env.task.grasp_miss)
    snap.restore(env)
    targets = np.array(targets)
    kf = np.array([targets[k * stride - 1] for k in range(1, horizon + 1)])
    if blur > 0:
        for j, k in enumerate(range(1, horizon + 1)):
            i = k * stride - 1
            near = targets[max(0, i - blur):i + blur + 1]
            kf[j, :3], kf[j, 7] = near[:, :3].mean(axis=0), near[:, 7].mean()
    return kf, phase


def oracle_episode(env, seed: int, horizon: int, stride: int, execute_k: int, gripper: str,
                   noise_m: float = 0.0, blur: int = 0) -> dict:
    """One episode of the expert's keyframes executed chunk by chunk. The expert's phase machine (which stage of the
    task it is in) moves on as it did in the look-ahead's first ``execute_k`` steps, the steps the chunk executes."""
    from action_images.policy import interpolate_chunk

    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    steps, plans, success = 0, 0, False
    while steps < env.max_steps and not success:
        kf, phase = expert_keyframes(env, horizon, stride, execute_k, blur)
        kf[:, :3] += rng.normal(0.0, noise_m, (horizon, 3)) if noise_m > 0 else 0.0
        chunk = interpolate_chunk(env.ee_pose(), kf, np.ones(horizon, bool), stride, gripper)
        plans += 1
        for action in chunk[:execute_k]:
            _, _, terminated, truncated, info = env.step(action)
            steps += 1
            success = bool(info["success"])
            if terminated or truncated:
                break
        env.task._phase, env.task._phase_start, env.task.grasp_miss = phase
    return {"seed": seed, "success": success, "length": steps, "plans": plans}


def expert_episode(env, seed: int) -> dict:
    """The expert acting at every step, as ``action-images collect`` runs it (no hold steps, nothing recorded)."""
    from action_images.data.collect import run_episode

    rec = run_episode(env, seed, [])
    return {"seed": seed, "success": rec.success, "length": len(rec.actions)}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="all", help="comma-separated task names or 'all'")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=31337, help="the evaluation seed whose episode seeds to use")
    p.add_argument("--horizon", type=int, default=4, help="keyframes per plan (the shipped model's 4)")
    p.add_argument("--stride", type=int, default=2, help="control steps per keyframe (the shipped model's 2)")
    p.add_argument("--execute-k", type=int, default=None, help="steps executed per plan (default stride*horizon//2)")
    p.add_argument("--gripper", default="linear", choices=("linear", "step"))
    p.add_argument("--noise-cm", default="0", help="comma-separated standard deviations (cm, per axis) of noise "
                                                   "added to each keyframe's position, one run each (default 0)")
    p.add_argument("--blur-steps", type=int, default=0,
                   help="each keyframe's position and gripper averaged over the expert's targets this many control "
                        "steps either side of its own, clipped at the look-ahead's first step (default 0: the "
                        "keyframe's own target)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    from action_images.seeds import episode_seed
    from action_images.sim import make_env
    from action_images.sim.tasks import parse_tasks

    try:
        tasks = parse_tasks(a.tasks)
    except ValueError as e:
        p.error(str(e))
    for flag, v in (("--episodes", a.episodes), ("--horizon", a.horizon), ("--stride", a.stride)):
        if v < 1:
            p.error(f"{flag} must be >= 1")
    if not 0 <= a.blur_steps <= 100:
        p.error("--blur-steps must be in 0..100")
    try:
        noises = [float(x) for x in a.noise_cm.split(",")]
    except ValueError:
        p.error(f"--noise-cm: expected comma-separated numbers; got {a.noise_cm!r}")
    if not all(0 <= x < 100 for x in noises):
        p.error("--noise-cm: each value must be in [0, 100)")
    k = a.execute_k if a.execute_k is not None else a.stride * a.horizon // 2
    if not 1 <= k <= a.stride * a.horizon:
        p.error(f"--execute-k must be in 1..{a.stride * a.horizon}")
    t0 = time.time()
    out = {"command": probe_command(__file__, argv), "seed": a.seed, "horizon": a.horizon, "stride": a.stride,
           "execute_k": k, "gripper": a.gripper, "noise_cm": noises, "blur_steps": a.blur_steps, "tasks": {}}
    for task in tasks:
        env = make_env(task, render=False)
        seeds = [episode_seed(a.seed, task, i) for i in range(a.episodes)]
        expert = [expert_episode(env, s) for s in seeds]
        row = {"episodes": a.episodes, "expert_successes": sum(r["success"] for r in expert), "oracle": {}}
        for noise in noises:
            oracle = [oracle_episode(env, s, a.horizon, a.stride, k, a.gripper, noise / 100, a.blur_steps)
                      for s in seeds]
            row["oracle"][f"{noise:g}"] = {
                "successes": sum(r["success"] for r in oracle),
                "mean_length_success": float(np.mean([r["length"] for r in oracle if r["success"]] or [np.nan])),
                "failed_seeds": [r["seed"] for r in oracle if not r["success"]]}
        env.close()
        out["tasks"][task] = row
        cells = "  ".join(f"{n} cm {v['successes']:3d}" for n, v in row["oracle"].items())
        print(f"{task:14s} expert {row['expert_successes']:3d}/{a.episodes}  oracle: {cells}", file=sys.stderr,
              flush=True)
    out["wall_s"] = round(time.time() - t0, 1)
    if a.json:
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
