"""Open-loop metrics on hand-made inputs with known answers (the evaluator itself: tests/test_openloop.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from action_images.codec import ActionImageCodec
from action_images.geometry import Camera, euler_to_quat
from action_images.metrics import (jaccard, json_safe, paired_outcomes, pixel_error, pose_error, psnr, ssim,
                                   true_projections, to_u8, wilson_interval)
from action_images.perceptual import LPIPS, frechet_distance, lpips_uint8

torch.set_num_threads(1)


def video(seed=0, shape=(2, 3, 32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_identical_videos_psnr_inf_ssim_one():
    v = video()
    assert psnr(v, v) == math.inf
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-12)


def test_to_u8_maps_model_range_to_image_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 4).expand(3, 1, 4).clone()   # [3, H=1, W=4], channels first
    img = to_u8(x)
    assert img.shape == (1, 4, 3) and img.dtype == np.uint8                        # channels last
    assert img[0, :, 0].tolist() == [0, 128, 255, 255]                             # -1 -> 0, 0 -> 127.5 -> 128, clamp


def test_psnr_and_ssim_known_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-9)        # MSE 1
    # constant images: variance and covariance vanish, SSIM is the luminance term alone
    c1 = (0.01 * 255) ** 2
    expect = (2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1)
    assert ssim(a, a + 10) == pytest.approx(expect, rel=1e-9)
    v, w = video(1), video(2)
    assert ssim(v, w) < 0.1 and ssim(v, w) == pytest.approx(ssim(w, v))
    with pytest.raises(ValueError):
        psnr(v, w[:1])


def _cams(size=48):
    return [Camera.look_at(e, (0.45, 0.0, 0.15), 55, size, size, name=n)
            for n, e in (("front", (1.3, 0.0, 0.7)), ("left", (0.5, 0.9, 0.7)))]


def _pose(x=0.45, y=0.0, z=0.15, g=1.0):
    return np.concatenate([[x, y, z], euler_to_quat([np.pi, 0.0, 0.3]), [g]])


def test_known_pixel_offset_gives_known_pixel_error():
    codec, cams = ActionImageCodec(), _cams()
    poses = np.stack([_pose(), _pose(0.5, 0.05, 0.2)])
    imgs = codec.encode(poses, cams)                                     # [V, T, H, W, 3]
    true_uv, vis = true_projections(poses, cams, codec)
    assert vis.all()
    uv, _ = codec.peaks(imgs)
    assert pixel_error(uv, true_uv, vis)["mean_px"] < 0.05
    shifted = np.roll(imgs, 2, axis=3)                                   # 2 px to the right (+u)
    uv, _ = codec.peaks(shifted)
    err = pixel_error(uv, true_uv, vis)
    assert err["mean_px"] == pytest.approx(2.0, abs=0.05) and err["count"] == 12
    assert all(v == pytest.approx(2.0, abs=0.05) for v in err["per_point_px"].values())
    assert pixel_error(uv, true_uv, np.zeros_like(vis))["mean_px"] is None


def test_pose_error_known_offset():
    truth = np.stack([_pose(), _pose(0.5)])
    pred = truth.copy()
    pred[:, 1] += 0.01
    pred[1, 7] = 0.0
    e = pose_error(pred, truth)
    assert e["position_m_mean"] == pytest.approx(0.01) and e["rotation_deg_mean"] == pytest.approx(0.0, abs=1e-6)
    assert e["gripper_abs_error_mean"] == pytest.approx(0.5) and e["valid_fraction"] == 1.0
    pred[0] = np.nan
    assert pose_error(pred, truth)["valid_fraction"] == 0.5
    assert pose_error(np.full((2, 8), np.nan), truth)["position_m_mean"] is None


def test_jaccard_on_constructed_tracks():
    true_uv = np.zeros((5, 2))
    pred_uv = np.array([[0.5, 0], [1.5, 0], [0, 5.0], [0.1, 0], [0, 0.2]])   # errors 0.5, 1.5, 5, 0.1, 0.2
    true_vis = np.array([True, True, True, True, False])
    pred_vis = np.array([True, True, True, False, True])
    r = jaccard(pred_uv, pred_vis, true_uv, true_vis)
    assert r["jaccard"] == pytest.approx({"1": 1 / 7, "2": 2 / 6, "4": 2 / 6, "8": 3 / 5})
    assert r["average_jaccard"] == pytest.approx((1 / 7 + 1 / 3 + 1 / 3 + 3 / 5) / 4)
    assert r["pck"] == pytest.approx({"1": 0.5, "2": 0.75, "4": 0.75, "8": 1.0})
    assert r["occlusion_accuracy"] == pytest.approx(0.6)
    perfect = jaccard(true_uv, true_vis, true_uv, true_vis)
    assert perfect["average_jaccard"] == 1.0


def test_wilson_interval_and_json_safe():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert all(wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0 for n in range(1, 40))
    safe = json_safe({"a": math.inf, "b": [np.float32(1.5), np.nan], "c": np.int64(3), "d": np.bool_(True)})
    assert json.loads(json.dumps(safe, allow_nan=False)) == {"a": None, "b": [1.5, None], "c": 3, "d": True}
    from action_images import runfiles
    assert json_safe is runfiles.json_safe                   # one strict-JSON conversion, re-exported here


def test_lpips_and_frechet_distance_maths(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = LPIPS()
    sd = {}
    for j, t in enumerate((0, 3, 6, 8, 10)):
        sd[f"features.{t}.weight"] = net.convs[j].weight.detach().clone()
        sd[f"features.{t}.bias"] = net.convs[j].bias.detach().clone()
        sd[f"lin{j}.model.1.weight"] = net.lins[j].weight.detach().abs().clone()
    save_file(sd, str(tmp_path / "lpips.safetensors"))
    loaded = LPIPS.from_file(tmp_path / "lpips.safetensors")
    v, w = video(3, (2, 48, 48, 3)), video(4, (2, 48, 48, 3))
    assert lpips_uint8(loaded, v, v) == pytest.approx(0.0, abs=1e-6)
    assert lpips_uint8(loaded, v, w) > 0
    with pytest.raises(ValueError, match="LPIPS"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        LPIPS.from_file(tmp_path / "bad.safetensors")
    f = np.random.default_rng(0).normal(size=(200, 3))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(f, f + [1.0, 0, 0]) == pytest.approx(1.0, abs=1e-6)


def test_paired_outcomes_counts_wins_and_losses_episode_by_episode():
    def ep(task, i, ok, seed=None):
        return {"task": task, "episode": i, "seed": seed if seed is not None else 100 + i, "success": ok}
    base = [ep("a", i, i < 2) for i in range(10)]                       # episodes 0, 1 succeed
    new = [ep("a", i, i in (1, 2, 3, 4, 5, 6, 7, 8, 9)) for i in range(10)]    # loses 0, wins 2-9
    r = paired_outcomes(base, new)
    assert (r["episodes"], r["both"], r["won"], r["lost"]) == (10, 1, 8, 1)
    assert r["sign_test_p"] == pytest.approx(2 * (1 + 9) / 2 ** 9)      # exact two-sided: P(X <= 1 of 9) twice
    assert paired_outcomes(base, base)["sign_test_p"] == 1.0             # nothing differs
    with pytest.raises(ValueError, match="not the same episode"):
        paired_outcomes(base, [ep("a", 0, True, seed=7)])
    with pytest.raises(ValueError, match="not the same episode"):
        paired_outcomes(base, [ep("b", 0, True)])

