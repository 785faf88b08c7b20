"""Each task: seeded reset, instructions, a failing start, and an expert that succeeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from action_images.sim import TASKS, make_env
from action_images.sim.tasks import TASK_CLASSES


def rollout(env, seed: int) -> tuple[bool, list[np.ndarray]]:
    obs, info = env.reset(seed=seed)
    assert not info["success"], "task already solved at reset"
    actions = []
    for _ in range(env.max_steps):
        actions.append(env.expert_action())
        obs, reward, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            break
    assert terminated == info["success"] and reward == float(info["success"])
    return info["success"], actions


def test_at_least_eight_tasks():
    assert len(TASKS) >= 8 and set(TASKS) == set(TASK_CLASSES)
    for name in ("reach_target", "push_cube", "pick_cube", "place_in_bin", "stack_cube", "open_drawer",
                 "close_drawer", "press_button"):
        assert name in TASKS


@pytest.mark.parametrize("jitter", [0.0, 0.1])
@pytest.mark.parametrize("task", TASKS)
def test_expert_succeeds(task, jitter):
    """From the home pose and from hands started up to 10 cm away (--start-jitter 0.1)."""
    env = make_env(task, render=False, start_jitter=jitter)
    for seed in range(3):
        ok, actions = rollout(env, seed)
        assert ok, f"{task} expert failed on seed {seed}"
        assert len(actions) < env.max_steps


@pytest.mark.parametrize("task", TASKS)
def test_reset_randomises_scene_and_instruction(task):
    env = make_env(task, render=False)
    states, texts, colors = [], set(), []
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        states.append(np.concatenate([env.data.qpos, env.model.body_pos.ravel()]))
        texts.add(obs["instruction"])
        colors.append(env.model.geom_rgba.copy())
    assert not all(np.allclose(states[0], s) for s in states[1:])
    assert not all(np.allclose(colors[0], c) for c in colors[1:])
    assert len(texts) >= 2 and all(t and t.isascii() for t in texts)


@pytest.mark.parametrize("task", ["pick_cube", "stack_cube"])
def test_expert_rotates_the_gripper(task):
    env = make_env(task, render=False)
    yaws = []
    for seed in range(4):
        ok, actions = rollout(env, seed)
        assert ok
        z_yaw = Rotation.from_quat(np.stack(actions)[:, 3:7]).as_euler("ZYX")[:, 0]
        yaws.append(np.ptp(np.unwrap(z_yaw)))
    assert max(yaws) > np.radians(15)


def test_expert_recovers_from_a_perturbation():
    """The expert is closed-loop: after random actions it still finishes the task."""
    env = make_env("pick_cube", render=False)
    env.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(4):
        env.step(env.expert_action())
    for _ in range(3):
        a = env.expert_action()
        a[:3] += rng.uniform(-0.06, 0.06, 3)
        env.step(a)
    for _ in range(env.max_steps - env.step_count):
        obs, r, term, trunc, info = env.step(env.expert_action())
        if term or trunc:
            break
    assert info["success"]


@pytest.mark.slow
@pytest.mark.parametrize("jitter", [0.0, 0.1])
@pytest.mark.parametrize("task", TASKS)
def test_expert_success_rate_20_seeds(task, jitter):
    env = make_env(task, render=False, start_jitter=jitter)
    assert sum(rollout(env, 1000 + s)[0] for s in range(20)) >= 19


def _jaw_and_executed(env):
    """Wrap ``env.step`` to record the jaw opening after each step and the executed targets."""
    opening, executed = [], []
    inner = env.step

    def step(action):
        executed.append(np.asarray(action, dtype=np.float64).copy())
        out = inner(action)
        opening.append(env.arm.opening())
        return out

    env.step = step
    return opening, executed


@pytest.mark.parametrize("task", ["pick_cube", "place_in_bin", "stack_cube"])
def test_planted_missed_grasp_then_recovery(task):
    """``collect --missed-grasps``: the expert's first grasp closes beside the cube, the jaw shuts on nothing, the
    expert opens it and grasps again, and the episode succeeds. The stored labels are the undisplaced targets: they
    differ from the executed ones while the miss lasts, and equal them from the reopening on."""
    from action_images.data.collect import MISS_DISTANCE, run_episode

    env = make_env(task, render=False)
    for seed in range(2):
        opening, executed = _jaw_and_executed(env)
        rec = run_episode(env, seed, [], missed_grasps=1.0)
        env.step = type(env).step.__get__(env)
        assert rec.success and MISS_DISTANCE[0] <= abs(rec.grasp_miss) <= MISS_DISTANCE[1]
        op, ex = np.array(opening), np.stack(executed)
        shut = np.flatnonzero(op < 0.05)                     # a held cube keeps the jaw 0.1-0.6 open
        assert shut.size, "the jaw never shut on nothing"
        reopened = shut[0] + np.flatnonzero(op[shut[0]:] > 0.5)
        assert reopened.size, "the jaw never opened again"
        gap = np.linalg.norm(rec.actions[:, :2] - ex[:, :2], axis=1)
        assert gap[:shut[0]].max() > 0.01                     # labels point at the cube while the hand goes beside it
        np.testing.assert_allclose(rec.actions[reopened[0]:], ex[reopened[0]:])
        plain = run_episode(env, seed, [])                    # the scene and its instruction are the same draws
        assert plain.instruction == rec.instruction and plain.grasp_miss is None
        np.testing.assert_allclose(plain.states[0], rec.states[0])


def test_missed_grasps_leave_tasks_without_a_grasp_alone():
    """reach_target has no grasp: no miss is planted, and the episode is the plain one."""
    from action_images.data.collect import run_episode

    env = make_env("reach_target", render=False)
    assert not env.task.grasps and all(make_env(t, render=False).task.grasps
                                       for t in ("pick_cube", "place_in_bin", "stack_cube"))
    plain, missed = run_episode(env, 3, []), run_episode(env, 3, [], missed_grasps=1.0)
    assert missed.grasp_miss is None
    np.testing.assert_array_equal(plain.actions, missed.actions)
    np.testing.assert_array_equal(plain.states, missed.states)


def test_missed_grasps_with_action_noise_still_miss():
    """The noise moves the executed (displaced) target, not the stored label: the jaw still shuts on nothing."""
    from action_images.data.collect import run_episode

    env = make_env("pick_cube", render=False)
    opening, executed = _jaw_and_executed(env)
    rec = run_episode(env, 0, [], action_noise=0.005, action_noise_prob=1.0, missed_grasps=1.0)
    assert rec.grasp_miss is not None and (np.array(opening) < 0.05).any()


def _push_with_offset(style: str, seed: int, lateral: float, along: float = 0.0) -> bool:
    """push_cube's expert in ``style`` with every target moved ``lateral`` metres across the push line and ``along``
    metres toward the goal (``PushCube.aim_offset``: the way a policy's plan is off), run to the task's step limit."""
    env = make_env("push_cube", render=False)
    env.task.style, env.task.aim_offset = style, (lateral, along)
    return rollout(env, seed)[0]


def test_palm_push_forgives_a_hand_off_the_push_line():
    """The palm style (``collect --push-style palm``) succeeds where it is aimed right and also with every target
    3.5 cm beside the push line, where the jaw style loses the cube (its contact is only as wide as the cube)."""
    for seed in range(2):
        assert _push_with_offset("palm", seed, 0.0) and _push_with_offset("jaw", seed, 0.0)
        assert _push_with_offset("palm", seed, 0.035)
        assert not _push_with_offset("jaw", seed, 0.035)
    env = make_env("push_cube", render=False)
    env.task.style = "sideways"
    with pytest.raises(ValueError, match="push_cube style must be one of"):
        env.reset(seed=0)


def test_jaw_high_push_travels_high_then_comes_straight_down_at_the_jaw_landing():
    """The jaw_high style succeeds as the jaw does; until it first reaches push height every target away from its
    landing point lies at least JAW_HIGH_Z minus its 2 cm rise margin above the table, one sits at JAW_HIGH_Z over
    the landing point, and every target on the way down from there is over the landing point."""
    from action_images.sim.tasks.push_cube import JAW_HIGH_Z, PUSH_Z, STANDOFF

    for seed in range(3):
        env = make_env("push_cube", render=False)
        env.task.style = "jaw_high"
        ok, actions = rollout(env, seed)
        assert ok
        env.reset(seed=seed)
        cube, goal = env.task.body_pos("cube")[:2], env.task.goal_xy()
        d = (goal - cube) / np.linalg.norm(goal - cube)
        landing = cube - (STANDOFF + 0.01) * d
        first_low = next(i for i, a in enumerate(actions) if a[2] < PUSH_Z + 0.005)
        before = actions[:first_low]
        away = [a for a in before if np.linalg.norm(a[:2] - landing) > 0.015]
        assert away and min(a[2] for a in away) >= JAW_HIGH_Z - 0.02
        assert any(np.linalg.norm(a[:2] - landing) < 0.005 and abs(a[2] - JAW_HIGH_Z) < 0.005 for a in before)
        assert all(np.linalg.norm(a[:2] - landing) < 0.015 for a in before if a[2] < JAW_HIGH_Z - 0.02)
        assert np.linalg.norm(actions[first_low][:2] - landing) < 0.015


def test_jaw_back_push_forgives_a_hand_that_comes_down_too_close():
    """The jaw_back style comes down 10 cm behind the cube instead of 5.5: with every target 4 cm closer to the cube it
    still lands behind it and pushes it home, where the jaw style lands on the cube."""
    for seed in range(2):
        assert _push_with_offset("jaw_back", seed, 0.0)
        assert _push_with_offset("jaw_back", seed, 0.0, along=0.04)
        assert not _push_with_offset("jaw", seed, 0.0, along=0.04)


def test_cage_push_comes_down_on_the_cube_slides_it_and_leaves_it():
    """The cage style (``collect --push-style cage``): the jaw, fully open, comes down around the cube itself (not on
    the table behind it), never closes, keeps the cube on the table, and after the mark rises and leaves it there;
    it succeeds with every target 2 cm off across or along the push, where the jaw style loses the cube 2.5 cm
    across it."""
    from action_images.sim.tasks.push_cube import PUSH_Z

    env = make_env("push_cube", render=False)
    env.task.style = "cage"
    env.reset(seed=3)
    cube0 = env.task.body_pos("cube")
    cube_z, low_xy, grips = [], None, []
    for t in range(env.max_steps + 10):                 # on past success (about step 11): the release and the hold
        a = env.expert_action()
        grips.append(a[7])
        env.step(a)
        cube_z.append(env.task.body_pos("cube")[2])
        if low_xy is None and env.arm.tcp_pos()[2] < PUSH_Z + 0.01:
            low_xy = env.arm.tcp_pos()[:2] - cube0[:2]  # where the hand first reaches push height
    assert np.linalg.norm(low_xy) < 0.012               # around the cube's centre, not 5.5 cm behind it
    assert min(grips) == 1.0                            # the jaw never closes
    assert max(cube_z) - env.task.half < 0.01           # the cube slides, never carried
    assert env.task.success(env) and env.task.expert_phase == "release" and env.arm.tcp_pos()[2] > 0.06
    for seed in range(2):
        for lateral, along in ((0.0, 0.0), (0.02, 0.0), (0.0, 0.02), (0.0, -0.02)):
            assert _push_with_offset("cage", seed, lateral, along), (seed, lateral, along)
        assert not _push_with_offset("jaw", seed, 0.025)


def test_cage_wait_holds_still_around_the_cube_before_it_pushes():
    """The cage_wait style is the cage with the hand held still for CAGE_WAIT steps once it is down around the cube;
    the cage itself passes through its (zero-step) wait in the same call, so its demos are unchanged."""
    from action_images.sim.tasks.push_cube import CAGE_WAIT

    def phases_and_targets(style):
        env = make_env("push_cube", render=False)
        env.task.style = style
        env.reset(seed=5)
        names, targets = [], []
        for _ in range(env.max_steps):
            targets.append(env.expert_action())
            names.append(env.task.expert_phase)
            if env.step(targets[-1])[2]:
                break
        return names, np.array(targets), env.task.success(env)

    names, targets, ok = phases_and_targets("cage_wait")
    assert ok and names.count("wait") == CAGE_WAIT
    waits = targets[[i for i, n in enumerate(names) if n == "wait"]]
    assert np.ptp(waits[:, :3], axis=0).max() < 0.005          # the hand stays where it came down
    cage_names, _, cage_ok = phases_and_targets("cage")
    assert cage_ok and "wait" not in cage_names and len(cage_names) < len(names)


def test_cage_slow_pushes_with_its_targets_nearer_the_cube():
    """The cage_slow style is the cage whose pushing targets lie CAGE_LEAD + CAGE_SLOW_ADVANCE (2.5 cm) ahead of the
    cube's centre, where the cage's lie 4.5 cm ahead: it still pushes the cube home, and forgives a landing 2 cm
    ahead."""
    from action_images.sim.tasks.push_cube import CAGE_ADVANCE, CAGE_LEAD, CAGE_SLOW_ADVANCE

    def push_leads(style):
        env = make_env("push_cube", render=False)
        env.task.style = style
        env.reset(seed=5)
        leads = []
        for _ in range(env.max_steps):
            a = env.expert_action()
            if env.task.expert_phase == "push":
                leads.append(float(np.linalg.norm(a[:2] - env.task.body_pos("cube")[:2])))
            if env.step(a)[2]:
                break
        return np.array(leads), env.task.success(env)

    slow, ok = push_leads("cage_slow")
    fast, fast_ok = push_leads("cage")
    assert ok and fast_ok and len(slow) > len(fast)                 # more, shorter steps
    assert slow.max() == pytest.approx(CAGE_LEAD + CAGE_SLOW_ADVANCE, abs=0.002)   # the farthest target ahead
    assert fast.max() == pytest.approx(CAGE_LEAD + CAGE_ADVANCE, abs=0.002)
    for seed in range(2):
        assert _push_with_offset("cage_slow", seed, 0.0, along=0.02), seed


def test_grip_closes_on_the_cube_slides_it_on_the_table_and_lets_go_at_the_mark():
    """The grip style (``collect --push-style grip``) is not a push: the jaw comes down on the cube's centre, closes on
    it, slides it to the mark with the cube never more than a few millimetres off the table, opens there and rises,
    leaving it on the mark; a cube dropped on the way sends the expert back to grasp it again."""
    import mujoco

    env = make_env("push_cube", render=False)
    env.task.style = "grip"
    env.reset(seed=3)
    cube0 = env.task.body_pos("cube")
    names, grips, cube_z, low_xy = [], [], [], None
    for _ in range(env.max_steps + 10):                 # on past success: the release and the rise
        a = env.expert_action()
        names.append(env.task.expert_phase)
        grips.append(a[7])
        env.step(a)
        cube_z.append(env.task.body_pos("cube")[2])
        if low_xy is None and env.arm.tcp_pos()[2] < cube0[2] + 0.01:
            low_xy = env.arm.tcp_pos()[:2] - cube0[:2]  # where the hand first comes down
    assert np.linalg.norm(low_xy) < 0.01                 # on the cube, as pick_cube's grasp does
    assert min(grips) == 0.0 and grips[-1] == 1.0        # it closes, and lets go at the end
    assert max(cube_z) - env.task.half < 0.006           # slid just off the table, never carried
    assert "slide" in names and names[-1] == "up" and env.arm.tcp_pos()[2] > 0.06
    assert env.task.success(env)
    for seed in range(4):
        assert _push_with_offset("grip", seed, 0.0), seed
    env.reset(seed=4)                                   # a cube lost as the slide starts: back to the approach
    for _ in range(env.max_steps):
        if env.task.expert_phase == "slide":
            break
        env.step(env.expert_action())
    assert env.task.expert_phase == "slide"
    goal = env.task.goal_xy()
    env.task.set_free_body("cube", [goal[0], goal[1] - 0.08, env.task.half])
    mujoco.mj_forward(env.task.model, env.task.data)
    env.expert_action()
    assert env.task.expert_phase in ("rise", "above")
    env.task.aim_offset = (0.02, 0.0)                   # a grasp takes no aiming offset
    with pytest.raises(ValueError, match="grip takes no aim_offset"):
        env.reset(seed=0)


def test_push_cube_counts_a_cube_on_the_mark_not_one_carried_above_it():
    """push_cube succeeds with the cube on the table at the mark; the same cube held 3 cm above the mark is not on it
    (a policy that lifts the cube and carries it over the mark would otherwise end the episode in the air)."""
    import mujoco

    from action_images.sim.tasks.push_cube import REST_TOL

    env = make_env("push_cube", render=False)
    env.reset(seed=0)
    task = env.task
    goal = task.goal_xy()
    for lift, on_mark in ((0.0, True), (REST_TOL - 0.005, True), (0.03, False), (0.08, False)):
        task.set_free_body("cube", [goal[0] + 0.01, goal[1], task.half + lift])
        mujoco.mj_forward(task.model, task.data)
        assert task.success(env) is on_mark, lift
    task.set_free_body("cube", [goal[0] + 0.05, goal[1], task.half])    # on the table, 5 cm from the mark
    mujoco.mj_forward(task.model, task.data)
    assert not task.success(env)


def test_stack_cube_with_equal_sizes_is_solved_and_fixed_sizes_come_back_exactly():
    """``sizes = "equal"`` gives the cube to move the base's size (resting on the table), and the expert stacks it;
    back at "fixed" a reset restores the compiled geometry bit for bit, so datasets and evaluations of the task as
    it is do not change; an unknown value is refused."""
    from action_images.sim.tasks.stack_cube import BASE_HALF

    env = make_env("stack_cube", render=False)
    m, g = env.model, env.model.geom("small").id
    compiled = (m.geom_size[g].copy(), m.geom_rbound[g].copy(), m.geom_aabb[g].copy())
    env.task.sizes = "equal"
    for seed in range(4):
        env.reset(seed=seed)
        assert m.geom_size[g] == pytest.approx([BASE_HALF] * 3) and env.task.body_pos("small")[2] == \
            pytest.approx(BASE_HALF, abs=1e-3)
        for _ in range(env.task.max_steps):
            if env.step(env.expert_action())[4]["success"]:
                break
        assert env.task.success(env), seed
    env.task.sizes = "fixed"
    env.reset(seed=0)
    for now, then in zip((m.geom_size[g], m.geom_rbound[g], m.geom_aabb[g]), compiled):
        np.testing.assert_array_equal(now, then)
    env.task.sizes = "big"
    with pytest.raises(ValueError, match="sizes"):
        env.reset(seed=0)
