"""The training recipe: one dataclass makes the flags, the file and the saved record; the shipped checkpoint's recipe
file reproduces its config exactly, and ``make checkpoint`` trains from that file."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pytest

from action_images import demo, recipe, train
from action_images.recipe import SECTIONS, TrainRecipe
from action_images.wam import WAMConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "rig8-ctx-recover-noise-9k"
RECIPE = ROOT / "recipes" / "rig8-ctx-3h.json"          # the shipped checkpoint's first stage
STAGE2 = ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json"   # and its second
LONG = ROOT / "recipes" / "rig8-ctx-recover-noise-long.json"   # the second stage before it, on one thread
QUICK = ROOT / "recipes" / "rig8-ctx.json"
RIGS = ["rig0", "rig1", "rig2", "rig3"]
# (checkpoint, its recipe, the cameras it names): the shipped one, the earlier second stages (noisy recovery at 6,500
# steps on one thread and at 5,000 steps, plain recovery), its first stage, its quick version and the earlier 4-task one
CHECKPOINTS = [(SHIPPED, STAGE2, RIGS),
               (ROOT / "checkpoints" / "rig8-ctx-recover-noise-long", LONG, RIGS),
               (ROOT / "checkpoints" / "rig8-ctx-recover-noise", ROOT / "recipes" / "rig8-ctx-recover-noise.json",
                RIGS),
               (ROOT / "checkpoints" / "rig8-ctx-recover", ROOT / "recipes" / "rig8-ctx-recover.json", RIGS),
               (ROOT / "checkpoints" / "rig8-ctx-3h", RECIPE, RIGS),
               (ROOT / "checkpoints" / "rig8-ctx", QUICK, RIGS),
               (ROOT / "checkpoints" / "cpu-small", ROOT / "recipes" / "cpu-small.json", ["left", "right"])]
IDS = ["rig8-ctx-recover-noise-9k", "rig8-ctx-recover-noise-long", "rig8-ctx-recover-noise", "rig8-ctx-recover",
       "rig8-ctx-3h", "rig8-ctx", "cpu-small"]


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(["--out", "x", *argv])


def test_every_recipe_field_has_a_flag():
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    dests = {a.dest for a in p._actions}
    for section in SECTIONS:
        for f in fields(getattr(TrainRecipe(), section)):
            if f.metadata.get("kind") != "file_only":
                assert f"{section}.{f.name}" in dests, f"{section}.{f.name}"


def test_precedence_defaults_file_flags(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": {"preset": "cpu-tiny", "horizon": 3}, "optim": {"lr": 0.002, "steps": 9},
                                "data": {"data": "synthetic:2"}}))
    r = recipe.from_args(parse("--config", str(path), "--lr", "0.003", "--cameras", "a,b"))
    assert r.model.preset == "cpu-tiny" and r.model.horizon == 3          # from the file
    assert r.optim.lr == 0.003 and r.optim.steps == 9                      # flag beats file
    assert r.data.cameras == ["a", "b"] and r.data.data == ["synthetic:2"]
    assert r.optim.warmup == 200                                           # default
    assert recipe.from_args(parse("--config", str(path))).optim.lr == 0.002


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON recipe"),
    ("[1, 2]", "a recipe is a JSON object"),
    ('{"modle": {}}', "unknown sections"),
    ('{"model": {"width": 3}}', "unknown keys ['width']"),
    ('{"optim": {"lr": "fast"}}', "optim.lr: expected a number"),
    ('{"optim": {"steps": 2.5}}', "optim.steps: expected an integer"),
    ('{"optim": {"batch_size": 0}}', "optim.batch_size: 0 is outside"),
    ('{"model": {"task_mix": {"policy": -1}}}', "weights must be finite"),
    ('{"model": {"preset": "huge"}}', "unknown preset"),
])
def test_bad_recipe_files_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.json") as e:
        TrainRecipe.load(path)
    assert message in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: 0 is outside"), (["--steps", "-4"], "--steps: -4 is outside"),
    (["--minutes", "0"], "--minutes: 0 is outside"), (["--checkpoint-every", "0"], "--checkpoint-every: 0"),
    (["--log-every", "0"], "--log-every: 0"), (["--batch-size", "-2"], "--batch-size: -2"),
    (["--num-views", "0"], "--num-views: 0"), (["--horizon", "0"], "--horizon: 0"), (["--stride", "0"], "--stride: 0"),
    (["--task-mix", "foo"], "--task-mix: 'foo' is not job=weight"), (["--task-mix", "policy=0"], "not all 0"),
    (["--lr", "nan"], "--lr: must be a finite number"), (["--steps", "ten"], "--steps: expected an integer"),
])
def test_bad_flags_exit_2_naming_the_flag(tmp_path, argv, message, capsys):
    args = parse("--data", "synthetic", "--steps", "1", *argv)
    args.out = str(tmp_path / "run")
    assert train.run(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_deprecated_aliases_still_work(capsys):
    r = recipe.from_args(parse("--views", "3", "--camera-names", "l,r", "--data", "synthetic"),
                         warn=lambda m: print(m))
    assert r.model.num_views == 3 and r.data.cameras == ["l", "r"]
    out = capsys.readouterr().out
    assert "--views is deprecated; use --num-views" in out and "--camera-names is deprecated" in out


@pytest.mark.parametrize("ckpt, recipe_file, cameras", CHECKPOINTS, ids=IDS)
def test_recipe_file_reproduces_the_shipped_config_exactly(ckpt, recipe_file, cameras):
    if not (ckpt / "config.json").exists():
        pytest.skip(f"no checkpoint at {ckpt}")
    r = TrainRecipe.load(recipe_file)
    built = train.build_config(r, None if r.data.cameras else cameras)   # else the dataset's, here its rig views
    shipped = json.loads((ckpt / "config.json").read_text())
    # every key the shipped config holds, equal; a key added since reads as the behaviour it was trained with
    assert {k: v for k, v in built.to_dict().items() if k in shipped["config"]} == shipped["config"]
    assert built.to_dict() == WAMConfig.from_dict(shipped["config"]).to_dict()
    assert WAMConfig.from_dict(shipped["config"]).camera_names == cameras
    saved = TrainRecipe.from_dict(json.loads((ckpt / "train_config.json").read_text()), "shipped").to_dict()
    recipe_now = r.to_dict()
    if "out" not in saved["data"]["collect"]:      # saved before data.collect named its folder: otherwise the same
        recipe_now["data"]["collect"].pop("out", None)
    assert saved == recipe_now


@pytest.mark.parametrize("ckpt, recipe_file, cameras", CHECKPOINTS, ids=IDS)
def test_recipe_steps_are_the_shipped_log(ckpt, recipe_file, cameras):
    if not (ckpt / "log.jsonl").exists():
        pytest.skip(f"no checkpoint at {ckpt}")
    last_step = json.loads((ckpt / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert TrainRecipe.load(recipe_file).optim.steps == last_step


def test_make_checkpoint_and_the_demo_help_train_from_the_recipe_file():
    make = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    lines = [ln for ln in make.splitlines() if "action-images train" in ln]
    assert "--config recipes/rig8-ctx-3h.json" in lines[0] and "--collect-missing" in lines[0]
    assert "--config recipes/rig8-ctx-recover-noise-9k.json" in lines[1] and "--collect-missing" in lines[1]
    assert "--config recipes/rig8-ctx.json" in lines[2] and "--collect-missing" in lines[2]
    # stage 2 starts from the export stage 1 is copied to
    first_copy = make.index("checkpoints/rig8-ctx-3h/")
    assert first_copy < make.index("--config recipes/rig8-ctx-recover-noise-9k.json")
    assert TrainRecipe.load(STAGE2).model.init_from == "checkpoints/rig8-ctx-3h"
    assert "--config recipes/rig8-ctx-3h.json" in demo.HOW_TO
    assert "--config recipes/rig8-ctx-recover-noise-9k.json" in demo.HOW_TO
    assert demo.SHIPPED.name == SHIPPED.name


def test_the_quick_recipe_is_the_first_steps_of_the_shipped_one():
    """Continuing a finished quick run with --resume gives the shipped checkpoint: the two recipes differ only in
    the step count, and the learning rate is constant after warm-up."""
    full, quick = TrainRecipe.load(RECIPE).to_dict(), TrainRecipe.load(QUICK).to_dict()
    assert full["optim"].pop("steps") > quick["optim"].pop("steps")
    assert full == quick


def test_workspace_crop_reaches_the_model_config(capsys):
    r = recipe.from_args(parse("--data", "synthetic", "--crop", "workspace", "--workspace=-0.3,-0.4,0,0.3,0.4,0.5"))
    cfg = train.build_config(r)
    assert cfg.crop == "workspace" and cfg.workspace == [[-0.3, -0.4, 0.0], [0.3, 0.4, 0.5]]
    for argv, message in ((["--crop", "workspace"], "needs model.workspace"),
                          (["--workspace", "1,2"], "--workspace: expected six numbers"),
                          (["--workspace", "0,0,0,0,1,1"], "must be below"),
                          (["--crop", "zoom"], "--crop: 'zoom' is not one of")):
        args = parse("--data", "synthetic", "--steps", "1", *argv)
        assert train.run(args) == 2
        assert message in capsys.readouterr().err


def test_collect_out_names_the_dataset_the_collect_section_collects():
    one = TrainRecipe.from_dict({"data": {"data": ["a"], "collect": {"episodes": 3}}})
    assert one.collect_out() == "a" and recipe.collect_argv(one.data.collect) == ["--episodes", "3"]
    two = TrainRecipe.from_dict({"data": {"data": ["a", "b"], "collect": {"episodes": 3}}})
    assert two.collect_out() is None                                  # several datasets: it does not guess
    named = TrainRecipe.from_dict({"data": {"data": ["a", "b"], "collect": {"out": "b", "episodes": 3}}})
    assert named.collect_out() == "b" and recipe.collect_argv(named.data.collect) == ["--episodes", "3"]
    root = Path(__file__).resolve().parents[1] / "recipes"
    r = recipe.from_args(parse("--config", str(root / "rig8-ctx-recover.json"), "--data", "data/rig8,data/other"))
    assert r.data.data == ["data/rig8", "data/other"]                 # --data replaces the list: the recipe still loads
    for path in sorted(root.glob("*.json")):                          # every shipped recipe says what it collects
        r = TrainRecipe.load(path)
        assert not r.data.collect or r.collect_out() in r.data.data, path.name


def test_collect_section_becomes_collect_flags(tmp_path):
    argv = recipe.collect_argv({"tasks": "all", "episodes": 3, "keep_failed": True, "perturb_cameras": False})
    assert argv == ["--tasks", "all", "--episodes", "3", "--keep-failed"]
    # the name older recipes and checkpoints saved (checkpoints/rig8-quick/train_config.json) still loads
    assert recipe.collect_argv({"random_rig": "train"}) == ["--rig-distribution", "train"]
    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "rig8-quick" / "train_config.json"
    if shipped.exists():
        TrainRecipe.from_dict(json.loads(shipped.read_text()), str(shipped))
    for section, message in (({"episode": 3}, "data.collect.episode: not an option"),
                             ({"keep_failed": "yes"}, "expected true or false"),
                             ({"episodes": float("nan")}, "NaN is not strict JSON"),
                             ({"out": 3}, "data.collect.out: expected a dataset folder")):
        path = tmp_path / "r.json"
        path.write_text(json.dumps({"data": {"data": ["d"], "collect": section}}))
        with pytest.raises(ValueError, match=message):
            TrainRecipe.load(path)


def test_exclude_tasks_is_checked_and_reaches_the_windows(tmp_path, monkeypatch):
    """data.exclude_tasks (recipe file only): {dataset: [tasks]} for datasets of data.data, each a non-empty list of
    names; build_dataset hands it to the windows."""
    good = {"data": {"data": ["a", "b"], "exclude_tasks": {"a": ["push_cube"]}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good))
    r = TrainRecipe.load(path)
    assert r.data.exclude_tasks == {"a": ["push_cube"]}
    for exclude, message in (({"c": ["push_cube"]}, "names 'c', which is not in data.data"),
                             ({"a": []}, "expected a list of task names"), ({"a": "push_cube"}, "list of task names"),
                             (["a"], "expected an object")):
        path.write_text(json.dumps({"data": {"data": ["a", "b"], "exclude_tasks": exclude}}))
        with pytest.raises(ValueError, match=message):
            TrainRecipe.load(path)
    from action_images import train
    seen = {}

    class FakeWindows:
        def __init__(self, data, wcfg, seed, cameras, exclude_tasks):
            seen["exclude"] = exclude_tasks

    monkeypatch.setattr(train, "Windows", FakeWindows)
    for d in ("a", "b"):
        (tmp_path / d / "meta").mkdir(parents=True)
        (tmp_path / d / "meta" / "info.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    train.build_dataset(r, train.build_config(r))
    assert seen["exclude"] == {"a": ["push_cube"]}


def test_action_loss_weight_reaches_the_model_config_and_is_checked():
    """--action-loss-weight sets the action stream's share of the loss (default 4, the preset's); the tokens
    ablation takes it too, bc and dp warn that it does not apply; 0 or a negative weight is refused."""
    r = recipe.from_args(parse("--preset", "cpu-tiny", "--data", "synthetic:2", "--action-loss-weight", "40"))
    assert train.build_config(r).action_loss_weight == 40.0
    assert train.build_config(recipe.from_args(parse("--preset", "cpu-tiny", "--data", "synthetic:2"))
                              ).action_loss_weight == 4.0
    tokens = recipe.from_args(parse("--method", "tokens", "--data", "synthetic:2", "--action-loss-weight", "2"))
    assert train.build_config(tokens).action_loss_weight == 2.0
    with pytest.warns(UserWarning, match="model.action_loss_weight"):
        train.build_config(recipe.from_args(parse("--method", "bc", "--data", "synthetic:2",
                                                  "--action-loss-weight", "2")))
    with pytest.raises((SystemExit, ValueError)):
        recipe.from_args(parse("--action-loss-weight", "0"))


def test_current_noise_is_checked_and_reaches_the_windows(tmp_path, monkeypatch, capsys):
    """--current-noise σ (m) and --current-noise-prob reach the training windows (build_dataset); a negative σ or a
    share above 1 exits 2 naming the flag; a baseline, which draws no action image, or a latent preset refuse it."""
    r = recipe.from_args(parse("--preset", "cpu-tiny", "--data", "synthetic:2", "--current-noise", "0.02",
                               "--current-noise-prob", "0.25"))
    ds = train.build_dataset(r, train.build_config(r))
    assert (ds.cfg.current_noise, ds.cfg.current_noise_prob) == (0.02, 0.25) and "act_in0" in ds[0]
    plain = recipe.from_args(parse("--preset", "cpu-tiny", "--data", "synthetic:2"))
    assert "act_in0" not in train.build_dataset(plain, train.build_config(plain))[0]
    for argv, message in ((["--current-noise", "-0.01"], "--current-noise: -0.01 is outside"),
                          (["--current-noise-prob", "1.5"], "--current-noise-prob: 1.5 is outside")):
        args = parse("--data", "synthetic", "--steps", "1", *argv)
        args.out = str(tmp_path / "run")
        assert train.run(args) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="data.current_noise .* 'bc' has none"):
        recipe.from_args(parse("--method", "bc", "--data", "synthetic:2", "--current-noise", "0.02"))
    latent = recipe.from_args(parse("--preset", "wan-tiny-latent", "--data", "synthetic:2", "--current-noise", "0.02"))
    with pytest.raises(ValueError, match="--current-noise: .*latent"):
        train.build_dataset(latent, train.build_config(latent))
    args = parse("--preset", "wan-tiny-latent", "--data", str(tmp_path / "missing"), "--steps", "1",
                 "--current-noise", "0.02")
    args.out, args.collect_missing = str(tmp_path / "run"), True
    assert train.run(args) == 2                            # refused before any data would be collected
    assert "--current-noise" in capsys.readouterr().err and not (tmp_path / "missing").exists()


def test_the_current_noise_stage_differs_from_the_shipped_stage_in_its_drawn_current_pose_only():
    """recipes/rig8-ctx-recover-noise-current-noise.json: the shipped second stage with the drawn current pose moved
    by N(0, 2 cm) per axis in half of the training windows; nothing else differs."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-current-noise.json").to_dict()
    assert (shipped["data"].pop("current_noise"), probe["data"].pop("current_noise")) == (0.0, 0.02)
    assert (shipped["data"].pop("current_noise_prob"), probe["data"].pop("current_noise_prob")) == (0.5, 0.5)
    assert shipped == probe


def test_the_dagger_stage_is_the_shipped_stage_with_policy_driven_demos_added():
    """recipes/rig8-ctx-recover-noise-dagger.json: the shipped second stage with data/rig8_dagger added, push_cube and
    stack_cube demos whose first steps the shipped checkpoint drives (its comment holds the collect command, new
    scenes); nothing else differs."""
    shipped = json.loads(STAGE2.read_text())
    probe = json.loads((ROOT / "recipes" / "rig8-ctx-recover-noise-dagger.json").read_text())
    assert probe["data"].pop("data") == shipped["data"].pop("data") + ["data/rig8_dagger"]
    for part in ("--policy checkpoints/rig8-ctx-recover-noise-9k ", "--policy-steps 40", "--seed 8000",
                 "--tasks push_cube,stack_cube", "--out data/rig8_dagger"):
        assert part in probe["comment"], part
    shipped.pop("comment"), probe.pop("comment")
    assert shipped == probe


def test_the_stride1_stage_differs_from_the_shipped_stage_in_its_keyframe_spacing_only():
    """recipes/rig8-ctx-recover-noise-stride1.json: the shipped second stage with keyframes 1 control step apart
    instead of the preset's 2; nothing else differs."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-stride1.json").to_dict()
    assert (shipped["model"].pop("stride"), probe["model"].pop("stride")) == (None, 1)
    shipped.pop("comment", None), probe.pop("comment", None)
    assert shipped == probe


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.json")), ids=lambda p: p.stem)
def test_every_recipe_file_loads_and_validates(path):
    r = TrainRecipe.load(path)
    r.validate(str(path))
    assert r.optim.steps is not None or r.optim.minutes is not None        # a recipe says how long it trains


MW_FIRST = ROOT / "recipes" / "mw11-ctx-3h.json"


@pytest.mark.parametrize("first_file, second_name, parent", [(RECIPE, "rig8-ctx-anneal", "runs/rig8-ctx-3h"),
                                                              (QUICK, "rig8-ctx-decay", "runs/rig8-ctx"),
                                                              (MW_FIRST, "mw11-ctx-decay", "runs/mw11-ctx-3h"),
                                                              (MW_FIRST, "mw11-ctx-decay-long", "runs/mw11-ctx-3h")])
def test_a_second_stage_continues_its_first(first_file, second_name, parent):
    """A second stage starts from the first's run folder and changes only its start, seed, steps and schedule."""
    first = TrainRecipe.load(first_file).to_dict()
    second = TrainRecipe.load(ROOT / "recipes" / f"{second_name}.json").to_dict()
    assert second["model"].pop("init_from") == parent and first["model"].pop("init_from") is None
    assert second["optim"].pop("schedule") == "linear" and first["optim"].pop("schedule") == "constant"
    for key in ("seed", "steps"):
        first["optim"].pop(key), second["optim"].pop(key)
    assert first == second


def test_the_meta_world_stage_with_more_demos_differs_only_in_its_data():
    """The stage with twice the demos is the longer decaying stage on data/mw11 plus demos from other episode seeds,
    collected the same way, from the two cameras it trains on."""
    long = json.loads((ROOT / "recipes" / "mw11-ctx-decay-long.json").read_text())
    more = json.loads((ROOT / "recipes" / "mw11-ctx-decay-more.json").read_text())
    assert more["data"].pop("data") == long["data"].pop("data") + ["data/mw11_more"]
    a, b = long["data"].pop("collect"), more["data"].pop("collect")
    assert (b.pop("out"), b.pop("seed"), b.pop("cameras")) == ("data/mw11_more", 1000, "corner,corner4")
    assert a.pop("seed") == 0 and a == b
    assert more["data"]["cameras"] == ["corner", "corner4"]
    long.pop("comment"), more.pop("comment")
    assert long == more


def test_the_meta_world_stage_on_every_corner_view_differs_only_in_its_cameras():
    """The stage that trains on random pairs of the 4 corner views is the 4,000-step decaying stage otherwise."""
    decay = json.loads((ROOT / "recipes" / "mw11-ctx-decay.json").read_text())
    views = json.loads((ROOT / "recipes" / "mw11-ctx-decay-views.json").read_text())
    assert decay["data"].pop("cameras") == ["corner", "corner4"]
    assert views["data"].pop("cameras") == ["corner", "corner2", "corner3", "corner4"]
    from action_images.train import build_config
    assert build_config(TrainRecipe.load(ROOT / "recipes" / "mw11-ctx-decay-views.json")).num_views == 2   # a pair
    decay.pop("comment"), views.pop("comment")
    assert decay == views


def test_the_two_stage_decay_recipe_has_the_3_hour_step_count():
    """The quick recipe and its decaying second stage together take the 3-hour recipe's steps, so the two-stage
    checkpoint and the constant-rate one compare at the same budget."""
    quick, decay = TrainRecipe.load(QUICK), TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-decay.json")
    assert quick.optim.steps + decay.optim.steps == TrainRecipe.load(RECIPE).optim.steps


def test_the_recovery_stage_is_the_annealing_stage_with_missed_grasp_demos():
    """recipes/rig8-ctx-recover.json: the annealing stage's settings at its own step count, started from the shipped
    3-hour export (what ``make checkpoint``'s first stage copies there), on the 3-hour recipe's demos plus the
    missed-grasp demos that ``--collect-missing`` collects (``collect --missed-grasps 1``)."""
    anneal = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-anneal.json").to_dict()
    recover = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover.json").to_dict()
    assert recover["model"].pop("init_from") == "checkpoints/rig8-ctx-3h"
    assert anneal["model"].pop("init_from") == "runs/rig8-ctx-3h"
    assert recover["run"].pop("workers") == 1 and anneal["run"].pop("workers") == 0   # batches do not depend on it
    assert recover["data"]["data"] == anneal["data"]["data"] + ["data/rig8_grasp_miss"]
    collect = recover["data"]["collect"]
    assert collect["missed_grasps"] == 1.0 and collect["tasks"] == "pick_cube,place_in_bin,stack_cube"
    assert recover["optim"]["steps"] < anneal["optim"]["steps"]
    for d in (anneal, recover):
        d["data"].pop("data"), d["data"].pop("collect"), d["optim"].pop("steps")
    assert anneal == recover


def test_the_noisy_recovery_stage_differs_from_the_recovery_stage_in_its_demos_and_steps():
    """recipes/rig8-ctx-recover-noise.json: the recovery stage, longer, whose missed-grasp demos (other scenes) also
    carry DART noise on the executed targets (``collect --action-noise``)."""
    recover = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover.json").to_dict()
    noisy = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise.json").to_dict()
    assert noisy["data"]["data"] == ["data/rig8", "data/rig8_grasp_miss_noise"]
    a, b = recover["data"].pop("collect"), noisy["data"].pop("collect")
    assert (b.pop("action_noise"), b.pop("action_noise_prob"), b.pop("seed"), b.pop("out")) == (
        0.01, 0.5, 6000, "data/rig8_grasp_miss_noise")
    assert (a.pop("seed"), a.pop("out")) == (5000, "data/rig8_grasp_miss") and a == b
    assert noisy["optim"].pop("steps") > recover["optim"].pop("steps")
    recover["data"].pop("data"), noisy["data"].pop("data")
    assert recover == noisy


@pytest.mark.parametrize("short_name, long_name", [("rig8-ctx-recover-noise", "rig8-ctx-recover-noise-long"),
                                                   ("mw11-ctx-decay", "mw11-ctx-decay-long")])
def test_a_longer_second_stage_differs_only_in_its_steps(short_name, long_name):
    """The long second stages spend more of the 3-hour budget on the same recipe: only the step count (and with it the
    length of the linear decay) changes."""
    short = TrainRecipe.load(ROOT / "recipes" / f"{short_name}.json").to_dict()
    long = TrainRecipe.load(ROOT / "recipes" / f"{long_name}.json").to_dict()
    assert long["optim"].pop("steps") > short["optim"].pop("steps")
    assert long == short


def test_the_two_thread_second_stage_differs_only_in_its_steps_and_threads():
    """recipes/rig8-ctx-recover-noise-9k.json, the shipped second stage: the one before it with more steps, trained on
    two threads."""
    long, two = TrainRecipe.load(LONG).to_dict(), TrainRecipe.load(STAGE2).to_dict()
    assert (long["optim"].pop("steps"), two["optim"].pop("steps")) == (6500, 9000)
    assert (long["run"].pop("threads"), two["run"].pop("threads")) == (1, 2)
    assert long == two


def test_the_64_px_stage_differs_from_the_shipped_stage_in_its_resolution_and_steps():
    """recipes/rig8-ctx-recover-noise-64px.json: the shipped second stage with the model at the demos' own 64 px
    (the 48 px export loads as it is) and fewer steps, as many as fit the same hour at 64 px."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    hires = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-64px.json").to_dict()
    assert (shipped["model"].pop("image_size"), hires["model"].pop("image_size")) == (None, 64)
    assert (shipped["optim"].pop("steps"), hires["optim"].pop("steps")) == (9000, 5000)
    assert shipped == hires


def test_the_4_view_stage_differs_from_the_shipped_stage_in_its_views_and_steps():
    """recipes/rig8-ctx-recover-noise-4views.json: the shipped second stage with all 4 views of each rig per window
    (the 2-view export loads as it is) and fewer steps, as many as fit the stage's hour with twice the tokens."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    wide = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-4views.json").to_dict()
    assert (shipped["model"].pop("num_views"), wide["model"].pop("num_views")) == (None, 4)
    assert (shipped["optim"].pop("steps"), wide["optim"].pop("steps")) == (9000, 4200)
    assert shipped == wide


@pytest.mark.parametrize("name, t_mean", [("tmean05", 0.5), ("tmean25", 2.5)])
def test_the_noise_level_stages_differ_from_the_shipped_stage_in_their_noise_levels_only(name, t_mean):
    """recipes/rig8-ctx-recover-noise-tmean05.json and -tmean25.json: the shipped second stage with its training
    noise levels drawn from a logit-normal of mean 0.5 or 2.5 instead of 1.5; nothing else differs."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / f"rig8-ctx-recover-noise-{name}.json").to_dict()
    assert (shipped["model"].pop("t_mean"), probe["model"].pop("t_mean")) == (1.5, t_mean)
    assert shipped == probe


@pytest.mark.parametrize("name, history, gap", [("history", 1, 4), ("history-long", 2, 8)])
def test_the_history_stages_differ_from_the_shipped_stage_in_their_past_frames_only(name, history, gap):
    """recipes/rig8-ctx-recover-noise-history.json and -history-long.json: the shipped second stage with past frames
    read by the context encoder (one 4 control steps back; two, 8 and 16 steps back); nothing else differs, so each
    starts from the same first stage."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / f"rig8-ctx-recover-noise-{name}.json").to_dict()
    assert (probe["model"].pop("history"), probe["model"].pop("history_gap")) == (history, gap)
    assert (shipped["model"].pop("history"), shipped["model"].pop("history_gap")) == (None, None)
    assert shipped == probe
    cfg = train.build_config(TrainRecipe.load(ROOT / "recipes" / f"rig8-ctx-recover-noise-{name}.json"))
    assert (cfg.history, cfg.history_gap) == (history, gap)
    from action_images.recipe import ModelRecipe
    from action_images.wam import MAX_HISTORY
    assert next(f for f in fields(ModelRecipe) if f.name == "history").metadata["hi"] == MAX_HISTORY


def test_the_deep_stage_differs_from_the_shipped_stage_in_its_blocks_and_steps_only():
    """recipes/rig8-ctx-recover-noise-deep.json: the shipped second stage with 8 DiT blocks instead of the preset's 4
    (the four added start as the identity, so it starts from the same first stage) and 6,600 steps instead of 9,000,
    what the budget's minutes after stage 1 hold at its step time; nothing else differs."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-deep.json").to_dict()
    assert (shipped["model"].pop("depth"), probe["model"].pop("depth")) == (None, 8)
    assert (shipped["optim"].pop("steps"), probe["optim"].pop("steps")) == (9000, 6600)
    assert shipped == probe
    cfg = train.build_config(TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-deep.json"))
    assert cfg.backbone["depth"] == 8 and cfg.preset == "cpu-small"


def test_the_text_stage_differs_from_the_shipped_stage_in_its_text_layer_only():
    """recipes/rig8-ctx-recover-noise-text.json: the shipped second stage with one transformer layer over the
    instruction's words (it starts as the identity, so the stage starts from the same first stage); nothing else
    differs, and the field's range is the text encoder's."""
    shipped = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-9k.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-text.json").to_dict()
    assert (shipped["model"].pop("text_layers"), probe["model"].pop("text_layers")) == (None, 1)
    assert shipped == probe
    cfg = train.build_config(TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-text.json"))
    assert cfg.text["layers"] == 1 and cfg.text["kind"] == "hash"
    from action_images.recipe import ModelRecipe
    from action_images.text import MAX_TEXT_LAYERS
    assert next(f for f in fields(ModelRecipe) if f.name == "text_layers").metadata["hi"] == MAX_TEXT_LAYERS


def test_the_equal_stack_stage_is_the_text_stage_with_equal_size_stack_demos_added():
    """recipes/rig8-ctx-recover-noise-text-stack-equal.json: the text-layer stage with 120 stack_cube demos of
    equal-size cubes added (its data.collect names them); nothing else differs."""
    text = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-text.json").to_dict()
    probe = TrainRecipe.load(ROOT / "recipes" / "rig8-ctx-recover-noise-text-stack-equal.json").to_dict()
    assert probe["data"].pop("data") == text["data"].pop("data") + ["data/rig8_stack_equal"]
    collect = probe["data"].pop("collect")
    assert collect["out"] == "data/rig8_stack_equal" and collect["stack_sizes"] == "equal"
    assert collect["tasks"] == "stack_cube" and collect["seed"] not in (2000, 6000)     # new scenes
    text["data"].pop("collect")
    assert text == probe


def test_the_palm_stage_is_the_shipped_stage_with_push_demos_replaced():
    """recipes/rig8-ctx-recover-noise-palm.json: the shipped second stage, with data/rig8's push_cube demos left out
    and the palm-style push demos in their place; nothing else differs."""
    shipped, palm = json.loads(STAGE2.read_text()), json.loads((ROOT / "recipes" /
                                                                 "rig8-ctx-recover-noise-palm.json").read_text())
    assert palm["data"].pop("data") == shipped["data"].pop("data") + ["data/rig8_push_palm240"]
    assert palm["data"].pop("exclude_tasks") == {"data/rig8": ["push_cube"]}
    assert "--push-style palm" in palm["comment"] and "--out data/rig8_push_palm240" in palm["comment"]
    shipped.pop("comment"), palm.pop("comment")
    assert shipped == palm


def test_the_stack_wait_stage_is_the_shipped_stage_with_stack_demos_collected_again():
    """recipes/rig8-ctx-recover-noise-stack-wait.json: the shipped second stage with data/rig8's stack_cube demos left
    out and the same scenes (collect seed 2000) collected again with --grasp-wait 4; nothing else differs."""
    shipped = json.loads(STAGE2.read_text())
    wait = json.loads((ROOT / "recipes" / "rig8-ctx-recover-noise-stack-wait.json").read_text())
    assert wait["data"].pop("data") == shipped["data"].pop("data") + ["data/rig8_stack_wait"]
    assert wait["data"].pop("exclude_tasks") == {"data/rig8": ["stack_cube"]}
    for part in ("--grasp-wait 4 ", "--seed 2000", "--tasks stack_cube", "--out data/rig8_stack_wait"):
        assert part in wait["comment"], part
    shipped.pop("comment"), wait.pop("comment")
    assert shipped == wait


@pytest.mark.parametrize("name, folder, flag", [("jaw-back", "data/rig8_push_jaw_back", "--push-style jaw_back"),
                                                ("jaw-high", "data/rig8_push_jaw_high", "--push-style jaw_high"),
                                                ("push-still", "data/rig8_push_still", "--hold-action still"),
                                                ("push-cage", "data/rig8_push_cage", "--push-style cage"),
                                                ("push-cage-wait", "data/rig8_push_cage_wait",
                                                 "--push-style cage_wait"),
                                                ("push-cage-slow", "data/rig8_push_cage_slow",
                                                 "--push-style cage_slow"),
                                                ("push-cage-noise", "data/rig8_push_cage_noise",
                                                 "--action-noise 0.02"),
                                                ("push-grip", "data/rig8_push_grip", "--push-style grip"),
                                                ("push-noise", "data/rig8_push_noise", "--action-noise 0.01"),
                                                ("push-noise2", "data/rig8_push_noise2", "--action-noise 0.02")])
def test_a_push_probe_stage_is_the_shipped_stage_with_push_demos_collected_again(name, folder, flag):
    """recipes/rig8-ctx-recover-noise-{jaw-back,jaw-high,push-still,push-cage,push-cage-wait,push-cage-slow,push-cage-noise,
    push-grip,push-noise,push-noise2}.json: the shipped second stage with data/rig8's push_cube demos left out and
    demos from data/rig8's collect seed (2000) collected again with one collect flag (push-cage-noise: the cage with
    noise on the executed targets; push-noise: the jaw with the noise of the stage's grasping demos, push-noise2 with
    twice its size; with noise a few scenes fail and the next attempts' take their places)."""
    shipped = json.loads(STAGE2.read_text())
    back = json.loads((ROOT / "recipes" / f"rig8-ctx-recover-noise-{name}.json").read_text())
    assert back["data"].pop("data") == shipped["data"].pop("data") + [folder]
    assert back["data"].pop("exclude_tasks") == {"data/rig8": ["push_cube"]}
    assert flag + " " in back["comment"] and "--seed 2000" in back["comment"] and f"--out {folder}" in back["comment"]
    if name == "push-cage-noise":
        assert "--push-style cage " in back["comment"]
    if name.startswith("push-noise"):   # the noise of the stage's own grasping demos, push-noise2 twice its size
        collect = shipped["data"]["collect"]
        size = collect["action_noise"] * (2 if name == "push-noise2" else 1)
        assert f"--action-noise {size} " in back["comment"]
        assert f"--action-noise-prob {collect['action_noise_prob']} " in back["comment"]
    rig8 = json.loads(RECIPE.read_text())["data"]["collect"]
    assert rig8["seed"] == 2000 and rig8["hold_steps"] == 10 and rig8["rig_views"] == 4
    shipped.pop("comment"), back.pop("comment")
    assert shipped == back


def test_the_start_jitter_stage_is_the_shipped_stage_on_demos_that_start_elsewhere():
    """recipes/rig8-ctx-recover-noise-start-jitter.json: the shipped second stage with both its datasets collected
    again from the same collect seeds and options, plus --start-jitter 0.1; nothing else differs."""
    shipped = json.loads(STAGE2.read_text())
    probe = json.loads((ROOT / "recipes" / "rig8-ctx-recover-noise-start-jitter.json").read_text())
    assert shipped["data"].pop("data") == ["data/rig8", "data/rig8_grasp_miss_noise"]
    assert probe["data"].pop("data") == ["data/rig8_start", "data/rig8_grasp_miss_noise_start"]
    rig8 = json.loads(RECIPE.read_text())["data"]["collect"]
    assert probe["data"].pop("collect") == {**rig8, "out": "data/rig8_start", "start_jitter": 0.1}
    miss = shipped["data"].pop("collect")
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in miss.items() if k != "out")
    assert f"{flags} --start-jitter 0.1 --out data/rig8_grasp_miss_noise_start" in probe["comment"]
    assert shipped["data"] == probe["data"] == {}
    shipped.pop("comment"), probe.pop("comment")
    assert shipped == probe
