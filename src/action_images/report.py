"""HTML report of an evaluation folder: tables, a success-vs-task chart and the rollout videos.

Why a single static file: it opens anywhere (no server, no JavaScript, no network), and every link is relative to the
folder, so ``metrics.json``, ``report.html``, ``success.png`` and ``videos/`` can be moved or zipped together.
"""

from __future__ import annotations

import html
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_bytes, atomic_write_text

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:90%}
figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:85%;color:#555}
img.video{image-rendering:pixelated;border:1px solid #ddd}code{background:#f5f5f5;padding:0 3px}"""


def _fmt(x: Any, pct: bool = False, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{100 * x:.1f} %" if pct else f"{x:.{digits}g}"
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def success_chart(path: Path, tasks: dict[str, dict[str, Any]], title: str = "closed-loop success") -> None:
    """Bar chart of success rate per task with 95 % Wilson intervals (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tasks)
    rates = [100 * (tasks[t]["success_rate"] or 0.0) for t in names]
    lo = [max(0.0, r - 100 * tasks[t]["success_ci95"][0]) for r, t in zip(rates, names)]   # clip float dust
    hi = [max(0.0, 100 * tasks[t]["success_ci95"][1] - r) for r, t in zip(rates, names)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.6))
    ax.bar(range(len(names)), rates, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"{title} (bars: 95 % Wilson CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _open_loop_section(ol: dict[str, Any]) -> str:
    rows = []
    base = ol.get("baselines", {})
    cf = base.get("copy_frame", {})
    rows.append(["baseline: copy current frame", _fmt(cf.get("psnr")), _fmt(cf.get("ssim")), _fmt(cf.get("lpips")),
                 _fmt((base.get("hold_pose_2d") or {}).get("mean_px")),
                 _fmt((base.get("hold_pose_3d") or {}).get("position_m_mean")), "–", "–"])
    for task, m in ol.get("tasks", {}).items():
        v, a2, a3, tr = m.get("video", {}), m.get("action_2d", {}), m.get("action_3d", {}), m.get("tracks", {})
        rows.append([html.escape(task), _fmt(v.get("psnr")), _fmt(v.get("ssim")), _fmt(v.get("lpips")),
                     _fmt(a2.get("mean_px")), _fmt(a3.get("position_m_mean")), _fmt(tr.get("average_jaccard")),
                     _fmt(m.get("trajectory_error_m"))])
    fvd = ", ".join(f"{html.escape(k)}: {_fmt(v)}" for k, v in (ol.get("fvd") or {}).items())
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in ol.get("notes", []))
    return ("<h2>Open loop (held-out episodes)</h2>"
            f"<p>{ol.get('windows')} windows from episodes {html.escape(str(ol.get('episodes')))}, views "
            f"{html.escape(str(ol.get('views')))}, {ol.get('steps')} sampler steps. Pixel errors at model "
            f"resolution; Jaccard thresholds {html.escape(str(ol.get('jaccard_thresholds_px')))} px.</p>"
            + _table(["task", "PSNR (dB)", "SSIM", "LPIPS", "action 2D err (px)", "action 3D err (m)",
                      "avg Jaccard", "trajectory err (m)"], rows)
            + f"<p>FVD: {fvd or '–'}</p>" + notes)


def write_report(out: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``success.png`` and ``report.html`` into ``out`` from an evaluation's metrics dict."""
    out = Path(out)
    tasks = metrics.get("tasks", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>action-images eval</title>"
             f"<style>{CSS}</style></head><body>", "<h1>Action Images — closed-loop evaluation</h1>"]
    ov = metrics.get("overall", {})
    pol = metrics.get("policy", {})
    parts.append(f"<p>Checkpoint <code>{html.escape(str(metrics.get('checkpoint', '')))}</code>, seed "
                 f"{_fmt(metrics.get('seed'))}, cameras perturbed: {_fmt(bool(metrics.get('perturb_cameras')))}"
                 + (f", hand start jittered by up to {_fmt(metrics['start_jitter'])} m"
                    if metrics.get("start_jitter") else "") + ". "
                 f"Overall success {_fmt(ov.get('successes'))}/{_fmt(ov.get('episodes'))} = "
                 f"<b>{_fmt(ov.get('success_rate'), pct=True)}</b> (95 % CI "
                 f"{_fmt((ov.get('success_ci95') or [None])[0], pct=True)} – "
                 f"{_fmt((ov.get('success_ci95') or [None, None])[1], pct=True)}).</p>")
    if tasks:
        success_chart(out / "success.png", tasks)
        parts.append("<img src='success.png' alt='success rate per task'>")
    rows = []
    for t, m in tasks.items():
        lat = m.get("latency", {})
        d = m.get("decisions", {})
        rows.append([html.escape(t), _fmt(m.get("episodes")), _fmt(m.get("successes")),
                     _fmt(m.get("success_rate"), pct=True),
                     f"{_fmt(m['success_ci95'][0], pct=True)} – {_fmt(m['success_ci95'][1], pct=True)}",
                     _fmt(m.get("mean_episode_length")), _fmt(lat.get("mean_ms")), _fmt(lat.get("p95_ms")),
                     " / ".join(_fmt(d.get(k, 0)) for k in ("execute", "replan", "hold", "hold_invalid")),
                     _fmt(m.get("disagree_keyframe_fraction"), pct=True),
                     _fmt(m.get("invalid_keyframe_fraction"), pct=True), _fmt(m.get("reproj_error_px_mean"))])
    parts.append("<h2>Per task</h2>" + _table(
        ["task", "episodes", "successes", "success", "95 % CI", "mean length", "latency mean (ms)",
         "latency p95 (ms)", "chunks: execute / replan / hold / hold (invalid)", "keyframes: views disagree",
         "keyframes: invalid", "reproj. err (px)"], rows))
    parts.append("<p class=note>Latency per replanning step: observe → generate → decode → chunk (env time "
                 "excluded). Mean parts (ms): " + html.escape(", ".join(
                     f"{k} {_fmt(v)}" for k, v in (ov.get("latency_parts_ms_mean") or {}).items())) + "</p>")
    if pol:
        parts.append("<h2>Policy</h2>" + _table(["setting", "value"],
                                                [[html.escape(k), _fmt(v)] for k, v in pol.items()]))
    if metrics.get("open_loop"):
        parts.append(_open_loop_section(metrics["open_loop"]))
    vids = metrics.get("videos", {})
    if vids:
        parts.append("<h2>Rollouts</h2><p>Top row: every camera with the executed target's action image overlaid "
                     "(red = position, green = normal, blue = up point). Bottom row: the model's generated future "
                     "keyframe the policy is heading to, with its generated action image (grey: view not given to "
                     "the model).</p>")
        eps = {e.get("video"): e for e in metrics.get("episodes", []) if e.get("video")}
        for t, paths in vids.items():
            parts.append(f"<h3>{html.escape(t)}</h3>")
            for rel in paths:
                e = eps.get(rel, {})
                cap = (f"episode {_fmt(e.get('episode'))}, seed {_fmt(e.get('seed'))}: "
                       f"{'success' if e.get('success') else 'failure'} in {_fmt(e.get('length'))} steps")
                src = html.escape(rel, quote=True)
                media = (f"<video class=video src='{src}' controls loop muted></video>" if rel.endswith(".mp4")
                         else f"<img class=video src='{src}' alt='{src}'>")
                parts.append(f"<figure>{media}<figcaption>{html.escape(cap)}</figcaption></figure>")
    args = metrics.get("arguments", {})
    if args:
        parts.append("<h2>Arguments</h2>" + _table(["argument", "value"],
                                                   [[html.escape(k), _fmt(v)] for k, v in args.items()]))
    env = metrics.get("environment")
    parts.append("<p class=note>Raw numbers: <a href='metrics.json'>metrics.json</a>. "
                 + (html.escape(json.dumps(env)) if env else "") + "</p></body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def save_streams_figure(batch: dict[str, Any], out: Any, path: str | Path, item: int = 0, zoom: int = 3) -> None:
    """Real vs generated streams of one window (``out``: a ``wam.Sample``): per view, rows = real RGB, generated RGB,
    real action image over the real frame, generated action image over the generated frame; columns = current frame
    + H keyframes."""
    import imageio.v3 as iio
    import numpy as np

    from action_images.codec import overlay
    from action_images.metrics import to_u8

    rows = []
    real_rgb, gen_rgb = to_u8(batch["rgb"][item]), to_u8(out.rgb[item])    # [V, F, H, W, 3]
    real_act, gen_act = to_u8(batch["act"][item]), to_u8(out.act[item])
    for v in range(real_rgb.shape[0]):
        for img in (real_rgb[v], gen_rgb[v], overlay(real_rgb[v], real_act[v]), overlay(gen_rgb[v], gen_act[v])):
            rows.append(np.concatenate(list(img), axis=1))                  # [H, F*W, 3]
    grid = np.concatenate(rows, axis=0).repeat(zoom, axis=0).repeat(zoom, axis=1)
    atomic_write_bytes(path, iio.imwrite("<bytes>", grid, extension=".png"))


MIN_VIEW_PX = 256   # a still's views are upscaled to at least this many pixels, so the action-image blobs show


def strip_zoom(frame_height: int, view_rows: int = 2, min_view_px: int = MIN_VIEW_PX) -> int:
    """The whole-number zoom that makes each view of a video frame ``view_rows`` views tall at least ``min_view_px``
    pixels tall."""
    if view_rows < 1 or min_view_px < 1 or frame_height < view_rows:
        raise ValueError(f"need view_rows >= 1, min_view_px >= 1 and a frame of >= view_rows px; got view_rows "
                         f"{view_rows}, min_view_px {min_view_px}, frame height {frame_height}")
    return max(1, math.ceil(min_view_px * view_rows / frame_height))


def save_rollout_strip(video: str | Path, path: str | Path, frames: int = 4, zoom: int | None = None,
                       view_rows: int = 2, min_view_px: int = MIN_VIEW_PX) -> list[int]:
    """A still of a rollout video for docs: ``frames`` evenly spaced frames (first and last included) stacked top to
    bottom, upscaled by nearest neighbour (pixel repetition, no smoothing). ``zoom`` None: the smallest whole zoom
    that makes each view at least ``min_view_px`` tall, a frame being ``view_rows`` views tall (the ``eval`` videos:
    the real views above the generated ones). Returns the frame indices used.

        python -m action_images.report strip runs/eval/videos/open_drawer_ep000.gif docs/img/rollout_open_drawer.png
    """
    import imageio.v3 as iio
    import numpy as np

    video_frames = iio.imread(video, index=None)                               # [T, H, W, 3] (GIF: maybe RGBA)
    if video_frames.ndim != 4 or len(video_frames) == 0:
        raise ValueError(f"{video}: not a video (shape {video_frames.shape})")
    if frames < 1:
        raise ValueError(f"frames must be >= 1; got {frames}")
    if zoom is None:
        zoom = strip_zoom(video_frames.shape[1], view_rows, min_view_px)
    if zoom < 1:
        raise ValueError(f"zoom must be >= 1; got {zoom}")
    idx = sorted({int(round(i)) for i in np.linspace(0, len(video_frames) - 1, min(frames, len(video_frames)))})
    strip = np.concatenate([video_frames[i, ..., :3] for i in idx], axis=0)
    atomic_write_bytes(path, iio.imwrite("<bytes>", strip.repeat(zoom, axis=0).repeat(zoom, axis=1), extension=".png"))
    return idx


def main(argv: list[str] | None = None) -> int:
    """``python -m action_images.report strip VIDEO OUT.png [--frames N] [--min-view-px P] [--view-rows R]
    [--zoom Z]``"""
    p = Parser(prog="python -m action_images.report")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("strip", help="evenly spaced frames of a rollout video, stacked, as one PNG")
    s.add_argument("video")
    s.add_argument("out")
    s.add_argument("--frames", type=int, default=4, help="frames in the still (default 4)")
    s.add_argument("--min-view-px", type=int, default=MIN_VIEW_PX,
                   help=f"upscale (nearest neighbour) until each view is at least this tall (default {MIN_VIEW_PX})")
    s.add_argument("--view-rows", type=int, default=2,
                   help="views stacked in one video frame (default 2: eval videos, real views over generated ones)")
    s.add_argument("--zoom", type=int, default=None, help="a fixed whole-number zoom instead of --min-view-px")
    args = p.parse_args(argv)
    try:
        idx = save_rollout_strip(args.video, args.out, frames=args.frames, zoom=args.zoom, view_rows=args.view_rows,
                                 min_view_px=args.min_view_px)
    except (OSError, ValueError) as e:
        print(f"python -m action_images.report strip: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (frames {idx})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
