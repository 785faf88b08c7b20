"""The claims table's open-loop column: every checkpoint kind scored on the same held-out windows, at the same
keyframe times, with openloop's statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from action_images import claims
from action_images.baselines import ActionTokensModel, BCConfig, BCModel, DiffusionPolicyModel, DPConfig, TokensConfig
from action_images.baselines.keyframes import align, evaluate_keyframes
from action_images.claims import Method
from action_images.decode_head import DecodeHead, DecodeHeadConfig, LearnedDecoder
from action_images.openloop import evaluate_open_loop
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)

TINY_NET = {"channels": [8, 16], "keypoints": 4, "view_dim": 16, "text_dim": 8, "text_vocab": 64}
REF = (2, 4)                        # the tiny world action model's keyframes: 4 and 8 control steps ahead
KW = {"num_episodes": 2, "starts": 2, "steps": 2, "seed": 0, "reference": REF}
STATS = ("keyframes", "pos_err_cm_median", "pos_err_cm_mean", "still_baseline_cm_median", "still_baseline_cm_mean",
         "gripper_accuracy")


def _wam() -> WorldActionModel:
    torch.manual_seed(0)
    model = WorldActionModel(WAMConfig.from_preset("cpu-tiny")).eval()
    with torch.no_grad():
        model.backbone.out.weight.normal_(0, 0.02)       # not the zero output: the decode sees something
    return model


def _models() -> dict[str, torch.nn.Module]:
    """A tiny random model of each kind, each at its own resolution and keyframes (all reach 8 control steps)."""
    torch.manual_seed(0)
    return {"wam": _wam(),
            "bc": BCModel(BCConfig(image_size=16, horizon=8, stride=1, hidden=32, depth=1, **TINY_NET)).eval(),
            "dp": DiffusionPolicyModel(DPConfig(image_size=16, horizon=4, stride=2, groups=4, down_dims=[16, 32],
                                                cond_dim=32, time_dim=8, **TINY_NET)).eval(),
            "tokens": ActionTokensModel(TokensConfig(image_size=16, horizon=2, stride=4, width=32, depth=2, heads=2,
                                                     patch=8, text_dim=32, text_vocab=64)).eval()}


def _head() -> LearnedDecoder:
    torch.manual_seed(0)
    return LearnedDecoder(DecodeHead(DecodeHeadConfig(image_size=32, channels=[8, 16], keypoints=8, view_dim=32)))


def test_every_kind_runs_on_the_same_windows(lerobot_root):
    res = {k: evaluate_keyframes(m, str(lerobot_root), **KW) for k, m in _models().items()}
    res["wam_head"] = evaluate_keyframes(_wam(), str(lerobot_root), decode_head=_head(), **KW)
    for kind, r in res.items():
        assert r["keyframe_steps"] == [4, 8] and r["keyframes"] == r["windows"] * 2, kind
        assert all(math.isfinite(r[k]) for k in STATS), kind
        assert len(r["pos_err_cm_median_by_keyframe"]) == 2
        for k in ("windows", "episodes", "views", "still_baseline_cm_median", "still_baseline_cm_median_by_keyframe"):
            assert r[k] == res["wam"][k], (kind, k)                              # the same windows and truth
    assert [res[k]["decode_valid_rate"] for k in ("bc", "dp", "tokens")] == [None] * 3   # nothing is decoded
    assert 0 <= res["wam"]["decode_valid_rate"] <= 1 and res["wam_head"]["decode_valid_rate"] == 1.0
    assert res["bc"]["model_keyframes"] == {"horizon": 8, "stride": 1}


def test_the_world_action_model_scores_as_openloop_policy_mode(lerobot_root):
    """Same windows, same noise, same decode: the numbers of ``action-images openloop``'s learning check."""
    model = _wam()
    mine = evaluate_keyframes(model, str(lerobot_root), num_episodes=2, starts=2, steps=2, seed=3)
    theirs = evaluate_open_loop(model, str(lerobot_root), num_episodes=2, windows_per_episode=2, steps=2, seed=3,
                                tasks=("policy",))["learning_check"]
    for k in (*STATS, "decode_valid_rate", "pos_err_cm_median_by_keyframe", "still_baseline_cm_median_by_keyframe"):
        assert mine[k] == theirs[k], k


def test_true_poses_score_zero_and_holding_still_scores_the_baseline(lerobot_root):
    """A predictor at 8 x 1 keyframes that returns each window's true future scores 0 at the reference 2 x 4; one
    that holds the current pose scores exactly the hold-pose baseline."""
    model = _models()["bc"]

    def oracle(items, start):
        poses = np.stack([w["poses"][1:].numpy() for w in items])                   # its own 8 x 1 keyframes
        return poses, np.ones(poses.shape[:2], bool)

    def hold(items, start):
        poses = np.stack([np.repeat(w["poses"][:1].numpy(), 8, axis=0) for w in items])
        return poses, np.ones(poses.shape[:2], bool)

    exact = evaluate_keyframes(model, str(lerobot_root), predict=oracle, **KW)
    assert exact["pos_err_cm_median"] == 0 and exact["pos_err_cm_mean"] == 0 and exact["gripper_accuracy"] == 1
    assert exact["still_baseline_cm_mean"] > 0
    still = evaluate_keyframes(model, str(lerobot_root), predict=hold, **KW)
    assert still["pos_err_cm_median"] == still["still_baseline_cm_median"]
    assert still["pos_err_cm_median_by_keyframe"] == still["still_baseline_cm_median_by_keyframe"]


def test_align_takes_keyframes_on_time_and_interpolates_between():
    current = np.array([0, 0, 0, 0, 0, 0, 1, 0.0])
    pred = np.array([[1, 0, 0, 0, 0, 0, 1, 1.0], [3, 0, 0, 0, 0, 0, 1, 1.0]])          # at 2 and 4 control steps
    at, ok = align(pred, np.array([True, False]), current, 2, [1, 2, 3, 4])
    assert at[:, 0].tolist() == [0.5, 1, 2, 3] and at[0, 7] == 1 and ok.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="cannot be scored 6 control steps ahead"):
        align(pred, np.ones(2, bool), current, 2, [6])


def test_claims_openloop_writes_a_json_per_row_and_the_table_shows_the_column(lerobot_root, tmp_path, monkeypatch):
    runs = {k: tmp_path / k for k in ("wam", "bc", "head")}
    models = _models()
    models["wam"].save_pretrained(runs["wam"])
    models["bc"].save_pretrained(runs["bc"])
    _head().head.save_pretrained(runs["head"])
    monkeypatch.setattr(claims, "METHODS", (
        Method("wam", "model wam", "r.json", str(runs["wam"])),
        Method("wam_head", "model head", "r.json", str(runs["wam"]), eval_flags=f"--decode-head {runs['head']}",
               extra=str(runs["head"])),
        Method("bc", "model bc", "r.json", str(runs["bc"])),
        Method("wam_all", "model all views", "r.json", str(runs["wam"]), eval_flags="--policy-cameras all"),
        Method("dp", "model dp", "r.json", str(tmp_path / "missing"))))
    ev = tmp_path / "ev"
    argv = ["openloop", "--data", str(lerobot_root), "--episodes", "2", "--starts", "1", "--sampler-steps", "2",
            "--eval-dir", str(ev)]
    assert claims.main(argv) == 0          # not the row whose setting is its views: the windows show two to all
    assert sorted(p.name for p in ev.iterdir()) == ["bc_openloop.json", "wam_head_openloop.json", "wam_openloop.json"]
    res = {k: json.loads((ev / f"{k}_openloop.json").read_text()) for k in ("wam", "wam_head", "bc")}
    assert [res[k]["kind"] for k in res] == ["wam", "wam", "bc"] and res["wam_head"]["decode_head"] == str(runs["head"])
    assert {r["keyframe_steps"] == [4, 8] and r["seed"] == 0 and r["windows"] == 2 for r in res.values()} == {True}

    before = (ev / "bc_openloop.json").stat().st_mtime_ns                   # an existing JSON is kept ...
    assert claims.main(argv + ["--rows", "bc"]) == 0 and (ev / "bc_openloop.json").stat().st_mtime_ns == before
    assert claims.main(argv + ["--rows", "bc", "--force"]) == 0                # ... unless --force
    assert json.loads((ev / "bc_openloop.json").read_text())["pos_err_cm_median"] == res["bc"]["pos_err_cm_median"]
    assert claims.main(argv + ["--rows", "nope"]) == 2

    (ev / "wam_head_openloop.json").unlink()
    doc = tmp_path / "claims.md"
    doc.write_text("<!-- claims table -->\n<!-- /claims table -->\n")
    assert claims.main(["table", "--eval-dir", str(ev), "--out", str(doc)]) == 0
    text = doc.read_text()
    assert claims.OPENLOOP_COLUMN in text.splitlines()[3]
    assert f"{res['wam']['still_baseline_cm_median']:.1f} cm on the same windows" in text     # once, in the caption
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| model")}
    assert rows["model wam"].endswith(f" | {res['wam']['pos_err_cm_median']:.1f} cm | – |")
    assert rows["model head"].endswith(" | not measured | – |")
    assert rows["model dp"].endswith(" | not trained | – | – | – | – | – |")

    other = dict(res["bc"], seed=5)                                           # a cell never mixes windows
    (ev / "bc_openloop.json").write_text(json.dumps(other))
    assert claims.main(["table", "--eval-dir", str(ev)]) == 2


def test_keyframe_times_come_from_the_recipe_when_the_reference_run_is_not_here(lerobot_root, tmp_path, monkeypatch):
    recipe = tmp_path / "wam.json"
    recipe.write_text(json.dumps({"model": {"preset": "cpu-tiny", "horizon": 2, "stride": 4},
                                  "data": {"data": ["data/x"]}, "optim": {"steps": 1}}))
    _models()["bc"].save_pretrained(tmp_path / "bc")
    monkeypatch.setattr(claims, "METHODS", (Method("wam", "model wam", str(recipe), str(tmp_path / "not_trained")),
                                            Method("bc", "model bc", "r.json", str(tmp_path / "bc"))))
    ev = tmp_path / "ev"
    argv = ["openloop", "--data", str(lerobot_root), "--episodes", "2", "--starts", "1", "--sampler-steps", "2",
            "--eval-dir", str(ev), "--rows", "bc"]
    assert claims.main(argv) == 0
    assert json.loads((ev / "bc_openloop.json").read_text())["keyframe_steps"] == [4, 8]
    recipe.write_text(json.dumps({"model": {"preset": "cpu-tiny", "horizon": 1, "stride": 8},
                                  "data": {"data": ["data/x"]}, "optim": {"steps": 1}}))
    assert claims.main(argv + ["--force"]) == 0                   # the recipe, not a default, sets the times
    assert json.loads((ev / "bc_openloop.json").read_text())["keyframe_steps"] == [8]
    recipe.unlink()
    assert claims.main(argv + ["--force"]) == 2                   # neither the run nor its recipe: one line, no JSON
