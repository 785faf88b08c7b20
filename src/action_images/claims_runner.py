"""The claims table's runner: trains the rows that are missing, evaluates the trained ones closed loop and scores
them open loop, each by running the same ``action-images`` command a person would (printed before it runs).

    python -m action_images.claims train                                   # train the rows that are missing
    python -m action_images.claims run --episodes 20 --seed 31337          # run the evaluations that are missing

A row counts as trained only at its recipe's last step (a run still training exports its weights at every
checkpoint): ``train`` continues an interrupted run with ``--resume``; ``run`` skips a run still training, continues
an interrupted evaluation with ``--resume``, and evaluates again (``--overwrite``) when the evaluation folder recorded
other weights than the checkpoint holds now.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from action_images.claims import (CONDITIONS, Method, _metrics, _still_training, eval_command, finished, ready,
                                  train_command, trained)
from action_images.runfiles import atomic_write_json, environment, json_safe
from action_images.wam import read_meta


def evaluated_model(out: Path) -> str | None:
    """The weights digest an evaluation folder's ``episodes.jsonl`` header recorded (None when there is none)."""
    try:
        with open(out / "episodes.jsonl") as f:
            return json.loads(f.readline()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def current_model_digest(m: Method) -> str:
    """The digest ``action-images eval`` records for the row's checkpoint as it is now."""
    from action_images.baselines import load_model
    from action_images.evaluate import model_digest
    return model_digest(load_model(m.run))


def _skip_reason(m: Method) -> str:
    """Why the row cannot be measured yet ('' when its model is trained to its recipe's end)."""
    if not trained(m):
        return f"{m.run} is not trained ({train_command(m)})"
    return "" if ready(m) else _still_training(m)


def _cli(command: str) -> list[str]:
    """``command`` as argv for this interpreter (``action-images ...`` through its CLI module, ``python ...``)."""
    words = shlex.split(command)
    return ([sys.executable, "-m", "action_images.cli", *words[1:]] if words[0] == "action-images"
            else [sys.executable, *words[1:]])


def train_missing(methods: tuple[Method, ...]) -> int:
    """Runs each row's training commands unless the row is trained to its recipe's end; 1 when one fails."""
    for m in methods:
        if ready(m):
            continue
        for part in train_command(m).split(" && "):
            if part.startswith("action-images train"):
                if (Path(m.run) / "model.safetensors").exists() and finished(Path(m.run)):
                    continue                                   # the row's model is done; only its head is missing
                if Path(m.run).exists():
                    part += " --resume"                        # an interrupted run continues from its checkpoint
            print(part, file=sys.stderr)
            if subprocess.run(_cli(part)).returncode != 0:
                return 1
    return 0


def run_missing(methods: tuple[Method, ...], episodes: int, seed: int, eval_dir: str) -> int:
    """Runs every condition's evaluation of each trained row that has no result for these weights; 1 when one
    fails, 2 when a folder holds a result of other settings."""
    for m in methods:
        if skip := _skip_reason(m):
            print(f"skipping {m.key}: {skip}", file=sys.stderr)
            continue
        digest = None
        for c in CONDITIONS:
            out = Path(eval_dir) / f"{m.key}_{c}"
            try:
                measured = _metrics(out, episodes, seed) is not None
            except ValueError as e:
                print(f"python -m action_images.claims: {e}", file=sys.stderr)
                return 2
            cmd = eval_command(m, c, episodes, seed, eval_dir)
            recorded = evaluated_model(out)
            if recorded is not None:
                digest = digest or current_model_digest(m)
            if recorded is not None and recorded != digest:
                print(f"{out} evaluated other weights than {m.run} holds now: evaluating again", file=sys.stderr)
                cmd += " --overwrite"
            elif measured:
                continue
            elif recorded is not None:
                cmd += " --resume"                             # an interrupted evaluation of these weights
            print(cmd, file=sys.stderr)
            if subprocess.run(_cli(cmd)).returncode != 0:
                return 1
    return 0


def reference_keyframes(methods: tuple[Method, ...]) -> tuple[int, int]:
    """(H, stride) of the world action model row: the keyframe times every row is scored at. From its checkpoint
    where it is trained here, else from its recipe (the same times: the recipe sets them), so that one other row can
    be scored on a machine without that run."""
    wam = next((m for m in methods if m.key == "wam"), None)
    if wam is None:
        raise ValueError("no 'wam' row")
    if (Path(wam.run) / "config.json").is_file():
        cfg = read_meta(wam.run)[1]["config"]
        return int(cfg["horizon"]), int(cfg["stride"])
    from action_images.recipe import TrainRecipe
    from action_images.train import build_config

    recipe_cfg = build_config(TrainRecipe.load(wam.recipe))
    return int(recipe_cfg.horizon), int(recipe_cfg.stride)


def measure_openloop(m: Method, data: str, episodes: int, starts: int, seed: int, steps: int,
                     reference: tuple[int, int]) -> dict[str, Any]:
    """One row's open-loop keyframe error (:func:`~action_images.baselines.keyframes.evaluate_keyframes`)."""
    from action_images.baselines import load_model, method_of
    from action_images.baselines.keyframes import evaluate_keyframes

    model = load_model(m.run).eval()
    head = m.extra if "--decode-head" in m.eval_flags else None
    res = evaluate_keyframes(model, data, num_episodes=episodes, starts=starts, steps=steps, seed=seed,
                             reference=reference, decode_head=head)
    return {"command": "claims openloop", "method": m.key, "kind": method_of(model.config), "checkpoint": m.run,
            "decode_head": head, "data": str(data), **res}


def openloop_missing(methods: tuple[Method, ...], rows: list[str], data: str, episodes: int, starts: int, seed: int,
                     steps: int, eval_dir: str, force: bool = False) -> int:
    """``claims openloop``: a JSON per trained row of ``rows`` that has none (every such row with ``force``); the
    keyframe times are the ``wam`` row's of ``methods``."""
    try:
        reference = reference_keyframes(methods)
    except (OSError, ValueError, KeyError) as e:
        print(f"python -m action_images.claims openloop: the world action model row sets the keyframe times: {e}",
              file=sys.stderr)
        return 2
    for m in (m for m in methods if m.key in rows):
        out = Path(eval_dir) / f"{m.key}_openloop.json"
        if skip := _skip_reason(m):
            print(f"skipping {m.key}: {skip}", file=sys.stderr)
            continue
        if out.exists() and not force:
            print(f"skipping {m.key}: {out} exists (--force measures it again)", file=sys.stderr)
            continue
        if "--policy-cameras" in m.eval_flags:       # every row's windows show the same two views
            print(f"skipping {m.key}: its setting is the views the policy sees ({m.eval_flags}); the open-loop "
                  "windows show every row the same two", file=sys.stderr)
            continue
        print(f"open loop: {m.key} ({m.run})", file=sys.stderr)
        t0 = time.perf_counter()
        res = measure_openloop(m, data, episodes, starts, seed, steps, reference)
        res.update(seconds=time.perf_counter() - t0, environment=environment())
        atomic_write_json(out, json_safe(res))
        print(f"{m.key}: {res['pos_err_cm_median']:.2f} cm (holding still {res['still_baseline_cm_median']:.2f} cm)"
              f" -> {out}", file=sys.stderr)
    return 0
