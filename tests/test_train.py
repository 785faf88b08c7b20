"""Training: resume bit-for-bit, run-dir safety, faults (non-finite loss, damaged checkpoints), 2-process DDP."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from action_images import checkpointing, train
from action_images import recipe as recipes
from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.recipe import TrainRecipe
from action_images.wam import WorldActionModel

TINY = ["--preset", "cpu-tiny", "--data", "synthetic:4", "--batch-size", "2", "--log-every", "1", "--no-progress",
        "--threads", "1", "--warmup", "2"]


def train_main(*argv: str) -> int:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.run(p.parse_args(list(argv)))


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in train.read_log(run / "log.jsonl")]


def test_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "6", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "3", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "6", "--seed", "3", "--resume") == 0
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == list(range(1, 7)) and la == lb  # bit-for-bit, every step
    wa = load_file(str(a / "checkpoints" / "step_00000006" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert (a / "loss.png").exists() and (a / "config.json").exists()
    m = WorldActionModel.from_pretrained(a)  # the run dir loads as a model (EMA weights)
    assert m.config.preset == "cpu-tiny"
    assert not any(p.name.startswith(".tmp") for p in (a / "checkpoints").iterdir())


def test_run_dir_is_protected_and_resume_checks_settings(tmp_path, capsys):
    run = tmp_path / "r"
    assert train_main(*TINY, "--out", str(run), "--steps", "1") == 0
    assert train_main(*TINY, "--out", str(run), "--steps", "2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(run), "--steps", "2", "--seed", "9", "--resume") == 2
    assert "optim.seed" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(run), "--steps", "2", "--lr", "1e-3", "--resume") == 2
    assert "optim.lr" in capsys.readouterr().err
    # run settings (threads, logging) may change on resume
    assert train_main(*TINY, "--out", str(run), "--steps", "2", "--log-every", "5", "--resume") == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["optim"]["steps"] == 2 and saved["run"]["log_every"] == 5
    # an option the checkpoint's saved recipe does not name (saved before the option existed) counts at its default:
    # another value is refused, the default resumes
    state_file = checkpointing.checkpoints(run)[-1] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["recipe"]["data"] = {k: v for k, v in state["recipe"]["data"].items() if not k.startswith("current_noise")}
    state_file.write_text(json.dumps(state))
    assert train_main(*TINY, "--out", str(run), "--steps", "2", "--current-noise", "0.02", "--resume") == 2
    assert "data.current_noise" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(run), "--steps", "2", "--resume") == 0


def test_non_finite_loss_stops_without_writing(tmp_path, monkeypatch, capsys):
    """A NaN loss at step 3 exits 3 with a message; the checkpoint of step 2 and the log stay finite strict JSON."""
    run = tmp_path / "nan"
    real = WorldActionModel.forward
    calls = {"n": 0}

    def forward(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(WorldActionModel, "forward", forward)
    assert train_main(*TINY, "--out", str(run), "--steps", "6", "--checkpoint-every", "2") == 3
    assert "step 3: the loss is nan" in capsys.readouterr().err
    assert [p.name for p in checkpointing.checkpoints(run)] == ["step_00000002"]
    for name in ("model.safetensors", "ema.safetensors"):
        w = load_file(str(run / "checkpoints" / "step_00000002" / name))
        assert all(torch.isfinite(v).all() for v in w.values())
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert all("NaN" not in x and "Infinity" not in x for x in lines)   # strict JSON


def test_non_finite_weights_are_never_saved(tmp_path):
    run = tmp_path / "w"
    assert train_main(*TINY, "--out", str(run), "--steps", "1") == 0
    m = WorldActionModel.from_pretrained(run)
    with torch.no_grad():
        next(m.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        m.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_resume_before_the_first_checkpoint_restarts_the_log(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "4") == 0
    b.mkdir()
    (b / "log.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in (1, 2, 3)))
    assert train_main(*TINY, "--out", str(b), "--steps", "4", "--resume") == 0
    assert losses(a) == losses(b)                                      # no stale lines from the killed run


@pytest.mark.parametrize("damage", ["optimizer", "state"])
def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, damage, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "6", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "4", "--seed", "3", "--checkpoint-every", "2") == 0
    latest = b / "checkpoints" / "step_00000004"
    if damage == "optimizer":
        f = latest / "optimizer.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (latest / "trainer_state.json").write_text("{garbage")
    assert train_main(*TINY, "--out", str(b), "--steps", "6", "--seed", "3", "--resume") == 0
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and "step 2" in err
    assert losses(a) == losses(b)


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed")
def test_two_process_ddp_with_accelerate(tmp_path):
    run = tmp_path / "ddp"
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "action_images.train", *TINY, "--out", str(run), "--steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = train.read_log(run / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["world_size"] == 2 for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert (run / "checkpoints" / "step_00000003" / "model.safetensors").exists()




def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    from action_images.runfiles import loads, read_jsonl
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}]
    f.write_text('{"a": 1}\n{garbage\n{"a": 3}\n')
    with pytest.raises(ValueError, match="x.jsonl: line 2"):
        read_jsonl(f)
    with pytest.raises(ValueError, match="NaN is not strict JSON"):
        loads('{"a": NaN}')


def test_collect_missing_collects_the_recipe_dataset_then_trains(tmp_path):
    """``make checkpoint``'s path: the recipe's data.collect section collects the missing dataset, then training runs."""
    data = tmp_path / "demos"
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({
        "model": {"preset": "cpu-tiny"},
        "data": {"data": [str(data)], "cameras": ["left", "right"],
                 "collect": {"tasks": "reach_target", "episodes": 1, "seed": 5, "image_size": 32,
                             "cameras": "left,right", "hold_steps": 2}},
        "optim": {"steps": 1, "batch_size": 2}, "run": {"threads": 1, "no_progress": True}}))
    run = tmp_path / "run"
    assert train_main("--config", str(recipe), "--out", str(run), "--collect-missing") == 0
    assert (data / "meta" / "info.json").exists() and (run / "model.safetensors").exists()
    assert WorldActionModel.from_pretrained(run).config.camera_names == ["left", "right"]
    assert train_main("--config", str(recipe), "--out", str(tmp_path / "run2")) == 0     # present: no collection


def test_collect_missing_collects_only_the_dataset_its_section_names(tmp_path, monkeypatch):
    """With several datasets, --collect-missing collects data.collect.out and nothing else; without out it refuses."""
    from action_images.data import collect

    made = []
    monkeypatch.setattr(collect, "run", lambda args: made.append(args.out) or 0)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")

    def recipe(collect_section):
        return TrainRecipe.from_dict({"data": {"data": [a, b], "collect": collect_section}})

    with pytest.raises(ValueError, match="does not say which of data.data"):
        recipes.collect_missing(recipe({"episodes": 1}))
    with pytest.raises(ValueError, match=r"missing, and data.collect collects .*b only"):
        recipes.collect_missing(recipe({"out": b, "episodes": 1}))          # a is missing too: not b's options
    with pytest.raises(ValueError, match=r"collects 'elsewhere', which is not one of data.data"):
        recipes.collect_missing(recipe({"out": "elsewhere", "episodes": 1}))   # e.g. --data replaced the list
    assert made == []
    (tmp_path / "a" / "meta").mkdir(parents=True)
    (tmp_path / "a" / "meta" / "info.json").write_text("{}")
    recipes.collect_missing(recipe({"out": b, "episodes": 1}))
    assert made == [b]


def test_linear_schedule_warms_up_then_decays_to_zero():
    assert [train.lr_at(s, 1.0, 2) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]                   # constant after warm-up
    rates = [train.lr_at(s, 1.0, 2, "linear", 10) for s in range(10)]
    assert rates[:3] == [0.5, 1.0, 1.0] and rates[-1] == pytest.approx(1 / 8) and train.lr_at(10, 1.0, 2, "linear", 10) == 0
    assert all(a >= b for a, b in zip(rates[1:], rates[2:]))


def test_init_from_starts_from_another_runs_export(tmp_path, capsys):
    """``--init-from RUN`` loads RUN's exported weights (fresh optimizer and EMA); another model is refused by name."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert train_main(*TINY, "--out", str(a), "--steps", "3", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "2", "--seed", "4", "--init-from", str(a),
                      "--lr", "1e-12", "--schedule", "linear") == 0
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)   # lr ~ 0: kept
    fresh = train_main(*TINY, "--out", str(c), "--steps", "2", "--seed", "4", "--lr", "1e-12")
    wc = load_file(str(c / "model.safetensors"))
    assert fresh == 0 and not all(torch.equal(wa[k], wc[k]) for k in wa)
    saved = json.loads((b / "train_config.json").read_text())
    assert saved["model"]["init_from"] == str(a) and saved["optim"]["schedule"] == "linear"
    capsys.readouterr()
    assert train_main(*TINY, "--out", str(tmp_path / "d"), "--steps", "2", "--init-from", str(tmp_path / "none")) == 2
    assert "--init-from" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(tmp_path / "e"), "--steps", "2", "--init-from", str(a),
                      "--context-channels", "4") == 2
    assert "context_channels" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(tmp_path / "g"), "--steps", "1", "--init-from", str(a),
                      "--cameras", "cam0,cam2") == 0               # other cameras: the same weights, trained on
    assert WorldActionModel.from_pretrained(tmp_path / "g").config.camera_names == ["cam0", "cam2"]
    assert train_main(*TINY, "--out", str(tmp_path / "h"), "--steps", "1", "--init-from", str(a),
                      "--act-keypoint-weight", "0.5") == 0         # another loss: the same weights, trained on
    assert WorldActionModel.from_pretrained(tmp_path / "h").config.act_keypoint_weight == 0.5
    assert train_main(*TINY, "--out", str(tmp_path / "t"), "--steps", "1", "--init-from", str(a),
                      "--t-mean", "0.5") == 0                      # other noise levels: the same weights, trained on
    assert WorldActionModel.from_pretrained(tmp_path / "t").config.t_mean == 0.5
    assert train_main(*TINY, "--out", str(tmp_path / "i"), "--steps", "1", "--init-from", str(a),
                      "--image-size", "48") == 0                   # another resolution: position embeddings are computed
    assert WorldActionModel.from_pretrained(tmp_path / "i").config.image_size == 48
    assert train_main(*TINY, "--out", str(tmp_path / "k"), "--steps", "1", "--init-from", str(a),
                      "--num-views", "3") == 0                     # more views per window: view slots are embedded
    assert WorldActionModel.from_pretrained(tmp_path / "k").config.num_views == 3
    assert train_main(*TINY, "--out", str(tmp_path / "s"), "--steps", "1", "--init-from", str(a),
                      "--stride", "1") == 0                        # keyframes spaced otherwise: no weight depends on it
    assert WorldActionModel.from_pretrained(tmp_path / "s").config.stride == 1
    assert train_main(*TINY, "--out", str(tmp_path / "hz"), "--steps", "1", "--init-from", str(a),
                      "--horizon", "3") == 2                       # another horizon: refused by name
    assert "horizon" in capsys.readouterr().err
    bent = tmp_path / "bent"                                        # a weight of another shape: refused by name
    shutil.copytree(a, bent)
    weights = dict(wa)
    name = next(k for k, v in weights.items() if v.ndim == 2)
    weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])
    save_file(weights, str(bent / "model.safetensors"))
    capsys.readouterr()
    assert train_main(*TINY, "--out", str(tmp_path / "j"), "--steps", "1", "--init-from", str(bent)) == 2
    assert "does not fit" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(tmp_path / "f"), "--minutes", "1", "--schedule", "linear") == 2
    assert "schedule" in capsys.readouterr().err


def test_init_from_adds_past_frames_starting_from_the_same_function(tmp_path, capsys):
    """A stage may add past frames (``--history``): the context encoder's new input channels start at 0, so the new
    model computes what the other run's did; taking past frames away is refused by name."""
    ctx = [*TINY, "--context-channels", "4"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*ctx, "--out", str(a), "--steps", "2", "--seed", "3") == 0
    assert train_main(*ctx, "--out", str(b), "--steps", "1", "--init-from", str(a), "--history", "2",
                      "--history-gap", "3", "--lr", "1e-12") == 0
    old, new = (WorldActionModel.from_pretrained(r).eval() for r in (a, b))
    assert (new.config.history, new.config.history_gap) == (2, 3)
    w = new.backbone.context.net[0].weight
    assert w.shape[1] == 18 and torch.allclose(w[:, :6], old.backbone.context.net[0].weight, atol=1e-6)
    ds = SyntheticWindows(WindowConfig.from_model(new.config), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    batch["history"] = torch.rand_like(batch["history"]) * 2 - 1                # the past frames change nothing yet
    out = [m.sample(batch, steps=2, generator=torch.Generator().manual_seed(0)).act for m in (old, new)]
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=0)
    capsys.readouterr()
    assert train_main(*ctx, "--out", str(tmp_path / "c"), "--steps", "1", "--init-from", str(b)) == 2
    assert "past frames" in capsys.readouterr().err
    assert train_main(*ctx, "--out", str(tmp_path / "e"), "--steps", "1", "--init-from", str(b), "--history", "3",
                      "--history-gap", "4") == 2                    # the past frames' weights are for 3 steps apart
    assert "--history-gap" in capsys.readouterr().err
    c = tmp_path / "more"                                           # 2 -> 3 past frames: the third starts at 0
    assert train_main(*ctx, "--out", str(c), "--steps", "1", "--init-from", str(b), "--history", "3",
                      "--history-gap", "3", "--lr", "1e-12") == 0
    w3 = WorldActionModel.from_pretrained(c).backbone.context.net[0].weight
    assert w3.shape[1] == 24 and torch.allclose(w3[:, :18], w, atol=1e-6) and w3[:, 18:].abs().max() < 1e-6
    assert train_main(*TINY, "--out", str(tmp_path / "d"), "--steps", "1", "--history", "1") == 2
    assert "context encoder" in capsys.readouterr().err
    assert train_main(*ctx, "--out", str(tmp_path / "g"), "--steps", "1", "--history-gap", "2") == 2
    assert "--history" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_init_from_adds_dit_blocks_starting_from_the_same_function(tmp_path, capsys):
    """A stage may add DiT blocks (``--depth``): they follow the other run's blocks with every adaLN gate at 0, so
    the deeper model computes what the other run's did and then trains them; fewer blocks are refused by name."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "2", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "1", "--init-from", str(a), "--depth", "4",
                      "--lr", "1e-12") == 0
    old, new = (WorldActionModel.from_pretrained(r).eval() for r in (a, b))
    assert len(old.backbone.blocks) == 2 and len(new.backbone.blocks) == 4 and new.config.backbone["depth"] == 4
    for i in (0, 1):                                                 # its own blocks, loaded where they were
        for (k, v), (k2, v2) in zip(old.backbone.blocks[i].state_dict().items(),
                                    new.backbone.blocks[i].state_dict().items()):
            assert k == k2 and torch.allclose(v, v2, atol=1e-6)
    assert all(new.backbone.blocks[i].ada[-1].weight.abs().max() < 1e-6 for i in (2, 3))   # gates at 0
    ds = SyntheticWindows(WindowConfig.from_model(new.config), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    out = [m.sample(batch, steps=2, generator=torch.Generator().manual_seed(0)).act for m in (old, new)]
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=0)
    c = tmp_path / "c"                                              # at a real learning rate the new blocks train
    assert train_main(*TINY, "--out", str(c), "--steps", "3", "--init-from", str(a), "--depth", "3",
                      "--lr", "1e-2", "--ema", "0") == 0
    assert WorldActionModel.from_pretrained(c).backbone.blocks[2].ada[-1].weight.abs().max() > 1e-4
    capsys.readouterr()
    assert train_main(*TINY, "--out", str(tmp_path / "d"), "--steps", "1", "--init-from", str(b), "--depth", "3") == 2
    err = capsys.readouterr().err
    assert "--depth" in err and "not taken away" in err and not (tmp_path / "d").exists()
    assert train_main(*TINY, "--out", str(tmp_path / "e"), "--steps", "1", "--init-from", str(b)) == 2   # preset's 2
    assert "--depth" in capsys.readouterr().err


def test_added_blocks_start_as_the_identity_with_text_cross_attention_too(tmp_path):
    """Cross-attention to the instruction has no adaLN gate: every block's starts with its output at 0, so a DiT
    with ``text_conditioning="cross"`` also grows from the same function."""
    from action_images.wam import WAMConfig
    cfg = WAMConfig.from_preset("cpu-tiny")
    cfg.backbone = {**cfg.backbone, "text_conditioning": "cross"}
    torch.manual_seed(0)
    old = WorldActionModel(cfg)
    for p in old.parameters():                                      # trained-looking weights: no gate at 0
        p.data.add_(0.05 * torch.randn_like(p))
    old.save_pretrained(tmp_path / "a")
    deeper = WAMConfig.from_dict({**cfg.to_dict(), "backbone": {**cfg.backbone, "depth": 3}})
    new = WorldActionModel(deeper)
    checkpointing.init_weights(new, str(tmp_path / "a"))
    assert new.backbone.blocks[2].cross.proj.weight.abs().max() == 0
    ds = SyntheticWindows(WindowConfig.from_model(cfg), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    out = [m.eval().sample(batch, steps=2, generator=torch.Generator().manual_seed(0)).act for m in (old, new)]
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=0)


def test_init_from_adds_text_layers_starting_from_the_same_function(tmp_path, capsys):
    """A stage may add layers to the hashed-word text encoder (``--text-layers``): each starts as the identity, so the
    model computes what the other run's did, then they train; fewer layers are refused by name."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "2", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "1", "--init-from", str(a), "--text-layers", "2",
                      "--lr", "1e-12") == 0
    old, new = (WorldActionModel.from_pretrained(r).eval() for r in (a, b))
    assert "layers" not in old.config.text and new.config.text["layers"] == 2 and len(new.text_encoder.layers) == 2
    texts = ["stack the red cube on the blue cube", "stack the blue cube on the red cube", ""]
    torch.testing.assert_close(old.encode_text(texts)[0], new.encode_text(texts)[0], atol=1e-6, rtol=0)
    ds = SyntheticWindows(WindowConfig.from_model(new.config), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    out = [m.sample(batch, steps=2, generator=torch.Generator().manual_seed(0)).act for m in (old, new)]
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=0)
    c = tmp_path / "c"                                              # at a real learning rate the layer trains
    assert train_main(*TINY, "--out", str(c), "--steps", "3", "--init-from", str(a), "--text-layers", "1",
                      "--lr", "1e-2", "--ema", "0") == 0
    assert WorldActionModel.from_pretrained(c).text_encoder.layers[0].mlp[-1].weight.abs().max() > 1e-4
    capsys.readouterr()
    assert train_main(*TINY, "--out", str(tmp_path / "d"), "--steps", "1", "--init-from", str(b), "--text-layers",
                      "1") == 2
    err = capsys.readouterr().err
    assert "--text-layers" in err and "not taken away" in err and not (tmp_path / "d").exists()
    assert train_main(*TINY, "--out", str(tmp_path / "e"), "--steps", "1", "--init-from", str(b)) == 2   # none
    assert "--text-layers" in capsys.readouterr().err
    bad = json.loads((b / "config.json").read_text())
    bad["config"]["text"]["layers"] = 1.5
    (b / "config.json").write_text(json.dumps(bad))
    assert train_main(*TINY, "--out", str(tmp_path / "f"), "--steps", "1", "--init-from", str(b), "--text-layers",
                      "2") == 2
    assert "not an integer" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(tmp_path / "g"), "--steps", "1", "--text-layers", "9") == 2
    assert "--text-layers" in capsys.readouterr().err
    assert train_main(*TINY, "--out", str(tmp_path / "h"), "--steps", "1", "--text-layers", "0") == 0
    assert "layers" not in json.loads((tmp_path / "h" / "config.json").read_text())["config"]["text"]


def test_data_workers_do_not_change_training(tmp_path):
    """``--workers``: windows are drawn from a generator seeded by their key, so loading them in a worker process
    gives the same batches, hence the same run, as loading them in the training process."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "3", "--seed", "5") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "3", "--seed", "5", "--workers", "1") == 0
    assert losses(a) == losses(b)
    wa, wb = (load_file(str(r / "model.safetensors")) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compile_compiles_the_backbone_in_place_keeping_the_weight_names():
    """``--compile`` compiles only the backbone (fixed shapes each step; the loss around it handles strings), in
    place, so checkpoints and exports keep their keys."""
    from action_images.wam import WAMConfig
    wam = WorldActionModel(WAMConfig(preset="cpu-tiny"))
    keys = list(wam.state_dict())
    assert train.compile_backbone(wam) is wam
    assert list(wam.state_dict()) == keys and wam.backbone._compiled_call_impl is not None


@pytest.mark.slow
def test_a_compiled_run_trains_like_an_eager_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "3", "--seed", "5") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "3", "--seed", "5", "--compile") == 0
    np.testing.assert_allclose([v for _, v in losses(a)], [v for _, v in losses(b)], rtol=1e-4)
    wa, wb = (load_file(str(r / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
