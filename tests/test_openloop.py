"""``action-images openloop``: the one open-loop evaluator, its episode and camera rules, flag checks and the probe."""

from __future__ import annotations

import argparse
import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from action_images import openloop
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)
SRC = Path(openloop.__file__).parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 episodes, cameras front / left / right at 32 px (the fake sim: milliseconds)."""
    import collect_fake_env as fake
    from action_images.data import collect

    root = tmp_path_factory.mktemp("ol") / "d"
    mp = pytest.MonkeyPatch()
    mp.setattr(collect, "_load_sim", lambda: (fake.make_env, fake.TASKS))
    fake.KILL["after_steps"] = None
    try:
        p = argparse.ArgumentParser()
        collect.add_arguments(p)
        assert collect.run(p.parse_args(["--out", str(root), "--cameras", "front,left,right", "--image-size", "32",
                                         "--task", "reach_fake", "--episodes", "3"])) == 0
    finally:
        mp.undo()
    return root


def _model(camera_names=None) -> WorldActionModel:
    torch.manual_seed(0)
    return WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=camera_names)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model trained (by its config) on the cameras right and front, in that order."""
    path = tmp_path_factory.mktemp("ckpt") / "run"
    _model(["right", "front"]).save_pretrained(path)
    return path


def _cli(argv):
    """``action-images openloop ARGV`` as the CLI router runs it; argparse errors -> their exit code."""
    p = argparse.ArgumentParser(prog="action-images openloop")
    openloop.add_arguments(p)
    try:
        return openloop.run(p.parse_args(argv))
    except SystemExit as e:
        return e.code


def test_episode_rule_spreads_evenly_first_and_last_included():
    assert openloop.pick_episodes(10, 4) == [0, 3, 6, 9]
    assert openloop.pick_episodes(3, 2) == [0, 2]
    assert openloop.pick_episodes(100, 3) == [0, 50, 99]                     # 49.5 rounds to even
    assert openloop.pick_episodes(3, 20) == [0, 1, 2]                        # all of a small dataset
    assert openloop.pick_episodes(7, 1) == [0]
    for total in range(1, 30):
        for n in range(1, total + 1):
            assert len(openloop.pick_episodes(total, n)) == n                # never a duplicate
    with pytest.raises(ValueError):
        openloop.pick_episodes(5, 0)


def test_cameras_default_to_the_checkpoints_then_the_datasets():
    have = ["front", "left", "right"]
    assert openloop.resolve_cameras(WAMConfig(camera_names=["right", "left"]), have) == ["right", "left"]
    assert openloop.resolve_cameras(WAMConfig(camera_names=None, num_views=2), have) == ["front", "left"]
    assert openloop.resolve_cameras(WAMConfig(camera_names=["right", "left"]), have, ["left", "front"]) == \
        ["left", "front"]
    with pytest.raises(ValueError, match="top"):
        openloop.resolve_cameras(WAMConfig(camera_names=["top", "left"]), have)
    with pytest.raises(ValueError, match=">= 2"):
        openloop.resolve_cameras(WAMConfig(), have, ["left"])


def test_cli_writes_strict_json_with_the_checkpoints_cameras(dataset, checkpoint, tmp_path):
    out, fig = tmp_path / "res" / "ol.json", tmp_path / "streams.png"
    assert _cli(["--checkpoint", str(checkpoint), "--data", str(dataset), "--episodes", "2", "--starts", "1",
                 "--modes", "all", "--sampler-steps", "1", "--seed", "3", "--noise-levels", "1,0.5",
                 "--json", str(out), "--figure", str(fig)]) == 0
    res = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert res["command"] == "openloop" and res["seed"] == 3 and res["arguments"]["seed"] == 3
    assert res["arguments"]["modes"] == "all" and res["arguments"]["sampler_steps"] == 1
    assert res["episodes"] == [0, 2] == res["open_loop"]["episodes"]          # spread: first and last of 3
    assert res["views"] == ["right", "front"]                                # the checkpoint's camera_names
    assert res["windows"] == 2 and res["modes"] == list(openloop.OPEN_LOOP_TASKS)
    assert res["keyframes"] == 2 * 2                                          # windows x horizon (cpu-tiny: 2)
    for k in ("pos_err_cm_median", "still_baseline_cm_median", "gripper_accuracy", "decode_valid_rate",
              "copy_frame_psnr_db"):
        assert isinstance(res[k], float), k
    assert set(res["one_step_mse"]) == {"1", "0.5"}
    assert set(res["one_step_mse"]["1"]) == {"rgb_model", "rgb_copy", "act_model", "act_copy"}
    ol = res["open_loop"]
    assert set(ol["tasks"]) == set(openloop.OPEN_LOOP_TASKS) and ol["steps"] == 1
    assert set(ol["fvd"]) == {"policy", "world_model", "video"} and all(v is None for v in ol["fvd"].values())
    assert {"python", "torch", "mujoco"} <= set(res["environment"]) and res["environment"]["mujoco"]
    assert fig.is_file()


def test_position_flag_reaches_the_decoder(dataset, checkpoint, tmp_path, monkeypatch):
    from action_images.codec import ActionImageCodec

    seen = set()
    decode = ActionImageCodec.decode

    def spy(self, *args, **kwargs):
        seen.add(kwargs.get("position", "fit"))
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(ActionImageCodec, "decode", spy)
    out = tmp_path / "ol.json"
    assert _cli(["--checkpoint", str(checkpoint), "--data", str(dataset), "--episodes", "1", "--starts", "1",
                 "--sampler-steps", "1", "--position", "point", "--json", str(out)]) == 0
    assert seen == {"point"} and json.loads(out.read_text())["arguments"]["position"] == "point"


def test_views_flag_overrides_the_checkpoint_and_eval_shares_the_evaluator(dataset):
    res = openloop.evaluate_open_loop(_model(["right", "front"]), str(dataset), num_episodes=2,
                                      windows_per_episode=1, steps=1, tasks=("policy",), views=["left", "right"])
    assert res["views"] == ["left", "right"] and res["episodes"] == [0, 2]
    lc = res["learning_check"]
    # the untrained model outputs zero = "copy the current frame, hold the pose": it scores exactly like the baselines
    assert lc["rgb_psnr_db"] == pytest.approx(lc["copy_frame_psnr_db"])
    assert lc["pos_err_cm_median"] == pytest.approx(lc["still_baseline_cm_median"], abs=1e-3)
    # eval --open-loop-data: the same evaluator, the same episode rule, the policy's cameras
    tree = ast.parse((SRC / "evaluate.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and any(a.name == "evaluate_open_loop" for a in n.names)]
    assert imports and all(n.module == "action_images.openloop" for n in imports)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) ==
             "evaluate_open_loop"]
    assert calls and all({"num_episodes", "views"} <= {k.arg for k in c.keywords} for c in calls)


def test_probe_noises_through_wam_noisy_input(dataset, monkeypatch):
    calls = []
    real = WorldActionModel.noisy_input

    def spy(x0, state, t, eps):
        calls.append((tuple(x0.shape), t.clone()))
        return real(x0, state, t, eps)

    monkeypatch.setattr(WorldActionModel, "noisy_input", staticmethod(spy))
    res = openloop.one_step_mse(_model(), str(dataset), [0, 1], 2, ["front", "left"], [1.0, 0.25])
    assert [c[1].unique().tolist() for c in calls] == [[1.0], [0.25]]
    assert calls[0][0][:3] == (4, 2, 3) and calls[0][1].shape == (4,)      # 2 episodes x 2 starts, V, F
    # zero output = copy: the probe scores the model exactly like the copy baseline
    for lv in res.values():
        assert lv["rgb_model"] == pytest.approx(lv["rgb_copy"]) and lv["act_model"] == pytest.approx(lv["act_copy"])
    assert res["1"]["act_copy"] > 0


BAD = [
    (["--episodes", "0"], "--episodes"), (["--starts", "0"], "--starts"), (["--sampler-steps", "0"], "--sampler-steps"),
    (["--threads", "0"], "--threads"), (["--batch-size", "0"], "--batch-size"), (["--seed", "-1"], "--seed"),
    (["--cfg-scale", "nan"], "--cfg-scale"), (["--cfg-scale", "-1"], "--cfg-scale"),
    (["--modes", "policy,dance"], "--modes"), (["--modes", ","], "--modes"),
    (["--noise-levels", "1.5"], "--noise-levels"), (["--noise-levels", "abc"], "--noise-levels"),
    (["--lpips-weights", "missing.safetensors"], "--lpips-weights"), (["--lpips-weights", "I3D"], "--lpips-weights"),
    (["--i3d-weights", "I3D"], "--i3d-weights"),
    (["--json", "out.txt"], "--json"), (["--json", "."], "--json"), (["--figure", "f.jpg"], "--figure"),
    (["--cameras", "front"], "--cameras"), (["--cameras", "front,top"], "--cameras"),
]


@pytest.mark.parametrize("extra,flag", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(dataset, checkpoint, tmp_path, monkeypatch, capsys,
                                                        extra, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "I3D").write_bytes(b"not TorchScript")                        # exists, but not trusted
    calls = []
    monkeypatch.setattr(openloop, "evaluate_open_loop", lambda *a, **k: calls.append(a))
    rc = _cli(["--checkpoint", str(checkpoint), "--data", str(dataset), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not calls
    assert len(err.splitlines()) == 1 and flag in err, err


def test_unknown_camera_is_refused_before_the_model_loads(dataset, checkpoint, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr(openloop.WorldActionModel, "from_pretrained", lambda *a, **k: loads.append(a))
    assert _cli(["--checkpoint", str(checkpoint), "--data", str(dataset), "--cameras", "front,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--cameras" in err and "['nope']" in err and not loads, err


def test_bad_paths_and_argparse_errors_exit_2(dataset, checkpoint, tmp_path, capsys):
    assert _cli(["--checkpoint", str(tmp_path), "--data", str(dataset)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert _cli(["--checkpoint", str(checkpoint), "--data", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert _cli(["--checkpoint", str(checkpoint), "--data", str(dataset), "--episodes", "two"]) == 2
    assert _cli(["--data", str(dataset)]) == 2                               # --checkpoint is required


def test_i3d_torchscript_needs_explicit_trust(tmp_path, monkeypatch):
    from action_images import perceptual

    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a))
    (tmp_path / "i3d.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="trust"):
        perceptual.I3DFeatures(tmp_path / "i3d.pt")
    with pytest.raises(ValueError, match="trust"):
        openloop.evaluate_open_loop(None, "unused", i3d_weights=str(tmp_path / "i3d.pt"))
    assert not loads                                                          # refused before anything is loaded
    assert "--trust-i3d-torchscript" in openloop.NOTE_FVD


def test_cli_routes_openloop_and_python_m_keeps_working():
    from action_images import cli

    assert cli.COMMANDS["openloop"][0] == "action_images.openloop"
    assert cli.main(["openloop", "--checkpoint", "none", "--data", "none", "--episodes", "0"]) == 2
    assert callable(openloop.add_arguments) and callable(openloop.run) and callable(openloop.main)
    out = subprocess.run([sys.executable, "-m", "action_images.openloop", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--trust-i3d-torchscript" in out.stdout and "--modes" in out.stdout


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_metrics_holds_metric_functions_only_and_imports_no_evaluator():
    m = _imports(SRC / "metrics.py")
    assert not {n for n in m if n.startswith(("action_images.report", "action_images.openloop"))}, m
    assert not {n for n in _imports(SRC / "report.py") if n.startswith("action_images.openloop")}
    import action_images.metrics as metrics
    assert not hasattr(metrics, "evaluate_open_loop") and not hasattr(metrics, "held_out_windows")
    code = ("import sys, action_images.metrics; "
            "print(sorted(m for m in sys.modules if m in ('action_images.report', 'action_images.openloop')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_summary_counts_identical_windows_and_averages_the_rest():
    rows = [{"video": {"psnr": math.inf, "ssim": 1.0}, "action_2d": {"count": 3, "mean_px": None}},
            {"video": {"psnr": 20.0, "ssim": 0.5}, "action_2d": {"count": 2, "mean_px": 4.0}}]
    s = openloop._summarise(rows)
    assert s["video"] == {"psnr": 20.0, "psnr_identical_windows": 1, "ssim": 0.75}
    assert s["action_2d"] == {"count": 5, "mean_px": 4.0}
    assert np.isinf(openloop._summarise(rows[:1])["video"]["psnr"])


def test_scores_do_not_depend_on_the_batch_size(lerobot_root):
    """Each window's sampler noise comes from (seed, window index), not from its position in a batch."""
    from action_images.openloop import evaluate_open_loop
    from action_images.wam import WAMConfig, WorldActionModel
    torch.manual_seed(0)
    model = WorldActionModel(WAMConfig.from_preset("cpu-tiny")).eval()
    with torch.no_grad():
        model.backbone.out.weight.normal_(0, 0.02)
    runs = [evaluate_open_loop(model, str(lerobot_root), episodes=[0, 1], windows_per_episode=2, steps=1,
                               tasks=("policy",), batch_size=bs)["tasks"]["policy"] for bs in (1, 3)]
    assert runs[0] == runs[1]


def test_checkpoint_cameras_are_cut_to_the_views_per_window():
    from types import SimpleNamespace

    from action_images.openloop import resolve_cameras
    cfg = SimpleNamespace(camera_names=["rig0", "rig1", "rig2", "rig3"], num_views=2)
    assert resolve_cameras(cfg, ["rig0", "rig1", "rig2", "rig3"]) == ["rig0", "rig1"]
    assert resolve_cameras(cfg, ["rig0", "rig1", "rig2", "rig3"], ["rig3", "rig1", "rig0"]) == ["rig3", "rig1", "rig0"]


def test_latent_model_trains_then_runs_openloop_on_pixels(lerobot_root, tmp_path):
    """A wan-tiny-latent run (Wan VAE latents) through the openloop command: the starting noise is drawn in the
    folded latent layout, the sampler decodes to pixels, every mode is scored on pixels, and the one-step probe
    decodes its latent prediction; scores do not depend on the batch size."""
    pytest.importorskip("diffusers")
    import contextlib
    import io

    from action_images import train
    from action_images.models.latent import latent_frames

    run = tmp_path / "latent"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train.main(["--preset", "wan-tiny-latent", "--data", "synthetic:2", "--batch-size", "2", "--steps", "2",
                         "--no-progress", "--threads", "1", "--out", str(run)])
    assert rc == 0, err.getvalue()[-2000:]
    cfg = WorldActionModel.from_pretrained(run).config
    assert cfg.latent is not None
    shape = openloop.noise_shape(cfg, 2, 1 + cfg.horizon, cfg.image_size, cfg.image_size)
    z, s = cfg.latent["vae"]["z_dim"], cfg.image_size // 8                  # the tiny VAE: 8x spatial
    assert shape == (2, latent_frames(1 + cfg.horizon), 6, z // 3 * s, s)
    assert openloop.noise_shape(WAMConfig.from_preset("cpu-tiny"), 2, 3, 32, 32) == (2, 3, 6, 32, 32)
    results = []
    for bs in (1, 4):
        out = tmp_path / f"ol{bs}.json"
        argv = ["--checkpoint", str(run), "--data", str(lerobot_root), "--episodes", "2", "--starts", "2",
                "--sampler-steps", "2", "--modes", "all", "--noise-levels", "0.5,1", "--batch-size", str(bs),
                "--json", str(out)] + (["--figure", str(tmp_path / "streams.png")] if bs == 1 else [])
        assert _cli(argv) == 0
        results.append(json.loads(out.read_text()))
    res = results[0]
    assert (tmp_path / "streams.png").stat().st_size > 0
    assert res["windows"] == 4 and set(res["open_loop"]["tasks"]) == set(openloop.OPEN_LOOP_TASKS)
    for t in ("policy", "world_model", "video"):
        assert math.isfinite(res["open_loop"]["tasks"][t]["video"]["psnr"])
    assert res["open_loop"]["tasks"]["labeler"]["action_2d"]["count"] >= 0
    assert res["keyframes"] == 4 * cfg.horizon and 0.0 <= res["decode_valid_rate"] <= 1.0
    assert set(res["one_step_mse"]) == {"0.5", "1"}
    assert all(math.isfinite(v) for lv in res["one_step_mse"].values() for v in lv.values())
    flat = [_leaves(r["open_loop"]["tasks"]) for r in results]            # batched VAE convolutions: float noise
    assert flat[0].keys() == flat[1].keys()
    assert all(flat[0][k] == (flat[1][k] if flat[1][k] is None else pytest.approx(flat[1][k], rel=1e-4, abs=1e-5))
               for k in flat[0])


def _leaves(d: dict, prefix: str = "") -> dict:
    """Numeric leaves of a nested dict as {"a.b.c": value} (None kept)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        elif v is None or isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out
