"""The probes' arithmetic on made-up inputs: the Meta-World failure classes (bench/metaworld_failures.py), the
view-pair angles (bench/view_pair_geometry.py, bench/success_by_view_angle.py), the ensemble scores
(bench/ensemble_openloop.py), the keypoint error of checkpoints side by side (bench/keypoint_error.py), the hand
standing still or stuck in place at the end of an episode (bench/stalls.py), push_cube's success by the direction of
the push (bench/push_directions.py), the hand's place in the push line's frame (bench/push_hand_geometry.py), the
expert styles' tolerance to displaced targets (bench/push_styles.py) and the first plan's side of the cube
(bench/push_first_plan.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from action_images.geometry import ray_angle_deg


def load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = load("metaworld_failures")
pairs = load("view_pair_geometry")
angles = load("success_by_view_angle")
ensemble = load("ensemble_openloop")
posdec = load("position_decode")
stalls = load("stalls")
pushdir = load("push_directions")
handgeo = load("push_hand_geometry")
styles = load("push_styles")
textsep = load("text_separation")
oracle = load("keyframe_oracle")
firstplan = load("push_first_plan")
handoff = load("hand_offset")
daggerlab = load("dagger_labels")


def expert(n_pre=40, n_post=20):
    """An expert that walks from the origin to the object at (0.2, 0, 0), then rests 10 cm above it after success."""
    pre = np.linspace([0.0, 0.0, 0.0], [0.2, 0.0, 0.0], n_pre)
    post = np.repeat([[0.2, 0.0, 0.1]], n_post, axis=0)
    tcp = np.concatenate([pre, post])
    return {"success": True, "t_success": n_pre, "tcp": tcp, "obj": np.repeat([[0.2, 0.0, 0.0]], len(tcp), axis=0)}


def policy(tcp, success=False, obj=(0.2, 0.0, 0.0)):
    tcp = np.asarray(tcp, dtype=np.float64)
    return {"success": success, "tcp": tcp, "obj": np.repeat([obj], len(tcp), axis=0)}


def test_a_hand_that_stops_where_the_expert_rests_after_success_is_a_stall_there():
    n = 300
    path = np.concatenate([np.linspace([0, 0, 0], [0.19, 0.0, 0.09], 50), np.repeat([[0.19, 0.0, 0.09]], n - 50, 0)])
    c = probe.classify(policy(path), expert())
    # the stall begins where the hand comes within STALL_M (2 cm) of where it ends: |0.19, 0.09| * (1 - i / 49) < 0.02
    assert c["stalled"] and c["t_stall"] == 45
    assert c["at_post_success_hold"]
    assert c["end_to_expert_post_success_m"] == pytest.approx(np.hypot(0.01, 0.01), abs=1e-4)
    assert c["closest_to_object_m"] < 0.1

    short = np.concatenate([np.linspace([0, 0, 0], [0.1, 0.0, 0.0], 50), np.repeat([[0.1, 0.0, 0.0]], n - 50, 0)])
    c = probe.classify(policy(short), expert())
    assert c["stalled"] and not c["at_post_success_hold"]          # halfway along the expert's path: not its rest
    assert c["end_to_expert_pre_success_m"] < 0.01
    assert c["closest_to_object_m"] == pytest.approx(0.1, abs=1e-6)
    assert c["offset_at_closest_m"] == pytest.approx([-0.1, 0.0, 0.0], abs=1e-6)


def test_a_wandering_hand_is_not_a_stall_and_its_closest_approach_is_where_it_came_nearest():
    t = np.arange(500)
    path = np.stack([0.1 + 0.1 * np.sin(t / 20.0), np.full(500, 0.08), np.zeros(500)], axis=1)   # 8 cm off in y
    c = probe.classify(policy(path), expert())
    assert not c["stalled"] and c["t_stall"] is None
    assert c["closest_to_object_m"] == pytest.approx(0.08, abs=1e-3)
    assert c["offset_at_closest_m"][1] == pytest.approx(0.08, abs=1e-6)
    assert c["expert_closest_to_object_m"] == pytest.approx(0.0, abs=1e-6)
    assert c["object_moved_m"] == 0.0


def test_a_success_is_never_a_stall_and_a_short_failure_is_not_judged():
    still = np.zeros((300, 3))
    assert not probe.classify(policy(still, success=True), expert())["stalled"]
    assert not probe.classify(policy(np.zeros((probe.STALL_STEPS - 1, 3))), expert())["stalled"]
    assert probe.classify(policy(still), expert())["stalled"]


def test_the_angle_between_two_views_and_the_depth_part_of_an_error():
    x = np.zeros(3)
    assert ray_angle_deg(np.array([1.0, 0, 0]), np.array([0, 2.0, 0]), x) == pytest.approx(90.0)
    assert ray_angle_deg(np.array([1.0, 0, 0]), np.array([3.0, 0, 0]), x) == pytest.approx(0.0, abs=1e-6)
    assert ray_angle_deg([1.0, 0, 1], [-1.0, 0, 1], x) == pytest.approx(90.0)
    centres = np.array([[0.0, 0, 1], [0.1, 0, 1]])                 # both cameras above: depth is about z
    assert pairs.depth_component(np.array([0.0, 0, 0.05]), centres, x) == pytest.approx(0.05, rel=1e-2)
    assert pairs.depth_component(np.array([0.0, 0.05, 0]), centres, x) == pytest.approx(0.0, abs=1e-9)


def test_the_view_pair_summary_bins_by_angle_and_skips_keyframes_no_view_sees():
    row = {"pair": "a,b", "valid": True, "depth_err_cm": 1.0}
    rows = [{**row, "angle_deg": 5.0, "err_cm": 8.0, "px_err": 1.0},
            {**row, "angle_deg": 7.0, "err_cm": 6.0, "px_err": None},
            {**row, "angle_deg": 70.0, "err_cm": 2.0, "px_err": 0.5},
            {"pair": "all", "angle_deg": None, "valid": True, "err_cm": 1.5, "depth_err_cm": 0.5, "px_err": 0.4}]
    out = pairs.summarise(rows)
    assert out["0-10"]["keyframes"] == 2 and out["0-10"]["err_cm_median"] == 7.0 and out["0-10"]["px_err_median"] == 1.0
    assert out["60-90"]["err_cm_median"] == 2.0 and "10-20" not in out
    assert out["all four views"] == {"keyframes": 1, "err_cm_median": 1.5, "err_cm_mean": 1.5, "px_err_median": 0.4}


def test_success_by_view_angle_bins_the_pairs_and_reads_the_all_view_run_episode_by_episode(tmp_path, capsys):
    c = angles.CENTRE
    near = {"a": (c + [1, 0, 0]).tolist(), "b": (c + [1, 0.1, 0]).tolist(), "c": (c + [0, 1, 0]).tolist()}
    wide = {"a": (c + [1, 0, 0]).tolist(), "b": (c + [0, 1, 0]).tolist(), "c": (c + [0, 0, 1]).tolist()}
    two = [{"task": "t", "episode": 0, "success": False, "camera_positions": near},
           {"task": "t", "episode": 1, "success": True, "camera_positions": wide},
           {"task": "u", "episode": 0, "success": True, "camera_positions": near}]
    every = [{"task": "t", "episode": 0, "success": True}, {"task": "t", "episode": 1, "success": True},
             {"task": "u", "episode": 0, "success": True}]
    settings = {"policy": {"camera_names": ["a", "b"]}}
    (tmp_path / "two.json").write_text(json.dumps({"settings": settings, "episodes": two}))
    (tmp_path / "all.json").write_text(json.dumps({"episodes": every}))
    assert angles.main([str(tmp_path / "two.json"), "--all-views", str(tmp_path / "all.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["0-20"] == {"episodes": 2, "success_2_views": 0.5, "per_task_2_views": {"t": 0.0, "u": 1.0},
                           "success_all_views": 1.0}
    assert out["90-180"]["episodes"] == 1 and "60-90" not in out
    (tmp_path / "short.json").write_text(json.dumps({"episodes": every[:1]}))
    with pytest.raises(SystemExit, match="lacks 2 episodes"):
        angles.main([str(tmp_path / "two.json"), "--all-views", str(tmp_path / "short.json")])
    settings["policy"]["camera_names"] = ["a", "b", "c"]
    (tmp_path / "three.json").write_text(json.dumps({"settings": settings, "episodes": two}))
    with pytest.raises(SystemExit, match="reads 2-view runs"):
        angles.main([str(tmp_path / "three.json")])


def test_ensemble_scores_count_an_undecodable_keyframe_as_not_moving_and_summarise_every_keyframe():
    true = np.array([[0.1, 0.0, 0.0], [0.2, 0.0, 0.0]])
    start = np.zeros(3)
    pred = np.array([[0.1, 0.03, 0.0], [np.nan, np.nan, np.nan]])
    err = ensemble.position_error_cm(pred, np.array([True, False]), start, true)
    np.testing.assert_allclose(err, [3.0, 20.0])
    out = ensemble.summarise({"one": [err, np.array([1.0])]})
    assert out == {"one": {"keyframes": 3, "err_cm_median": 3.0, "err_cm_mean": 8.0}}
    tasks = ensemble.summarise_by_task({"one": [err, np.array([1.0]), np.array([5.0])]}, ["push", "pick", "push"])
    assert tasks == {"push": {"one": {"keyframes": 3, "err_cm_median": 5.0, "err_cm_mean": 9.33}},
                     "pick": {"one": {"keyframes": 1, "err_cm_median": 1.0, "err_cm_mean": 1.0}}}


def test_keypoint_error_scores_checkpoints_on_the_same_windows_and_noise(tmp_path, lerobot_root):
    """bench/keypoint_error.py: a checkpoint scored twice gives the same numbers (same windows, same noise); another
    checkpoint, other numbers; the JSON holds one row per checkpoint."""
    import torch

    from action_images.wam import WAMConfig, WorldActionModel

    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = WorldActionModel(WAMConfig.from_preset("cpu-tiny"))
        with torch.no_grad():                  # zero-initialised outputs would predict the same for both
            for prm in model.parameters():
                prm.add_(0.05 * torch.randn_like(prm))
        model.save_pretrained(tmp_path / name)
    ke = load("keypoint_error")
    out = tmp_path / "ke.json"
    assert ke.main(["--checkpoint", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(lerobot_root),
                    "--starts", "1", "--repeats", "1", "--json", str(out)]) == 0
    first = json.loads(out.read_text())["checkpoints"]
    assert ke.main(["--checkpoint", str(tmp_path / "a"), "--data", str(lerobot_root), "--starts", "1",
                    "--repeats", "1", "--json", str(out)]) == 0
    again = json.loads(out.read_text())["checkpoints"]
    a, b = first[str(tmp_path / "a")], first[str(tmp_path / "b")]
    assert again[str(tmp_path / "a")] == a and a["windows"] == 4 and a["batches"] == 1
    assert a["loss_act_mean"] != b["loss_act_mean"]


def test_stalls_finds_the_longest_still_run_and_judges_only_the_tail():
    walk = np.linspace([0.0, 0.0, 0.0], [0.3, 0.0, 0.0], 31)                 # 1 cm per step
    rest = np.repeat([[0.3, 0.0, 0.0]], 12, axis=0)
    path = np.concatenate([walk, rest, walk[::-1]])
    run, at = stalls.still_run(path, 0.005)
    assert (run, at) == (14, 30)                           # the walk's last point, the rest, the way back's first
    assert stalls.still_run(path, 0.0101)[0] == 15                          # one more step counts as within 1 cm
    dither = np.concatenate([walk, np.tile([[0.3, 0.0, 0.0], [0.33, 0.0, 0.0]], (15, 1))])   # 3 cm back and forth
    assert stalls.tail_still(dither, 0.04, 30) and not stalls.tail_still(dither, 0.01, 30)
    assert not stalls.tail_still(path, 0.04, 30)                            # it walked off again
    assert not stalls.tail_still(rest, 0.04, 30)                            # shorter than the tail: not judged


def test_ensemble_probe_sees_as_many_views_as_asked(tmp_path, lerobot_root):
    """bench/ensemble_openloop.py --views: the episode's first N views, or all of them; a count the dataset does not
    have is refused by flag."""
    import torch

    from action_images.wam import WAMConfig, WorldActionModel

    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny")).save_pretrained(tmp_path / "m")
    out = tmp_path / "e.json"
    args = ["--checkpoint", str(tmp_path / "m"), "--data", str(lerobot_root), "--starts", "1", "--samples", "2",
            "--sampler-steps", "1", "--json", str(out)]
    assert ensemble.main([*args, "--views", "all"]) == 0
    result = json.loads(out.read_text())
    assert result["views"] == ["cam0", "cam1", "cam2"]
    assert result["summary"]["one sample"]["keyframes"] == 4 * 2 * 2       # 4 episodes x 2 samples x H = 2
    tasks = result["by_task"]                           # the synthetic dataset records no task: one group
    assert list(tasks) == ["unknown"] and tasks["unknown"] == result["summary"]
    with pytest.raises(SystemExit, match="--views"):
        ensemble.main([*args, "--views", "4"])


def test_position_decode_measures_lead_and_distance_from_the_path():
    """bench/position_decode.py: the lead is the error along the demo's motion (ahead positive, none where the demo
    has not moved); the off-path distance is 0 anywhere on the polyline, early or late, and the perpendicular
    distance off it."""
    start = np.zeros(3)
    true = np.array([[0.02, 0, 0], [0.04, 0, 0], [0.0, 0.001, 0]])
    pred = np.array([[0.03, 0.01, 0], [0.035, 0, 0], [0.0, 0.0, 0]])
    lead = posdec.lead_cm(pred, start, true)
    np.testing.assert_allclose(lead[:2], [1.0, -0.5], atol=1e-9)
    assert np.isnan(lead[2])                                          # the demo moved 1 mm: no direction
    path = np.array([[0, 0, 0], [0.04, 0, 0], [0.04, 0.04, 0]])
    on = np.array([[0.01, 0, 0], [0.04, 0.03, 0]])                    # on it, whenever
    off = np.array([[0.02, 0.01, 0], [0.05, 0.02, 0], [0.04, 0.05, 0]])
    np.testing.assert_allclose(posdec.path_cm(on, path), [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(posdec.path_cm(off, path), [1.0, 1.0, 1.0], atol=1e-9)


def test_position_decode_selects_the_first_episodes_of_the_tasks_asked_for():
    tasks = ["push", "pick", "push", "stack", "push", "pick"]
    assert posdec.select_episodes(tasks, "", 0) == list(enumerate(tasks))
    assert posdec.select_episodes(tasks, "push", 2) == [(0, "push"), (2, "push")]
    assert posdec.select_episodes(tasks, "pick, stack", 1) == [(1, "pick"), (3, "stack")]
    assert posdec.select_episodes(tasks, "open_drawer", 0) == []


def test_position_decode_runs_on_a_tiny_checkpoint(tmp_path, lerobot_root):
    import torch

    from action_images.wam import WAMConfig, WorldActionModel

    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny")).save_pretrained(tmp_path / "m")
    out = tmp_path / "p.json"
    assert posdec.main(["--checkpoint", str(tmp_path / "m"), "--data", str(lerobot_root), "--starts", "2",
                        "--samples", "2", "--sampler-steps", "1", "--views", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["fit_cm"]["n"] == result["summary"]["point_cm"]["n"] == 4 * 2 * 2 * 2
    group = result["by_task"]["unknown"]
    assert len(group["point_cm_median_by_keyframe"]) == 2 and set(group["by_start"]) == {"0", "1"}
    with pytest.raises(SystemExit, match="--samples"):
        posdec.main(["--checkpoint", str(tmp_path / "m"), "--samples", "0"])
    with pytest.raises(SystemExit, match="--episodes"):
        posdec.main(["--checkpoint", str(tmp_path / "m"), "--episodes", "-1"])
    with pytest.raises(SystemExit, match="--tasks push_cube"):                # the synthetic data names no task
        posdec.main(["--checkpoint", str(tmp_path / "m"), "--data", str(lerobot_root), "--tasks", "push_cube",
                     "--views", "2", "--json", str(out)])


def test_push_directions_bins_success_and_marks_the_band_where_the_jaw_yaw_wraps():
    assert pushdir.in_wrap_band([90, -95, 60, 0, 180, -114], 25).tolist() == [True, True, False, False, False, True]
    direction = [90, -90, 100, 0, 10, 170]
    out = pushdir.summarise(direction, [0.11, 0.12, 0.17, 0.14, 0.11, 0.15], [0, 0, 1, 1, 1, 0], band=25)
    assert out["wrap_band"] == {"episodes": 3, "success": pytest.approx(1 / 3)}
    assert out["outside_band"] == {"episodes": 3, "success": pytest.approx(2 / 3)}
    assert out["by_direction_deg"]["0..45"] == {"episodes": 2, "success": 1.0}
    assert out["by_direction_deg"]["-45..0"] == {"episodes": 0, "success": None}
    assert out["by_distance_cm"]["10..13"]["episodes"] == 3 and 0 < out["fisher_p"] <= 1
    assert pushdir.summarise([180, -180], [0.1, 0.1], [1, 0], band=25)["by_direction_deg"]["135..180"]["episodes"] == 1
    env = pushdir.push_env()
    angle, dist = pushdir.push_geometry(env, 3)                     # the scene of a real episode seed
    assert -180 <= angle <= 180 and 0.1 <= dist <= 0.18
    assert pushdir.push_geometry(pushdir.push_env("train"), 3) == (angle, dist)   # the rig does not change the scene
    assert pushdir.push_geometry(env, 4) != (angle, dist) and pushdir.push_geometry(env, 3) == (angle, dist)
    pushdir.push_geometry(env, 3)                                    # the scene of seed 3 at its start: the mark's
    side = pushdir.start_side(env)                                   # direction from the cube against the hand
    cube, hand = env.task.body_pos("cube")[:2], env.arm.tcp_pos()[:2]
    to_mark = np.degrees(np.arctan2(*(env.task.goal_xy() - cube)[::-1]))
    to_hand = np.degrees(np.arctan2(*(hand - cube)[::-1]))
    assert side == pytest.approx(180 - abs((to_mark - to_hand + 180) % 360 - 180), abs=1e-6)
    sided = pushdir.summarise([0, 0, 0, 0], [0.11] * 4, [1, 1, 0, 0], band=25, side=[10, 50, 100, 170])
    assert sided["by_start_side_deg"] == {"0..60": {"episodes": 2, "success": 1.0},
                                          "60..120": {"episodes": 1, "success": 0.0},
                                          "120..180": {"episodes": 1, "success": 0.0}}
    assert sided["start_side_fisher_p"] == pytest.approx(1 / 3)     # 2 of 2 under 90° against 0 of 2 over it
    assert "by_start_side_deg" not in out


def test_push_directions_rebuilds_the_jittered_start_of_an_evaluation_and_refuses_one_that_differs(tmp_path):
    """An evaluation run with --start-jitter: the scene is rebuilt with the same jitter, so the hand starts where the
    record says; a record whose start the rebuilt scene does not give is refused, naming the episode."""
    jittered = pushdir.push_env("train", 0.1)
    pushdir.push_geometry(jittered, 5)
    start = jittered.arm.tcp_pos().tolist()
    home = pushdir.push_env("train")
    pushdir.push_geometry(home, 5)
    assert np.linalg.norm(np.subtract(start, home.arm.tcp_pos())) > 0.005

    def write(start_position, name):
        ev = {"settings": {"rig_distribution": "train", "start_jitter": 0.1},
              "episodes": [{"task": "push_cube", "episode": 0, "seed": 5, "success": True,
                            "start_position": start_position}]}
        (tmp_path / name).write_text(json.dumps(ev))
        return str(tmp_path / name)

    assert pushdir.main([write(start, "ok.json"), "--json", str(tmp_path / "out.json")]) == 0
    sides = json.loads((tmp_path / "out.json").read_text())["pooled"]["by_start_side_deg"]
    assert sum(b["episodes"] for b in sides.values()) == 1
    with pytest.raises(SystemExit, match="episode 0's hand starts at"):
        pushdir.main([write(home.arm.tcp_pos().tolist(), "bad.json")])


def test_ensemble_selection_takes_the_best_mean_over_valid_keyframes_and_never_an_undecodable_sample():
    scores = np.array([[1.0, 9.0], [2.0, 2.0], [0.1, np.nan], [np.nan, np.nan]])
    valid = np.array([[True, True], [True, True], [True, False], [False, False]])
    assert ensemble.select_sample(scores, valid, lowest=True) == 2          # 0.1 over its one valid keyframe
    assert ensemble.select_sample(scores, valid, lowest=False) == 0         # 5.0
    assert ensemble.select_sample(scores[3:], valid[3:], lowest=True) == 0   # nothing decodes: the only sample
    valid[2] = False
    assert ensemble.select_sample(scores, valid, lowest=True) == 1


def test_probe_command_records_the_arguments_given_or_the_processs_own(monkeypatch):
    from action_images.runfiles import probe_command
    monkeypatch.setattr("sys.argv", ["/somewhere/bench/stalls.py", "--seed", "7"])
    assert probe_command("/work/bench/stalls.py", ["--episodes", "3"]) == "bench/stalls.py --episodes 3"
    assert probe_command("/work/bench/stalls.py", []) == "bench/stalls.py"          # not the process's arguments
    assert probe_command("/work/bench/stalls.py", None) == "bench/stalls.py --seed 7"


def test_push_hand_geometry_measures_along_and_across_the_start_push_line():
    cube = np.array([[0.0, 0.0], [0.02, 0.0], [0.05, 0.01]])            # the cube moves after the first step
    tcp = np.array([[-0.055, 0.01], [0.0, -0.02], [0.15, 0.01]])
    along, across = handgeo.push_frame(tcp, cube, np.array([0.1, 0.0]))   # the push line: +x
    np.testing.assert_allclose(along, [-0.055, -0.02, 0.10])
    np.testing.assert_allclose(across, [0.01, -0.02, 0.0])
    along, across = handgeo.push_frame(tcp[:1], cube[:1], np.array([0.0, -0.1]))   # pushing toward -y
    np.testing.assert_allclose([along[0], across[0]], [-0.01, -0.055])
    rows = [{"success": s, "first_low_along_cm": f, "low_along_cm": 1.0, "low_across_cm": 2.0,
             "first_low_across_cm": 1.0, "cube_moved_cm": 3.0, "cube_goal_cm": 4.0, "final_tcp_z_cm": 3.0,
             "horizontal_steps": 0, "first_low_goal_cm": None if f is None else 10 - f,
             "first_low_cube_cm": None if f is None else abs(f), "cube_lift_cm": lift, "end_cube_lift_cm": lift / 2}
            for s, f, lift in ((True, -5.0, 9.0), (False, 8.0, 0.0), (False, -1.0, 1.0), (False, None, 2.0))]
    out = handgeo.summarise(rows)
    assert out["successes"]["episodes"] == 1 and out["successes"]["first_low_on_the_goal_side"] == 0
    assert out["failures"] == {**out["failures"], "episodes": 3, "first_low_on_the_goal_side": 1, "never_low": 1,
                               "first_low_along_cm_median": 3.5, "first_low_nearer_the_goal": 1,
                               "cube_lift_cm_median": 1.0, "end_cube_lift_cm_median": 0.5}
    assert out["successes"]["cube_lift_cm_median"] == 9.0


def test_push_styles_displace_every_target_and_keep_the_scene():
    plain, moved = styles.push_env("jaw"), styles.push_env("palm", lateral=0.03, along=0.01)
    plain.reset(seed=5), moved.reset(seed=5)
    (p0, q0, _), (p1, q1, g1) = plain.task._behind(0.03), moved.task._behind(0.03)
    d = plain.task._dir()
    np.testing.assert_allclose(plain.task.goal_xy(), moved.task.goal_xy())
    offset = (p1 - p0)[:2] + 0.08 * d                          # the palm's standoff is 8 cm longer than the jaw's
    np.testing.assert_allclose(offset, 0.03 * np.array([-d[1], d[0]]) + 0.01 * d, atol=1e-9)
    assert g1 == 1.0 and not np.allclose(q0, q1)
    assert styles.run(plain, 5)[0]
    with pytest.raises(SystemExit):
        styles.main(["--styles", "sideways"])
    with pytest.raises(SystemExit):                            # the grip takes no aiming offset
        styles.main(["--styles", "grip", "--lateral=0.02"])


def test_text_separation_fills_every_template_and_measures_task_centroids():
    texts = textsep.instructions(("lift the {color} cube", "put {a} on {b}", "open it"), ["red", "blue", "green"])
    assert len(texts) == 3 + 6 + 1 and "put red on blue" in texts and "put red on red" not in texts
    pooled = {"a": np.array([[2.0, 1.2], [2.0, -1.2]]), "b": np.array([[0.0, 4.0], [0.0, 4.0]]),
              "c": np.array([[2.0, 1.5]])}
    out = textsep.separation(pooled, np.zeros(2))
    a = out["tasks"]["a"]
    assert a["instructions"] == 2 and a["spread_rms"] == pytest.approx(1.2) and a["to_empty"] == pytest.approx(2.0)
    assert a["to_tasks"]["b"] == pytest.approx(np.hypot(2, 4)) and a["nearest_task"] == "c"
    assert out["nearest_centroid_accuracy"] == pytest.approx(4 / 5)   # (2, 1.2) lies nearer c's centroid than a's
    first, second = textsep.swapped_pairs(("lift the {color} cube", "put {a} on {b}"), ["red", "blue", "green"])
    assert len(first) == len(second) == 6 and ("put red on blue", "put blue on red") in zip(first, second)


def test_text_separation_measures_what_exchanging_two_colours_does(tmp_path, capsys):
    """A checkpoint whose encoder is a bag of words pools an instruction and its colour-exchanged twin to the same
    vector; one text layer (trained-looking weights) does not."""
    import json

    import torch
    from action_images.wam import WAMConfig, WorldActionModel
    for layers, name in ((0, "bag"), (1, "layer")):
        cfg = WAMConfig.from_preset("cpu-tiny")
        cfg.text = {**cfg.text, "layers": layers}
        torch.manual_seed(0)
        m = WorldActionModel(cfg)
        with torch.no_grad():
            for p in m.text_encoder.parameters():
                p.add_(0.1 * torch.randn_like(p))
        m.save_pretrained(tmp_path / name)
        assert textsep.main(["--checkpoint", str(tmp_path / name), "--json", str(tmp_path / f"{name}.json")]) == 0
    bag, layer = (json.loads((tmp_path / f"{n}.json").read_text())["tasks"] for n in ("bag", "layer"))
    assert {k for k in bag if "swap_rms" in bag[k]} == {"push_cube", "place_in_bin", "stack_cube"}
    assert all(bag[k]["swap_rms"] < 1e-5 for k in ("push_cube", "place_in_bin", "stack_cube"))
    assert all(layer[k]["swap_rms"] > 1e-3 for k in ("push_cube", "place_in_bin", "stack_cube"))
    assert all(layer[k]["swap_to_spread"] == pytest.approx(layer[k]["swap_rms"] / layer[k]["spread_rms"])
               for k in ("push_cube", "place_in_bin", "stack_cube"))
    assert "colours exchanged" in capsys.readouterr().err


def test_keyframe_oracle_looks_ahead_without_moving_the_scene_and_succeeds_with_the_experts_keyframes():
    from action_images.sim import make_env

    env = make_env("push_cube", render=False)
    env.reset(seed=3)
    before = (env.ee_pose(), env.task.body_pos("cube"), env.step_count, env.task._phase)
    kf, phase = oracle.expert_keyframes(env, 4, 2, 4)
    after = (env.ee_pose(), env.task.body_pos("cube"), env.step_count, env.task._phase)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:] and kf.shape == (4, 8) and phase[0] >= before[3]
    env.reset(seed=3)                                   # the look-ahead's keyframes are the expert's own targets
    targets = []
    for _ in range(8):
        targets.append(env.expert_action())
        env.step(targets[-1])
    np.testing.assert_allclose(kf, np.array(targets)[[1, 3, 5, 7]])
    assert oracle.oracle_episode(env, 3, 4, 2, 4, "linear")["success"]
    far = oracle.oracle_episode(env, 3, 4, 2, 4, "linear", noise_m=0.5)   # half a metre of noise: no push lands
    assert not far["success"] and far["length"] == env.max_steps
    env.reset(seed=3)       # blurred: each keyframe's position and gripper are the mean of the targets one step
    blurred, _ = oracle.expert_keyframes(env, 4, 2, 4, blur=1)        # either side of its own; its rotation its own
    env.reset(seed=3)
    longer = []
    for _ in range(9):
        longer.append(env.expert_action())
        env.step(longer[-1])
    longer = np.array(longer)
    for j, i in enumerate((1, 3, 5, 7)):
        np.testing.assert_allclose(blurred[j, :3], longer[i - 1:i + 2, :3].mean(axis=0))
        np.testing.assert_allclose(blurred[j, 7], longer[i - 1:i + 2, 7].mean())
        np.testing.assert_allclose(blurred[j, 3:7], longer[i, 3:7])
    assert not np.allclose(blurred[:, :3], kf[:, :3])
    env.reset(seed=3)                                   # two steps either side: keyframe 1 (step 1) is clipped at step 0
    wide, _ = oracle.expert_keyframes(env, 4, 2, 4, blur=2)
    np.testing.assert_allclose(wide[0, :3], longer[0:4, :3].mean(axis=0))


def _first_plan_rows(plan_of, n=40, seed=0, hand_of=None, variants=None):
    """Made-up first plans: cube at the origin, goal 10-18 cm away in a random direction, the hand's start 20 cm away
    in another, the expert's two keyframes 5.5 cm behind the cube; ``plan_of(expert_xy, goal_xy)`` gives the plan's
    keyframe (``hand_of(hand_xy)`` instead, if given); ``variants`` maps a counterfactual's name to its plan from
    the plan and the goal."""
    rng, rows = np.random.default_rng(seed), []
    for _ in range(n):
        a, b = rng.uniform(-np.pi, np.pi, 2)
        d = np.array([np.cos(a), np.sin(a)])
        cube, goal, hand = np.zeros(2), rng.uniform(0.10, 0.18) * d, 0.2 * np.array([np.cos(b), np.sin(b)])
        kfs = []
        for k in (1, 2):
            e = cube - 0.055 * d
            p = plan_of(e, goal) if hand_of is None else hand_of(hand)
            kfs.append({"k": k, "expert": list(firstplan.line_frame(e, cube, goal)),
                        "plan": list(firstplan.line_frame(p, cube, goal)), "expert_xy": e.tolist(),
                        "plan_xy": p.tolist()})
            kfs[-1].update({f"{name}_xy": f(p, goal).tolist() for name, f in (variants or {}).items()})
        rows.append({"cube_xy": cube.tolist(), "goal_xy": goal.tolist(), "hand_xy": hand.tolist(), "keyframes": kfs})
    return rows


def test_push_first_plan_tells_a_plan_on_the_expert_side_from_one_that_ignores_the_goal():
    behind, lateral = firstplan.line_frame(np.array([-0.05, 0.02]), np.zeros(2), np.array([0.1, 0.0]))
    assert (behind, lateral) == pytest.approx((0.05, 0.02))          # behind: away from the goal; lateral: to the left
    assert firstplan.angle_deg(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(90.0)
    # a plan on the expert's side at 60 % of the distance: slope 0.6, angles 0, the shuffled control far worse
    knows = firstplan.summarise(_first_plan_rows(lambda e, g: 0.6 * e))["k2"]
    assert knows["slope_behind"] == pytest.approx(0.6) and knows["abs_angle_deg_median"] == pytest.approx(0.0)
    assert knows["xy_miss_cm_median"] == pytest.approx(2.2)                 # 40 % of the 5.5 cm
    assert knows["within_45deg"] == 40 and knows["control_within_45deg"] < 25
    assert knows["ahead_cm_median"] == pytest.approx(2.2)     # 40 % of 5.5 cm past the expert's target, toward the goal
    # a plan 4 cm from the cube in a fixed world direction, whatever the goal: no side, angles like the control's
    blind = firstplan.summarise(_first_plan_rows(lambda e, g: np.array([0.04, 0.0])))["k2"]
    assert abs(blind["slope_behind"]) < 0.3 and 5 < blind["within_45deg"] < 20
    # a plan a fixed 3 cm ahead along the push leads the same wherever the mark is; one drawn a third of the way to
    # the mark leads farther when the mark is farther
    lead = firstplan.summarise(_first_plan_rows(lambda e, g: e + 0.03 * g / np.linalg.norm(g)))["k2"]
    assert lead["ahead_cm_median_nearer_half"] == pytest.approx(3.0)
    assert lead["ahead_cm_median_farther_half"] == pytest.approx(3.0)
    drawn = firstplan.summarise(_first_plan_rows(lambda e, g: e + g / 3))["k2"]
    assert drawn["ahead_vs_push_distance_spearman"] > 0.9
    assert drawn["ahead_cm_median_farther_half"] > drawn["ahead_cm_median_nearer_half"] + 1.0


def test_push_first_plan_fits_the_plans_on_the_goal_and_the_hand():
    """The fit gives the plans' offset away from the goal and toward the hand, in cm: the expert's own targets are 5.5
    cm away from the goal; a plan 3 cm toward the hand's start, whatever the goal, has no goal term."""
    follows = firstplan.summarise(_first_plan_rows(lambda e, g: e))["k2"]
    assert follows["fit_plan_away_cm"] == pytest.approx(5.5) and follows["fit_expert_away_cm"] == pytest.approx(5.5)
    assert follows["fit_plan_hand_cm"] == pytest.approx(0.0, abs=1e-6) and follows["fit_plan_r2"] == pytest.approx(1.0)
    handy = firstplan.summarise(_first_plan_rows(None, hand_of=lambda h: 0.03 * h / np.linalg.norm(h)))["k2"]
    assert handy["fit_plan_hand_cm"] == pytest.approx(3.0) and handy["fit_plan_away_cm"] == pytest.approx(0.0, abs=1e-6)
    assert "goal_response" not in handy                                  # no counterfactual plans, no response


def test_push_first_plan_counterfactual_tells_a_plan_that_follows_the_mark_from_one_that_ignores_it():
    """Reflecting the mark through the cube moves a goal-following plan (the expert's own target) 11 cm along the
    push: gain 1; a plan that stays where it was: gain 0, shift 0; hide and noise shifts are reported as given."""
    same = {"hide": lambda p, g: p + np.array([0.01, 0.0]), "noise": lambda p, g: p + np.array([0.0, 0.02])}
    follows = firstplan.summarise(_first_plan_rows(lambda e, g: e, variants={"reflect": lambda p, g: -p, **same}))
    cf = follows["k2"]["goal_response"]
    assert cf["scenes"] == 40 and cf["reflect_gain"] == pytest.approx(1.0)
    assert cf["reflect_along_cm_median"] == pytest.approx(11.0)
    assert cf["expert_reflect_along_cm_median"] == pytest.approx(11.0)
    assert cf["hide_shift_cm_median"] == pytest.approx(1.0) and cf["noise_shift_cm_median"] == pytest.approx(2.0)
    assert cf["reflect_self_gain"] == pytest.approx(1.0)
    assert 0 < cf["in_range_scenes"] <= 40 and cf["reflect_along_cm_median_in_range"] == pytest.approx(11.0)
    blind = firstplan.summarise(_first_plan_rows(lambda e, g: np.array([0.04, 0.0]),
                                                 variants={"reflect": lambda p, g: p, **same}))["k2"]["goal_response"]
    assert blind["reflect_gain"] == pytest.approx(0.0) and blind["reflect_shift_cm_median"] == pytest.approx(0.0)
    assert blind["reflect_self_gain"] == pytest.approx(0.0)


def test_push_first_plan_reads_which_way_the_plans_miss():
    """A plan drawn 4 cm toward the goal misses along the line, toward it, and not across; one drawn 3 cm to the side
    misses across; plans within 2 cm of the expert are no misses; heights are read where recorded."""
    toward = firstplan.summarise(_first_plan_rows(lambda e, g: e + 0.04 * g / np.linalg.norm(g)))["k2"]
    assert toward["misses_over_2cm"] == 40 and toward["misses_over_2cm_toward_goal"] == 40
    assert toward["miss_along_cm_median"] == pytest.approx(4.0)
    assert toward["miss_across_cm_median"] == pytest.approx(0)
    away = firstplan.summarise(_first_plan_rows(lambda e, g: e - 0.04 * g / np.linalg.norm(g)))["k2"]
    assert away["misses_over_2cm"] == 40 and away["misses_over_2cm_toward_goal"] == 0
    assert toward["plan_z_cm_median"] is None                      # the made-up rows record no heights
    side = firstplan.summarise(_first_plan_rows(
        lambda e, g: e + 0.03 * np.array([-g[1], g[0]]) / np.linalg.norm(g)))["k2"]
    assert side["misses_over_2cm"] == 40 and side["miss_across_cm_median"] == pytest.approx(3.0)
    assert side["miss_along_cm_median"] == pytest.approx(0.0)
    rows = _first_plan_rows(lambda e, g: e - 0.01 * g / np.linalg.norm(g))
    for r in rows:
        r["keyframes"][1].update(plan_z=0.036, expert_z=0.03)
    near = firstplan.summarise(rows)["k2"]
    assert near["misses_over_2cm"] == 0 and near["miss_along_cm_median"] is None
    assert (near["plan_z_cm_median"], near["expert_z_cm_median"]) == (pytest.approx(3.6), pytest.approx(3.0))


def test_push_first_plan_summarises_a_recorded_json_again(tmp_path, capsys):
    """``--summarise``: the recorded episodes of an earlier JSON, summarised by today's code, without a model."""
    rows = _first_plan_rows(lambda e, g: e + 0.04 * g / np.linalg.norm(g))
    src, out = tmp_path / "old.json", tmp_path / "new.json"
    src.write_text(json.dumps({"command": "x", "task": "stack_cube", "seed": 7, "episodes_detail": rows,
                               "summary": {}}))
    assert firstplan.main(["--summarise", str(src), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["summarised_from"] == str(src) and res["source_command"] == "x" and res["task"] == "stack_cube"
    assert res["summary"]["k2"]["misses_over_2cm_toward_goal"] == 40 and res["seed"] == 7
    capsys.readouterr()
    capsys.readouterr()
    assert firstplan.main(["--summarise", str(out), "--json", str(tmp_path / "again.json")]) == 2   # no episodes
    err = capsys.readouterr().err
    assert "holds summaries of" in err and str(src) in err
    assert firstplan.main(["--summarise", str(tmp_path / "none.json"), "--json", str(out)]) == 2
    assert "--summarise" in capsys.readouterr().err
    assert firstplan.main(["--summarise", str(src), "--json", str(src)]) == 2     # would overwrite its own source
    assert "same file" in capsys.readouterr().err and json.loads(src.read_text())["episodes_detail"]
    src.write_text(json.dumps({"episodes_detail": []}))
    assert firstplan.main(["--summarise", str(src), "--json", str(out)]) == 2
    assert "no recorded episodes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        firstplan.main(["--json", str(out)])                         # no checkpoint, nothing to summarise
    assert "--checkpoint" in capsys.readouterr().err


def test_push_first_plan_leaves_out_what_it_cannot_compare():
    """Keyframes past the end of the expert's episode are not compared; an expert whose target sits on the cube gives
    no gain on its own shift (but the plan's own reflection still does); the direction fit is for first
    observations only."""
    rows = _first_plan_rows(lambda e, g: e, variants={"reflect": lambda p, g: -p, "hide": lambda p, g: p,
                                                      "noise": lambda p, g: p})
    for r in rows[:10]:
        r["keyframes"][1]["expert_done"] = True
    assert firstplan.summarise(rows)["k2"]["plans"] == 30 and firstplan.summarise(rows)["k1"]["plans"] == 40
    for r in rows:                                       # the expert on the cube's centre, the plan 4 cm toward the mark
        for kf in r["keyframes"]:
            g = np.asarray(r["goal_xy"])
            kf["expert_xy"], kf["expert_done"] = [0.0, 0.0], False
            kf["plan_xy"] = (0.04 * g / np.linalg.norm(g)).tolist()
            kf["reflect_xy"] = (-np.asarray(kf["plan_xy"])).tolist()
    cf = firstplan.summarise(rows)["k2"]["goal_response"]
    assert cf["reflect_gain"] is None and cf["reflect_self_gain"] == pytest.approx(1.0)
    assert cf["reflect_along_cm_median"] == pytest.approx(-8.0)
    for r in rows:
        r["start_step"] = 4
    assert "fit_plan_away_cm" not in firstplan.summarise(rows)["k2"]


def test_push_first_plan_reads_where_the_plan_goes_when_the_colours_are_swapped():
    """A plan a fifth of the way from the cube to the goal object that, with the colours exchanged, goes to the other
    object: shares 0.2 and 1.0; without a swap variant nothing is reported."""
    same = {"reflect": lambda p, g: p, "hide": lambda p, g: p, "noise": lambda p, g: p}
    rows = _first_plan_rows(lambda e, g: g / 5, variants={**same, "swap": lambda p, g: g})
    cf = firstplan.summarise(rows)["k2"]["goal_response"]
    assert cf["share_toward_goal_median"] == pytest.approx(0.2)
    assert cf["share_toward_goal_swapped_median"] == pytest.approx(1.0)
    assert cf["nearer_goal_plans"] == 0 and cf["nearer_goal_plans_swapped"] == 40       # 40 made-up scenes
    assert cf["swap_over_6cm"] == sum(d > 6 for d in [80 * np.linalg.norm(r["goal_xy"]) for r in rows])
    assert cf["noise_over_6cm"] == 0
    d = [0.8 * np.linalg.norm(r["goal_xy"]) for r in rows]
    assert cf["swap_shift_cm_median"] == pytest.approx(100 * np.median(d), abs=0.01)
    assert "swap_shift_cm_median" not in firstplan.summarise(_first_plan_rows(lambda e, g: g / 5,
                                                                               variants=same))["k2"]["goal_response"]
    # colours exchanged: the plan stays; sizes exchanged: it goes to the other object; each read on its own
    rows = _first_plan_rows(lambda e, g: g / 5, variants={**same, "swap": lambda p, g: p, "sizes": lambda p, g: g})
    cf = firstplan.summarise(rows)["k2"]["goal_response"]
    assert cf["swap_shift_cm_median"] == 0 and cf["share_toward_goal_swapped_median"] == pytest.approx(0.2)
    assert cf["share_toward_goal_sizes_median"] == pytest.approx(1.0) and cf["share_toward_goal_median"] == \
        pytest.approx(0.2)
    assert cf["nearer_goal_plans"] == 0 and cf["nearer_goal_plans_swapped"] == 0 and cf["nearer_goal_plans_sizes"] == 40
    assert cf["sizes_shift_cm_median"] == pytest.approx(100 * np.median(d), abs=0.01) and cf["noise_over_6cm"] == 0
    only = firstplan.summarise(_first_plan_rows(lambda e, g: g / 5, variants={**same, "sizes": lambda p, g: g}))
    assert "sizes_shift_cm_median" in only["k2"]["goal_response"] and "nearer_goal_plans" not in \
        only["k2"]["goal_response"]


def test_push_first_plan_exchanges_the_stack_cubes_sizes_for_one_plan_and_restores_the_scene():
    """The sizes counterfactual renders each cube at the other's size, resting on the table at its own place, and
    leaves the scene as it was."""
    from action_images.sim import make_env

    env = make_env("stack_cube", render=False)
    env.reset(seed=2)
    m = env.model
    before = (m.geom_size.copy(), env.data.qpos.copy(), env.data.xpos.copy())
    seen = {}

    class Policy:
        def reset(self, seed):
            seen["seed"] = seed

        def plan(self, obs, cameras):
            seen["sizes"] = {b: float(m.geom_size[m.geom(b).id][0]) for b in ("small", "big")}
            seen["z"] = {b: float(env.task.body_pos(b)[2]) for b in ("small", "big")}
            seen["xy"] = {b: env.task.body_pos(b)[:2].copy() for b in ("small", "big")}
            return "chunk"

    from types import SimpleNamespace
    view = SimpleNamespace(model=m, data=env.data, task=env.task, observe=lambda: {}, cameras=[])
    xy0 = {b: env.task.body_pos(b)[:2].copy() for b in ("small", "big")}
    assert firstplan.plan_sizes_exchanged(view, Policy(), 7, "small", "big") == "chunk" and seen["seed"] == 7
    assert seen["sizes"] == pytest.approx({"small": 0.026, "big": 0.02})
    assert seen["z"] == pytest.approx({"small": 0.026, "big": 0.02})                  # each resting on the table
    for b in ("small", "big"):
        np.testing.assert_allclose(seen["xy"][b], xy0[b], atol=1e-9)
    np.testing.assert_array_equal(m.geom_size, before[0])
    np.testing.assert_array_equal(env.data.qpos, before[1])
    np.testing.assert_allclose(env.data.xpos, before[2], atol=1e-12)             # the scene as it was, forwarded


def test_push_first_plan_finds_how_many_steps_the_plans_run_ahead():
    """A plan that sits where the expert is 3 steps later matches the path best at shift +3."""
    path = np.c_[0.01 * np.arange(30), np.zeros(30), np.full(30, 0.05)]          # 1 cm per step along x
    rows = []
    for _ in range(5):
        kfs = []
        for k in (1, 2):
            t = k * 2 - 1 + 3
            kfs.append({"k": k, "plan": [0.0, 0.0], "plan_xy": path[t, :2].tolist(), "plan_z": float(path[t, 2])})
        rows.append({"keyframes": kfs, "stride": 2, "expert_path": path.tolist()})
    shift = firstplan.best_shift(rows)
    assert shift["k1"]["best_shift"] == 3 and shift["k2"]["best_shift"] == 3
    assert shift["k2"]["median_cm_by_shift"][0] == pytest.approx(3.0)


def test_push_first_plan_moves_a_static_goal_and_a_free_one_where_asked():
    """move_body puts the mark (a static body) and stack_cube's big cube (a free body) at the asked place, each
    by its own means, and leaves the other objects where they were."""
    from action_images.sim import make_env

    for task, body, other in (("push_cube", "goal", "cube"), ("stack_cube", "big", "small")):
        env = make_env(task, render=False)
        env.reset(seed=1)
        before = env.task.body_pos(other)
        target = np.array([0.05, -0.12, env.task.body_pos(body)[2]])
        firstplan.move_body(env, body, target)
        np.testing.assert_allclose(env.task.body_pos(body), target, atol=1e-9)
        np.testing.assert_allclose(env.task.body_pos(other), before, atol=1e-12)
        assert firstplan.OBJECTS[task] == (other, body)
        env.close()


@pytest.mark.parametrize("task", ["push_cube", "stack_cube"])
def test_push_first_plan_plans_from_the_experts_state_and_moves_only_the_goal(task, checkpoint, monkeypatch):
    """first_plans with --start-step and --counterfactual on a tiny random checkpoint: the plan starts from the
    expert's own state after that many steps, the expert's targets are those from there on, every keyframe carries
    the reflected, hidden, colour-swapped and other-noise plans, the goal (the mark: a static body; stack_cube's big
    cube: a free one) is back in place for the last two, and the colours are swapped for that plan only."""
    from action_images.data.collect import run_episode
    from action_images.policy import ActionImagesPolicy
    from action_images.rollout import EpisodeRunner
    from action_images.sim import make_env

    obj, target = firstplan.OBJECTS[task]
    envs, seen = [], []                             # the env first_plans opens; the goal and colours at each plan
    open_env, plan = EpisodeRunner.open, ActionImagesPolicy.plan
    monkeypatch.setattr(EpisodeRunner, "open", lambda self, t: envs.append(open_env(self, t)) or envs[-1])

    def noting_plan(self, obs, cameras):
        env = envs[-1]
        rgba = env.model.geom_rgba
        seen.append((env.task.body_pos(target), rgba[env.model.geom(obj).id].copy(),
                     rgba[env.model.geom(target).id].copy()))
        return plan(self, obs, cameras)

    monkeypatch.setattr(ActionImagesPolicy, "plan", noting_plan)
    rows = firstplan.first_plans(str(checkpoint), 1, 4242, 1, None, "jaw", counterfactual=True, start_step=2,
                                 task=task)
    r = rows[0]
    rec = run_episode(make_env(task, render=False), r["seed"], [], hold_steps=0)
    np.testing.assert_allclose(r["hand_xy"], rec.states[2][:2], atol=2e-4)
    np.testing.assert_allclose(r["expert_path"], rec.actions[2:, :3], atol=1e-4)
    cube, goal = np.array(r["cube_xy"]), np.array(r["goal_xy"])
    assert len(seen) == 5                           # the plan, reflected, hidden, colours swapped, another noise draw
    assert not any("sizes_xy" in kf for kf in r["keyframes"])       # sizes exchanged: from the first observation only
    (g0, a0, b0), (g1, _, _), (g2, _, _), (g3, a3, b3), (g4, a4, b4) = seen
    np.testing.assert_allclose(g0[:2], goal, atol=1e-4)
    np.testing.assert_allclose(g1[:2], 2 * cube - goal, atol=1e-4)           # reflected through the cube
    assert g2[2] < -0.4                                                       # under the table
    np.testing.assert_allclose(g3, g0, atol=1e-9)                             # back for the last two
    np.testing.assert_allclose(g4, g0, atol=1e-9)
    assert not np.allclose(a0, b0)
    np.testing.assert_array_equal(a3, b0), np.testing.assert_array_equal(b3, a0)   # swapped for one plan
    np.testing.assert_array_equal(a4, a0), np.testing.assert_array_equal(b4, b0)   # and back
    assert all({"reflect_xy", "hide_xy", "noise_xy", "swap_xy"} <= set(kf) for kf in r["keyframes"])


def test_push_first_plan_exchanges_stack_cubes_sizes_from_the_first_observation(checkpoint, monkeypatch):
    """From the first observation stack_cube's counterfactual plans once more, with the cubes' sizes exchanged (the
    base where it was), between the colour swap and the other noise draw; every keyframe carries that plan."""
    from action_images.policy import ActionImagesPolicy
    from action_images.rollout import EpisodeRunner

    envs, sizes = [], []
    open_env, plan = EpisodeRunner.open, ActionImagesPolicy.plan
    monkeypatch.setattr(EpisodeRunner, "open", lambda self, t: envs.append(open_env(self, t)) or envs[-1])

    def noting_plan(self, obs, cameras):
        m = envs[-1].model
        sizes.append(float(m.geom_size[m.geom("small").id][0]))
        return plan(self, obs, cameras)

    monkeypatch.setattr(ActionImagesPolicy, "plan", noting_plan)
    rows = firstplan.first_plans(str(checkpoint), 1, 4242, 1, None, "jaw", counterfactual=True, task="stack_cube")
    assert sizes == pytest.approx([0.02, 0.02, 0.02, 0.02, 0.026, 0.02])
    assert all("sizes_xy" in kf for kf in rows[0]["keyframes"])


@pytest.mark.parametrize("argv, flag", [(["--episodes", "1"], "--episodes"),
                                        (["--push-style", "sideways"], "--push-style"),
                                        (["--start-step", "-1"], "--start-step")])
def test_push_first_plan_refuses_bad_flags_before_loading_anything(argv, flag, capsys):
    with pytest.raises(SystemExit):
        firstplan.main(["--checkpoint", "no/such/checkpoint", "--json", "unused.json", *argv])
    assert flag in capsys.readouterr().err


def test_paired_episodes_compares_the_tasks_asked_for(tmp_path, capsys):
    """--tasks compares those tasks only, so an evaluation of two tasks pairs with a reference that has one of them;
    without it every task of the second evaluation must be in the first; a task it lacks is refused by name."""
    paired = load("paired_episodes")

    def metrics(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"episodes": [{"task": t, "episode": k, "seed": 100 + k, "success": s}
                                                 for t, k, s in rows]}))
        return str(path)

    base = metrics("base.json", [("push", 0, True), ("push", 1, False), ("push", 2, False)])
    new = metrics("new.json", [("push", 0, False), ("push", 1, True), ("push", 2, True), ("stack", 0, True)])
    assert paired.main([base, new]) == 2 and "stack episode 0" in capsys.readouterr().err
    assert paired.main([base, new, "--tasks", "push"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split() == ["push", "3", "0", "2", "1", "1.0000"] and "stack" not in "".join(rows)
    assert paired.main([base, new, "--tasks", "reach"]) == 2 and "--tasks" in capsys.readouterr().err


def test_past_frames_reports_each_frames_weights_and_the_loss_gap(tmp_path, capsys):
    """bench/past_frames.py: the context encoder's first-convolution norm per frame and stream, and the action loss
    against a base run (last steps' means, largest gap of block means); a run without weights is refused."""
    import torch
    from safetensors.torch import save_file

    past = load("past_frames")
    run, base = tmp_path / "run", tmp_path / "base"
    for folder, loss in ((run, 0.02), (base, 0.01)):
        folder.mkdir()
        (folder / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss_act": loss * (2 if s < 300 else 1)})
                                                  + "\n" for s in range(0, 1200, 10)))
    w = torch.zeros(1, 12, 1, 1)
    w[0, 0], w[0, 9] = 3.0, 4.0                          # a current RGB channel; a past action-image channel
    save_file({"backbone.context.net.0.weight": w}, str(run / "model.safetensors"))
    assert past.main([str(run), "--base", str(base), "--json", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["weights"] == [{"rgb": 3.0, "act": 0.0}, {"rgb": 0.0, "act": 4.0}]
    assert out["loss"]["run_last_300"] == 0.02 and out["loss"]["base_last_300"] == 0.01
    assert out["loss"]["max_gap_300"] == 1.0 and out["loss"]["max_gap_1000"] == 1.0
    capsys.readouterr()
    assert past.main([str(base)]) == 2 and "past_frames" in capsys.readouterr().err


def test_hand_offset_reads_offsets_in_centimetres_and_puts_no_move_first():
    assert handoff.parse_offsets("3,0;-3,0") == [(0.0, 0.0), (0.03, 0.0), (-0.03, 0.0)]
    assert handoff.parse_offsets("0,0;0,2.5") == [(0.0, 0.0), (0.0, 0.025)]
    for bad in ("3", "3,0,1", "a,b", "nan,0", "3,0;3,0"):
        with pytest.raises(ValueError):
            handoff.parse_offsets(bad)
    # along the object -> goal line and to its left
    np.testing.assert_allclose(handoff.world_offset(0.03, 0.0, [0.0, 0.0], [0.0, 0.1]), [0.0, 0.03], atol=1e-12)
    np.testing.assert_allclose(handoff.world_offset(0.0, 0.02, [0.0, 0.0], [0.1, 0.0]), [0.0, 0.02], atol=1e-12)


def test_hand_offset_tells_a_plan_that_keeps_to_the_hand_from_one_that_reads_the_scene():
    """follow is 1 where the plan moves with the hand, 0 where it stays on the scene's path; miss_cm is measured
    against the expert's targets from the same state."""
    def row(shift_k1, shift_k2):
        base = {"offset_cm": [0.0, 0.0], "offset_xy": [0.0, 0.0], "moved_cm": 0.0,
                "plan_xy": [[0.1, 0.0], [0.2, 0.0]], "expert_xy": [[0.1, 0.0], [0.2, 0.0]]}
        moved = {"offset_cm": [3.0, 0.0], "offset_xy": [0.03, 0.0], "moved_cm": 3.0,
                 "plan_xy": [[0.1 + shift_k1, 0.0], [0.2 + shift_k2, 0.0]], "expert_xy": [[0.1, 0.0], [0.2, 0.0]]}
        return {"offsets": [base, moved]}

    s = handoff.summarise([row(0.03, 0.0), row(0.03, 0.0), row(0.03, 0.01)])
    assert s["offset_3.0_0.0"]["k1"]["follow_median"] == pytest.approx(1.0)
    assert s["offset_3.0_0.0"]["k1"]["follow_compared"] == 3
    assert s["offset_3.0_0.0"]["k2"]["follow_median"] == pytest.approx(0.0)
    assert s["offset_3.0_0.0"]["k1"]["miss_cm_median"] == pytest.approx(3.0)
    assert s["offset_0.0_0.0"]["k1"] == {"compared": 3, "miss_cm_median": 0.0}
    assert s["offset_3.0_0.0"]["moved_cm_median"] == 3.0


def test_hand_offset_moves_the_hand_and_plans_from_the_same_state_for_every_offset(checkpoint, monkeypatch):
    """On a tiny random checkpoint: each offset starts from the expert's state after --start-step steps, moves the
    hand by the offset along the cube -> mark line at its height (0, 0 holds it) in the same number of steps, and
    plans once with the same sampler noise and no resample; the expert's look-ahead and the restore leave every
    offset's start as it was, so a second run plans the same keyframes."""
    from action_images.policy import ActionImagesPolicy
    from action_images.sim import make_env

    seen = []
    plan = ActionImagesPolicy.plan

    def noting_plan(self, obs, cams):
        seen.append((obs["ee_pose"][:3].copy(), self.max_resamples))
        return plan(self, obs, cams)

    monkeypatch.setattr(ActionImagesPolicy, "plan", noting_plan)
    offsets = handoff.parse_offsets("2,0;0,-2")
    rows = handoff.offset_plans(str(checkpoint), 1, 4242, 3, offsets, 1, "push_cube")
    again = handoff.offset_plans(str(checkpoint), 1, 4242, 3, offsets, 1, "push_cube")
    r = rows[0]
    assert [o["plan_xy"] for o in r["offsets"]] == [o["plan_xy"] for o in again[0]["offsets"]]
    env = make_env("push_cube", render=False)
    env.reset(seed=r["seed"])
    for _ in range(3):
        env.step(env.expert_action())
    start = env.arm.tcp_pos()
    hands = [h for h, _ in seen[:3]]
    assert len(seen) == 6 and {m for _, m in seen} == {0}
    np.testing.assert_allclose(hands[0], start, atol=3e-3)            # held where the expert left it
    for (along, across), hand, o in zip([(0.02, 0.0), (0.0, -0.02)], hands[1:], r["offsets"][1:]):
        want = handoff.world_offset(along, across, r["obj_xy"], r["goal_xy"])
        np.testing.assert_allclose(hand[:2] - hands[0][:2], want, atol=3e-3)
        assert abs(hand[2] - start[2]) < 3e-3
        assert o["moved_cm"] == pytest.approx(2.0, abs=0.3)
        assert len(o["plan_xy"]) == len(o["expert_xy"])


@pytest.mark.parametrize("move_in", ["frames", "drawing"])
def test_hand_offset_moves_the_hand_in_one_input_only(checkpoint, monkeypatch, move_in):
    """--move-in frames: every plan is drawn at the undisplaced hand while its frames show the moved one; --move-in
    drawing: every plan sees the undisplaced hand's frames with the moved hand drawn, and the expert's targets are
    those of the undisplaced state, where the hand is."""
    from action_images.policy import ActionImagesPolicy

    seen = []
    plan = ActionImagesPolicy.plan

    def noting_plan(self, obs, cams):
        seen.append((obs["ee_pose"][:3].copy(), {k: v.copy() for k, v in obs["images"].items()}))
        return plan(self, obs, cams)

    monkeypatch.setattr(ActionImagesPolicy, "plan", noting_plan)
    offsets = handoff.parse_offsets("2,0;0,-2")
    rows = handoff.offset_plans(str(checkpoint), 1, 4242, 3, offsets, 1, "push_cube", move_in=move_in)
    drawn = [p for p, _ in seen]
    frames = [next(iter(im.values())) for _, im in seen]
    if move_in == "frames":
        assert all(np.array_equal(d, drawn[0]) for d in drawn[1:])
        assert not any(np.array_equal(f, frames[0]) for f in frames[1:])
    else:
        assert all(np.array_equal(f, frames[0]) for f in frames[1:])
        assert all(np.linalg.norm(d[:2] - drawn[0][:2]) > 0.015 for d in drawn[1:])
        assert all(o["expert_xy"] == rows[0]["offsets"][0]["expert_xy"] for o in rows[0]["offsets"][1:])
    with pytest.raises(ValueError, match="move_in"):
        handoff.offset_plans(str(checkpoint), 1, 4242, 3, offsets, 1, "push_cube", move_in="hand")


def test_hand_offset_refuses_bad_flags_before_loading_anything(capsys):
    for argv, flag in ((["--move-in", "hand"], "--move-in"), (["--offsets", "3"], "--offsets"),
                       (["--offsets", "0,0"], "--offsets"),
                       (["--start-step", "-1"], "--start-step"), (["--push-style", "x"], "--push-style")):
        with pytest.raises(SystemExit):
            handoff.main(["--checkpoint", "no/such/checkpoint", "--json", "unused.json", *argv])
        assert flag in capsys.readouterr().err


def test_hand_offset_refuses_a_model_that_reads_past_frames(tmp_path):
    """The probe renders only the state it plans from, so a model with past frames would plan on frames it never
    saw: refused by name before any episode runs."""
    import torch

    from action_images.wam import WAMConfig, WorldActionModel

    torch.manual_seed(0)
    path = tmp_path / "hist"
    cfg = WAMConfig.from_preset("cpu-tiny", camera_names=["left", "right"], history=1)
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    WorldActionModel(cfg).save_pretrained(path)
    with pytest.raises(SystemExit, match="past frames"):
        handoff.offset_plans(str(path), 1, 4242, 2, handoff.parse_offsets("2,0"), 1, "push_cube")


def test_dagger_labels_split_each_episode_at_its_takeover(tmp_path, lerobot_root, capsys):
    """bench/dagger_labels.py: frames before extra/takeover are the driven part, the rest the expert's; per part the
    median hand-to-target distance, the share of targets more than --up above the hand and of gripper flips. A
    dataset without takeovers is refused naming --data."""
    from action_images.data import DatasetWriter, LeRobotDataset

    src = LeRobotDataset(lerobot_root)
    root = tmp_path / "dagger"
    with DatasetWriter(root, fps=10, cameras=list(src.cameras.values()), image_size=(40, 40)) as w:
        ep = src.episode(0)
        states = np.tile(ep.states[:1], (6, 1))
        actions = states.copy()
        actions[:2, 2] += 0.03                       # driven: two targets 3 cm up, one of them with the jaw flipped
        actions[0, 7] = 1.0 - states[0, 7]
        actions[2:, 0] += 0.01                       # the expert's: 1 cm along x
        w.add_episode(instruction=ep.instruction, actions=actions, states=states,
                      images={c: v[:6] for c, v in ep.images.items()},
                      extra={"task_name": "fake", "takeover": 2, "hold_steps": 1})
    stats = daggerlab.label_stats(root)["fake"]
    assert stats["driven"] == {"frames": 2, "reach_m_median": 0.03, "up_share": 1.0, "gripper_share": 0.5}
    # the last frame is the hold after success: in neither part
    assert stats["expert"] == {"frames": 3, "reach_m_median": 0.01, "up_share": 0.0, "gripper_share": 0.0}
    assert stats["driven_steps_median"] == 2.0
    assert daggerlab.main(["--data", str(root), "--json", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["tasks"]["fake"]["driven"]["frames"] == 2
    with pytest.raises(SystemExit):
        daggerlab.main(["--data", str(lerobot_root), "--json", str(tmp_path / "x.json")])
    assert "--data" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
