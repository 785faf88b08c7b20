"""The labeler's use case end to end: demos whose actions are thrown away, labeled from their video by the world
action model, then a policy trained on the labels, next to the same recipe trained on the true actions.

    python -m action_images.jobs.usecase commands          # print every step
    python -m action_images.jobs.usecase run --json bench/results/label_usecase.json   # run what is missing

Steps (each skipped when its output exists, so an interrupted run continues): collect ``--episodes`` new demos of
``--task`` from the checkpoint's cameras (seeds the checkpoint never trained on); ``label`` them with the
checkpoint (the dataset it writes keeps the true actions as ``action.original``, which no step below reads); train
the same image-BC recipe (fixed steps, so the two runs differ only in their actions) on the labeled and on the true
dataset; evaluate both closed loop on the same held-out seeds. The summary holds both success rates with 95 % Wilson
intervals and the labels' error against the true actions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from action_images.cliflags import Parser


@dataclass(frozen=True)
class Plan:
    task: str = "open_drawer"
    episodes: int = 100
    collect_seed: int = 400000          # episode seeds derived from it meet no training demo's
    cameras: str = "left,right"
    checkpoint: str = "checkpoints/cpu-small"
    train_steps: int = 600
    eval_episodes: int = 50
    eval_seed: int = 31337
    data_root: str = "data/label_usecase"
    run_root: str = "runs/label_usecase"

    @property
    def true_data(self) -> str:
        return f"{self.data_root}/true"

    @property
    def labeled_data(self) -> str:
        return f"{self.data_root}/labeled"

    def steps(self) -> list[tuple[str, str, str]]:
        """(name, the file whose presence means done, command) in order."""
        train = (f"--method bc --cameras {self.cameras} --steps {self.train_steps} --lr 3e-4 --batch-size 32 "
                 f"--seed 0 --threads 1 --no-progress")
        out: list[tuple[str, str, str]] = [
            ("collect", f"{self.true_data}/meta/info.json",
             f"action-images collect --tasks {self.task} --episodes {self.episodes} --out {self.true_data} "
             f"--seed {self.collect_seed} --hold-steps 10 --cameras {self.cameras}"),
            ("label", f"{self.labeled_data}/meta/label.json",
             f"action-images label --checkpoint {self.checkpoint} --data {self.true_data} --out {self.labeled_data} "
             f"--cameras {self.cameras} --sampler-steps 6 --window-step 2"),
        ]
        for kind, data in (("labeled", self.labeled_data), ("true", self.true_data)):
            run = f"{self.run_root}/bc_{kind}"
            out.append((f"train_{kind}", f"{run}/model.safetensors",
                        f"action-images train --data {data} --out {run} {train}"))
        for kind in ("labeled", "true"):
            run = f"{self.run_root}/bc_{kind}"
            out.append((f"eval_{kind}", f"{run}/eval/metrics.json",
                        f"action-images eval --checkpoint {run} --tasks {self.task} --episodes {self.eval_episodes} "
                        f"--seed {self.eval_seed} --cameras {self.cameras} --videos 1 --no-progress --out {run}/eval"))
        return out


def summary(plan: Plan) -> dict[str, Any]:
    """Both policies' closed-loop success and the labels' quality, from the steps' output files."""
    res: dict[str, Any] = {"command": "jobs.usecase", "plan": plan.__dict__, "policies": {}}
    for kind in ("labeled", "true"):
        m = json.loads(Path(f"{plan.run_root}/bc_{kind}/eval/metrics.json").read_text())["overall"]
        res["policies"][kind] = {k: m[k] for k in ("successes", "episodes", "success_rate", "success_ci95")}
    label = json.loads(Path(f"{plan.labeled_data}/meta/label.json").read_text())
    rows = label["episodes"]
    frames = [r["frames"] for r in rows]

    def weighted(key: str, part: str = "vs_original") -> float | None:
        vals = [(r[part][key], w) for r, w in zip(rows, frames) if r[part].get(key) is not None]
        return sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else None

    res["labels"] = {"episodes": len(rows), "frames": sum(frames), "valid_fraction": label["valid_fraction"],
                     "disagree_fraction": sum(r["disagree_fraction"] * w for r, w in zip(rows, frames)) / sum(frames),
                     "position_cm_median_per_episode_mean": weighted("position_cm_median"),
                     "state_position_cm_median_per_episode_mean": weighted("state_position_cm_median"),
                     "gripper_agreement": weighted("gripper_agreement"), "seconds": label["seconds"]}
    return res


def main(argv: list[str] | None = None) -> int:
    from action_images.runfiles import atomic_write_json, dumps

    p = Parser(prog="python -m action_images.jobs.usecase", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("commands", "run"))
    for f in Plan.__dataclass_fields__.values():
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--json", default=None, help="run: write the summary here")
    a = p.parse_args(argv)
    plan = Plan(**{k: getattr(a, k) for k in Plan.__dataclass_fields__})
    for name in ("episodes", "train_steps", "eval_episodes"):
        if getattr(plan, name) < 1:
            print(f"python -m action_images.jobs.usecase: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if a.what == "commands":
        for _, _, cmd in plan.steps():
            print(cmd)
        return 0
    for name, done, cmd in plan.steps():
        if Path(done).exists():
            continue
        print(cmd, file=sys.stderr)
        if subprocess.run([sys.executable, "-m", "action_images.cli", *shlex.split(cmd)[1:]]).returncode != 0:
            print(f"python -m action_images.jobs.usecase: step {name} failed", file=sys.stderr)
            return 1
    res = summary(plan)
    if a.json:
        atomic_write_json(a.json, res)
    print(dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
