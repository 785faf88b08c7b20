"""``python -m action_images.report strip``: README stills of rollout GIFs, upscaled so each view is >= 256 px."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from action_images import report


def _eval_gif(path, frames=5, view=32, views=3):
    """A GIF shaped like an eval video: 2 rows (real views over generated) of ``views`` tiles of ``view`` px, drawn
    from 8 colours (a GIF palette keeps them exact)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (8, 3)).astype(np.uint8)
    video = palette[rng.integers(0, 8, (frames, 2 * view, views * view))]
    iio.imwrite(path, video, loop=0)
    return iio.imread(path, index=None)[..., :3]


def test_strip_upscales_each_view_to_at_least_256_px_by_nearest_neighbour(tmp_path):
    video = _eval_gif(tmp_path / "ep.gif")
    idx = report.save_rollout_strip(tmp_path / "ep.gif", tmp_path / "strip.png", frames=3)
    assert idx == [0, 2, 4]
    strip = iio.imread(tmp_path / "strip.png")
    zoom = 8                                                                  # 32 px views -> 256 px
    assert strip.shape == (3 * 64 * zoom, 96 * zoom, 3)
    expect = np.concatenate([video[i] for i in idx]).repeat(zoom, 0).repeat(zoom, 1)
    np.testing.assert_array_equal(strip, expect)                             # pixel repetition, no smoothing


def test_strip_zoom_rule_and_cli(tmp_path, capsys):
    assert report.strip_zoom(128) == 4 and report.strip_zoom(96) == 6 and report.strip_zoom(1024) == 1
    assert report.strip_zoom(100, view_rows=1, min_view_px=256) == 3
    with pytest.raises(ValueError):
        report.strip_zoom(64, view_rows=0)
    _eval_gif(tmp_path / "ep.gif", frames=2, view=20, views=2)
    assert report.main(["strip", str(tmp_path / "ep.gif"), str(tmp_path / "a.png")]) == 0
    assert iio.imread(tmp_path / "a.png").shape == (2 * 40 * 13, 40 * 13, 3)     # ceil(256 / 20) = 13
    assert report.main(["strip", str(tmp_path / "ep.gif"), str(tmp_path / "b.png"), "--min-view-px", "100"]) == 0
    assert iio.imread(tmp_path / "b.png").shape == (2 * 40 * 5, 40 * 5, 3)
    assert report.main(["strip", str(tmp_path / "ep.gif"), str(tmp_path / "c.png"), "--zoom", "2"]) == 0
    assert iio.imread(tmp_path / "c.png").shape == (2 * 40 * 2, 40 * 2, 3)
    for bad in (["--frames", "0"], ["--zoom", "0"], ["--view-rows", "0"]):
        assert report.main(["strip", str(tmp_path / "ep.gif"), str(tmp_path / "x.png"), *bad]) == 2
    assert not (tmp_path / "x.png").exists()
