"""``action-images label``: actions for a dataset's videos, from the model's labeler job (video -> action images).

    action-images label --checkpoint runs/pick --data data/pick_cube_val --out data/pick_cube_val_labeled
    action-images label --checkpoint RUN --data IN --out OUT --cameras left,right --episodes 0,3 --window-step 2
    action-images label --checkpoint RUN --data LEROBOT_DS --calibration cameras.json --out OUT  # LeRobot's own writer

In: a LeRobot v3 dataset (``LeRobotDataset``). Out: a new LeRobot v3 dataset (``DatasetWriter``) with the same
videos (decoded and re-encoded losslessly in YUV), states, calibration, instructions and per-episode ``extra/``
values (plus ``extra/label_source_episode``), whose data files hold per frame:

* ``action``: the labeled absolute pose ``[x, y, z, qx, qy, qz, qw, g]``;
* ``action.original``: the dataset's own action;
* ``action_confidence``: the mean, over the windows used, of the weakest of the three points' confidence (the peak
  height of its blob, averaged over the views that see it; 0 where nothing was decoded);
* ``action_valid``: some window decoded a pose for this frame;
* ``disagree``: the label rests on no decode, or only on decodes whose views disagree (``DecodeResult.disagree``:
  a view rejected, a residual above the codec's ``reject_px``, or a point seen through a cut blob).

``meta/label.json`` records the command, the cameras, the rule and per-episode counts, and how far the labels lie
from the original actions.

**Windows.** Each window is the model's training window (``common.window_at``) at a start frame t0: the current
frame and H keyframes t0 + k * stride (clipped to the episode). The labeler job is given all of its RGB and
generates all of its action images; ``ActionImageCodec.decode`` with the window's cameras turns them into poses.
As in training, keyframe k (k >= 1) at frame t_k shows the action that led there, ``action[t_k - 1]``; frame 0
shows the current pose ``observation.state[t0]``, the pose ``action[t0 - 1]`` led to. Keyframe decodes label the
actions; frame-0 decodes label ``action[t0 - 1]`` only where no keyframe decode is valid (the first stride - 1
actions, which no keyframe shows), and the last action is the pose of the last frame (no later frame shows it).
Windows start at every ``--window-step``-th frame and at the last frame, so with the default step 1 every action is
shown, most by H windows.

**Stitching.** The decodes of one action (keyframe decodes, else frame-0 decodes) are combined: those that are
valid and whose views agree, else (flagged) the valid ones that disagree; positions and gripper as the
confidence-weighted mean, rotations as the confidence-weighted mean rotation
(``scipy.spatial.transform.Rotation.mean``). A frame with no valid decode is
flagged (``action_valid`` false, ``disagree`` true, confidence 0) and its ``action`` holds the frame's
``observation.state``: "did not move", the rule the policy and the open-loop evaluator use for an undecodable
keyframe; ``action`` is never NaN, since LeRobot datasets may not hold it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.spatial.transform import Rotation

from action_images.cliflags import Parser
from action_images.codec import ActionImageCodec
from action_images.data.lerobot_format import format_template
from action_images.data.lerobot_writer import DatasetWriter
from action_images.data.windows import collate, keyframe_times
from action_images.geometry import POSE_NAMES, Camera
from action_images.jobs.common import (add_model_arguments, check_declared_episodes, check_model_arguments, load,
                                       window_at)
from action_images.runfiles import (args_dict, atomic_write_json, check_out_dir, dumps, environment, json_safe,
                                    split_list)

PROG = "action-images label"
DESCRIPTION = "label a dataset's videos with actions (the labeler job) and write a new LeRobot dataset"
ORIGINAL_KEY = "action.original"
CONFIDENCE_KEY = "action_confidence"
VALID_KEY = "action_valid"
DISAGREE_KEY = "disagree"
LABEL_FEATURES = {ORIGINAL_KEY: {"dtype": "float64", "shape": [8], "names": list(POSE_NAMES)},
                  CONFIDENCE_KEY: {"dtype": "float32", "shape": [1], "names": None},
                  VALID_KEY: {"dtype": "bool", "shape": [1], "names": None},
                  DISAGREE_KEY: {"dtype": "bool", "shape": [1], "names": None}}
LABEL_INFO_PATH = "meta/label.json"
STITCH_RULE = ("per action: keyframe decodes (frame-0 decodes where none is valid); the valid decodes whose views "
               "agree (else, flagged, the valid ones that disagree); "
               "position and gripper the confidence-weighted mean, rotation the confidence-weighted mean rotation "
               "(scipy Rotation.mean); no valid decode: observation.state of the frame, flagged")


# ---- stitching -------------------------------------------------------------------------------------------------------
@dataclass
class Decode:
    """One window's decode of one frame's action."""
    pose: np.ndarray        # [8]
    confidence: float       # the weakest point's confidence
    valid: bool
    disagree: bool


@dataclass
class Labels:
    """Stitched labels of one episode, per frame."""
    poses: np.ndarray       # [T, 8]
    confidence: np.ndarray  # [T] float32
    valid: np.ndarray       # [T] bool
    disagree: np.ndarray    # [T] bool
    decodes: np.ndarray     # [T] int: keyframe decodes of the frame's action (valid or not)


def _usable(cands: Sequence[Decode]) -> list[Decode]:
    return [d for d in cands if d.valid and np.isfinite(d.pose).all()]


def stitch(decodes: Sequence[Sequence[Decode]], fallback: np.ndarray,
           secondary: Sequence[Sequence[Decode]] | None = None) -> Labels:
    """Combine each frame's decodes (see the module docstring); ``secondary``: decodes used only where ``decodes``
    has no valid one (frame-0 decodes); ``fallback [T, 8]``: the poses of frames with no valid decode at all (the
    episode's states)."""
    T = len(decodes)
    poses = np.array(fallback, dtype=np.float64, copy=True)
    conf = np.zeros(T, np.float32)
    valid = np.zeros(T, bool)
    disagree = np.ones(T, bool)
    for j in range(T):
        ok = _usable(decodes[j]) or (_usable(secondary[j]) if secondary is not None else [])
        agree = [d for d in ok if not d.disagree]
        use = agree or ok
        if not use:
            continue
        c = np.array([d.confidence for d in use], np.float64)
        w = c / c.sum() if c.sum() > 0 else np.full(len(use), 1.0 / len(use))
        P = np.stack([d.pose for d in use])
        poses[j, :3] = w @ P[:, :3]
        poses[j, 3:7] = Rotation.from_quat(P[:, 3:7]).mean(weights=w).as_quat()
        poses[j, 7] = float(np.clip(w @ P[:, 7], 0.0, 1.0))
        conf[j], valid[j], disagree[j] = float(c.mean()), True, not agree
    return Labels(poses=poses, confidence=conf, valid=valid, disagree=disagree,
                  decodes=np.array([len(c) for c in decodes], np.int64))


def window_starts(T: int, step: int) -> list[int]:
    """Start frames of the label windows: every ``step``-th frame and the last one."""
    return sorted(set(range(0, T, step)) | {T - 1})


def label_targets(t0: int, T: int, horizon: int, stride: int) -> list[tuple[int, int, bool]]:
    """(window frame k, action index it labels, keyframe?) of the window at ``t0``: keyframe k >= 1 at frame t_k
    shows ``action[t_k - 1]``; frame 0 shows the pose ``action[t0 - 1]`` led to (a second choice) and, at the last
    frame, stands for the last action."""
    times = keyframe_times(t0, T, horizon, stride)
    out = [(k, int(max(t - 1, 0)), True) for k, t in enumerate(times) if k >= 1]
    if t0 >= 1:
        out.append((0, t0 - 1, False))
    if t0 == T - 1:
        out.append((0, T - 1, False))
    return out


@torch.no_grad()
def label_episode(model: Any, ep: Any, names: Sequence[str], wcfg: Any, codec: ActionImageCodec, steps: int = 10,
                  cfg_scale: float = 1.0, seed: int = 0, window_step: int = 1, batch_size: int = 8) -> Labels:
    """Label every frame of episode ``ep`` (an ``Episode``) with the labeler job, in overlapping windows."""
    T, R = len(ep), wcfg.image_size
    keyframe: list[list[Decode]] = [[] for _ in range(T)]
    current: list[list[Decode]] = [[] for _ in range(T)]
    starts = window_starts(T, window_step)
    for s in range(0, len(starts), batch_size):
        items = [window_at(ep, t0, names, wcfg, codec) for t0 in starts[s:s + batch_size]]
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, ep.index, s]).generate_state(1)[0]))
        out = model.sample(collate(items), task="labeler", steps=steps, cfg_scale=cfg_scale, generator=gen)
        act = ((out.act.clamp(-1, 1) + 1) * 0.5).float().movedim(-3, -1).cpu().numpy()   # [B, V, F, R, R, 3]
        for b, w in enumerate(items):
            cams = [Camera(K=K, T_cam_world=Tc, width=R, height=R)
                    for K, Tc in zip(w["K"].numpy(), w["T_cam_world"].numpy())]
            dec = codec.decode(act[b], cams)
            for k, j, is_key in label_targets(int(w["t0"]), T, wcfg.horizon, wcfg.stride):
                (keyframe if is_key else current)[j].append(
                    Decode(pose=dec.poses[k], confidence=float(dec.confidence[k].min()), valid=bool(dec.valid[k]),
                           disagree=bool(dec.disagree[k])))
    return stitch(keyframe, ep.states, current)


def compare(labels: Labels, original: np.ndarray, states: np.ndarray) -> dict[str, Any]:
    """How far the labels lie from the original actions (valid frames), beside "the action is the current state"."""
    v = labels.valid
    if not v.any():
        return {"frames": 0, "position_cm_median": None, "state_position_cm_median": None, "gripper_agreement": None}
    err = 100 * np.linalg.norm(labels.poses[v, :3] - original[v, :3], axis=-1)
    still = 100 * np.linalg.norm(states[v, :3] - original[v, :3], axis=-1)
    return {"frames": int(v.sum()), "position_cm_median": float(np.median(err)),
            "position_cm_mean": float(err.mean()), "state_position_cm_median": float(np.median(still)),
            "gripper_agreement": float(np.mean((labels.poses[v, 7] > 0.5) == (original[v, 7] > 0.5)))}


# ---- the output dataset ----------------------------------------------------------------------------------------------
def read_label_columns(root: str | Path, episode: int) -> dict[str, np.ndarray]:
    """The label columns of one episode of a labeled dataset: ``{key: array [T, ...]}`` (``LABEL_FEATURES``)."""
    from action_images.data import LeRobotDataset

    ds = LeRobotDataset(root, check_files=False, cache_size=0)
    row = ds.episode_info(episode)
    rel = format_template(ds.info, "data_path", ds.root / "meta/info.json", chunk_index=row["data/chunk_index"],
                          file_index=row["data/file_index"])
    table = pq.read_table(ds.root / rel)
    table = table.filter(pa.array(table.column("episode_index").to_numpy() == episode))
    missing = [k for k in LABEL_FEATURES if k not in table.column_names]
    if missing:
        raise ValueError(f"{ds.root / rel}: no label columns {missing} (not written by action-images label)")
    out = {ORIGINAL_KEY: np.stack(table.column(ORIGINAL_KEY).to_pylist()).astype(np.float64)}
    for key in (CONFIDENCE_KEY, VALID_KEY, DISAGREE_KEY):
        out[key] = table.column(key).to_numpy(zero_copy_only=False)
    return out


def _extra(ep: Any) -> dict[str, Any]:
    keep = {k: v for k, v in ep.extra.items() if isinstance(v, (bool, int, float, str))}
    return {**keep, "label_source_episode": int(ep.index)}


# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="the labeled dataset to write (a new or empty folder)")
    p.add_argument("--episodes", default="all",
                   help="comma separated episode indices of --data, or 'all' (default); they are written in this "
                        "order as episodes 0, 1, ...")
    p.add_argument("--window-step", type=int, default=1,
                   help="frames between label window starts (default 1: every action seen by up to H windows; "
                        "larger is faster, and an action no window shows is flagged)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per sampler call (default 8)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="camera calibration (meta/cameras.json format) in place of the dataset's own: for a dataset "
                        "written by LeRobot itself, which has none; the labeled dataset stores it as meta/cameras.json")


def _check_args(args: argparse.Namespace) -> list[int] | None:
    """Every flag checked before any work; ValueError with one line naming the flag."""
    check_model_arguments(args)
    for flag, value in (("--window-step", args.window_step), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    out = Path(args.out)
    check_out_dir(out)
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out: {out} already exists and is not an empty folder (nothing is overwritten)")
    if out.resolve() == Path(args.data).resolve():
        raise ValueError("--out: must differ from --data")
    if args.calibration is not None and not Path(args.calibration).is_file():
        raise ValueError(f"--calibration: no such file {args.calibration}")
    if args.episodes.strip() == "all":
        return None
    try:
        eps = [int(s) for s in split_list(args.episodes, "--episodes")]
    except ValueError:
        raise ValueError(f"--episodes: {args.episodes!r} is not 'all' or a list of episode indices") from None
    if not eps or len(set(eps)) != len(eps):
        raise ValueError(f"--episodes: {args.episodes!r} is not 'all' or a list of distinct episode indices")
    if min(eps) < 0:
        raise ValueError(f"--episodes: {[i for i in eps if i < 0]} are not in the dataset (indices start at 0)")
    check_declared_episodes(args.data, eps, "--episodes")
    return eps


def run(args: argparse.Namespace) -> int:
    try:
        episodes = _check_args(args)
        model, ds, names, wcfg = load(args)
        if episodes is None:
            episodes = list(range(ds.num_episodes))
        bad = [i for i in episodes if not 0 <= i < ds.num_episodes]
        if bad:
            raise ValueError(f"--episodes: {bad} are not in the dataset (it has {ds.num_episodes})")
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    codec = ActionImageCodec()
    t_start = time.perf_counter()
    summary = []
    H, W = ds.image_size
    writer = DatasetWriter(args.out, fps=ds.fps, cameras=[ds.cameras[c] for c in ds.camera_names], image_size=(H, W),
                           per_frame_cameras=ds.per_frame_cameras, robot_type=ds.info.get("robot_type"),
                           columns=LABEL_FEATURES)
    with writer:
        for i in episodes:
            ep = ds.episode(i)
            labels = label_episode(model, ep, names, wcfg, codec, steps=args.sampler_steps, cfg_scale=args.cfg_scale,
                                   seed=args.seed, window_step=args.window_step, batch_size=args.batch_size)
            writer.add_episode(instruction=ep.instruction, actions=labels.poses, states=ep.states, images=ep.images,
                               cameras=ep.frame_cameras if ds.per_frame_cameras else None, extra=_extra(ep),
                               columns={ORIGINAL_KEY: ep.actions, CONFIDENCE_KEY: labels.confidence,
                                        VALID_KEY: labels.valid, DISAGREE_KEY: labels.disagree})
            row = {"source_episode": i, "frames": len(ep), "windows": len(window_starts(len(ep), args.window_step)),
                   "valid_fraction": float(labels.valid.mean()), "disagree_fraction": float(labels.disagree.mean()),
                   "confidence_mean": float(labels.confidence.mean()),
                   "vs_original": compare(labels, ep.actions, ep.states)}
            summary.append(row)
            print(dumps(row, indent=None), flush=True)
    res = json_safe({"command": "label", "arguments": args_dict(args), "checkpoint": str(args.checkpoint),
                     "data": str(args.data), "views": names, "job": "labeler", "stitching": STITCH_RULE,
                     "window_step": args.window_step, "episodes": summary,
                     "valid_fraction": float(np.average([r["valid_fraction"] for r in summary],
                                                        weights=[r["frames"] for r in summary])),
                     "seconds": time.perf_counter() - t_start, "environment": environment()})
    atomic_write_json(Path(args.out) / LABEL_INFO_PATH, res)
    print(f"wrote {args.out} ({len(episodes)} episodes; {LABEL_INFO_PATH})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=PROG, description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
