"""What the frames of a ``collect --policy`` dataset ask for: the expert's targets in the frames the policy drove
(before ``extra/takeover``) against those of the frames the expert drove itself before success (the frames recorded
after it, ``extra/hold_steps``, are left out of both).

    python bench/dagger_labels.py --data data/rig8_dagger --json bench/results/dagger/labels.json

Per task and part (``driven``, ``expert``): the frames, the median distance from the hand to the stored target
(metres; an expert step is at most 4.5 cm), the share of targets more than ``--up`` above the hand (the experts'
rise and re-approach), and the share whose gripper command differs from the hand's state by more than half its
range (the jaw asked to open or close); per task, ``driven_steps_median``: the steps the policy drove (median over
episodes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def label_stats(root: str | Path, up: float = 0.02) -> dict:
    """{task: {"driven" | "expert": {"frames", "reach_m_median", "up_share", "gripper_share"},
    "driven_steps_median"}} of a dataset whose
    episodes carry ``extra/takeover``; a ValueError naming the dataset where they do not."""
    from action_images.data import LeRobotDataset

    ds = LeRobotDataset(root)
    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    driven: dict[str, list[int]] = {}
    for i in range(ds.num_episodes):
        info = ds.episode_info(i)
        if "extra/takeover" not in info:
            raise ValueError(f"{root}: episode {i} has no extra/takeover (not collected with --policy)")
        ep, k = ds.episode(i), int(info["extra/takeover"])
        end = len(ep) - int(info.get("extra/hold_steps") or 0)     # the first success's frame; a hold follows
        k = min(k, end)        # no frame after success is driven, whatever extra/takeover holds
        task = str(info.get("extra/task_name", ep.instruction))
        rows = np.column_stack([np.linalg.norm(ep.actions[:, :3] - ep.states[:, :3], axis=1),
                                ep.actions[:, 2] - ep.states[:, 2] > up,
                                np.abs(ep.actions[:, 7] - ep.states[:, 7]) > 0.5])
        driven.setdefault(task, []).append(k)
        for part, sl in (("driven", slice(0, k)), ("expert", slice(k, end))):
            parts.setdefault((task, part), []).append(rows[sl])
    out: dict = {}
    for (task, part), chunks in sorted(parts.items()):
        r = np.concatenate(chunks)
        out.setdefault(task, {})[part] = {
            "frames": int(len(r)),
            "reach_m_median": round(float(np.median(r[:, 0])), 4) if len(r) else None,
            "up_share": round(float(r[:, 1].mean()), 3) if len(r) else None,
            "gripper_share": round(float(r[:, 2].mean()), 3) if len(r) else None}
    for task, ks in driven.items():
        out[task]["driven_steps_median"] = float(np.median(ks))
    return out


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--data", required=True, help="a dataset collected with collect --policy")
    p.add_argument("--up", type=float, default=0.02, help="metres above the hand that count as a rise (default 0.02)")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    if not (np.isfinite(a.up) and a.up >= 0):
        p.error(f"--up: a finite number >= 0; got {a.up}")
    if not (Path(a.data) / "meta" / "info.json").is_file():
        p.error(f"--data: {a.data} is not a dataset (no meta/info.json)")
    t0 = time.perf_counter()
    try:
        stats = label_stats(a.data, a.up)
    except ValueError as e:
        p.error(f"--data: {e}")
    res = {"command": probe_command(__file__, argv), "data": a.data, "up_m": a.up, "tasks": stats,
           "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.json, res)
    for task, v in stats.items():
        print(task, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
