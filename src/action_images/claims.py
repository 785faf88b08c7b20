"""The claims table: every method trained on the same random-rig demos, evaluated closed loop from the training rig
distribution, from held-out rigs and from a fixed camera pair none of them saw, and written to ``docs/claims.md``.

    python -m action_images.claims commands --episodes 20 --seed 31337     # print the training and eval commands
    python -m action_images.claims train                                   # train the rows that are missing
    python -m action_images.claims run --episodes 20 --seed 31337          # run the evaluations that are missing
    python -m action_images.claims openloop --data data/rig8_val_heldout --episodes 40 --starts 2 --seed 0
    python -m action_images.claims archive                                 # copy results to bench/results/claims
    python -m action_images.claims archive --rows wam_ctx_all,bc_all       # only these rows
    python -m action_images.claims table --results bench/results/claims --out docs/claims.md

``make claims`` runs all six. ``table`` reads the run folders and ``EVAL_DIR`` by default; with ``--results`` it
reads the copies ``archive`` keeps under version control (``RESULTS_DIR``: each evaluation's metrics as
``<key>_<condition>.json``, each open loop as ``openloop_<key>.json``, each run's parameters, steps and minutes in
``runs.json``), so a fresh checkout regenerates the published table without a run folder. A method whose run directory is missing is listed as "not trained"; a condition
that was not evaluated as "not measured": the table never invents a number. Success rates carry 95 % Wilson
intervals; latency is per replanning step on this machine (``bench policy`` measures it alone).

``openloop`` scores every trained row open loop on held-out demos (:mod:`action_images.baselines.keyframes`): the
same windows for every row, each row's predicted keyframes compared at the world action model's keyframe times
(control steps ahead) with the true poses, against holding the current pose. One JSON per row,
``EVAL_DIR/<key>_openloop.json``; a row whose JSON exists is skipped unless ``--force``. ``train``, ``run`` and
``openloop`` are carried out by :mod:`action_images.claims_runner`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, atomic_write_text, read_jsonl
from action_images.wam import weights_header


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    recipe: str            # recipe file the run is trained from
    run: str               # run directory (the checkpoint evaluated)
    train_flags: str = ""  # flags added to ``action-images train --config RECIPE``
    eval_flags: str = ""   # flags added to every ``action-images eval`` of this row
    train_cmd: str = ""    # the training command when it is not ``action-images train`` (e.g. a decoding head)
    extra: str = ""        # a folder the row needs beside ``run`` (trained by ``train_cmd``)


HEAD = "runs/rig8-head"
METHODS = (
    Method("wam", "action images: world action model (cpu-small), geometric decode", "recipes/rig8-quick.json",
           "runs/rig8-quick"),
    Method("wam_head", "ablation: the same model, a learned decoding head instead of triangulation",
           "recipes/rig8-quick.json", "runs/rig8-quick", eval_flags=f"--decode-head {HEAD}",
           train_cmd=f"python -m action_images.decode_head train --checkpoint runs/rig8-quick --data data/rig8 "
                     f"--out {HEAD} --minutes 12", extra=HEAD),
    Method("wam_policy", "ablation: the same model trained on the policy job only (no four-job mix)",
           "recipes/rig8-quick.json", "runs/rig8-policy", "--task-mix policy=1"),
    Method("tokens", "ablation: the same video backbone predicting action tokens instead of action images",
           "recipes/rig8-tokens.json", "runs/rig8-tokens"),
    Method("bc", "image behaviour cloning (regression of the pose chunk)", "recipes/rig8-bc.json", "runs/rig8-bc"),
    Method("dp", "image Diffusion Policy (flow matching over the pose chunk)", "recipes/rig8-dp.json",
           "runs/rig8-dp"),
    Method("wam_ctx", "action images + context encoder (a CNN on the current frame, `--context-channels 16`)",
           "recipes/rig8-ctx.json", "runs/rig8-ctx"),
    # every view of each rig at test time (the rigs' 4; left + top stays 2): both fuse any number of views
    Method("wam_ctx_all", "the same 46-minute checkpoint seeing every rig view at test time (`--policy-cameras all`)",
           "recipes/rig8-ctx.json", "runs/rig8-ctx", eval_flags="--policy-cameras all"),
    Method("bc_all", "image behaviour cloning, its 60-minute recipe trained again (on the demos as collected again), "
           "seeing every rig view at test time (`--policy-cameras all`)", "recipes/rig8-bc.json", "runs/rig8-bc",
           eval_flags="--policy-cameras all"),
    Method("tokens_ctx", "ablation: action tokens, the same backbone with the same context encoder",
           "recipes/rig8-tokens-ctx.json", "runs/rig8-tokens-ctx"),
    # the same methods at three times the budget (3 hours of this CPU; the fair fight at a longer budget)
    Method("wam_3h", "world action model (cpu-small), 3-hour recipe", "recipes/rig8.json", "runs/rig8"),
    Method("wam_ctx_3h", "action images + context encoder, 3-hour recipe", "recipes/rig8-ctx-3h.json",
           "runs/rig8-ctx-3h"),
    Method("wam_ctx_3h_all", "the same 3-hour checkpoint seeing every rig view at test time (`--policy-cameras "
           "all`: the rigs' 4 views; left + top stays 2)", "recipes/rig8-ctx-3h.json", "runs/rig8-ctx-3h",
           eval_flags="--policy-cameras all"),
    Method("wam_ctx_anneal", "action images + context encoder, the 3-hour recipe then an annealing stage "
           "(`recipes/rig8-ctx-anneal.json`)", "recipes/rig8-ctx-anneal.json", "runs/rig8-ctx-anneal"),
    Method("wam_ctx_recover", "action images + context encoder, the 3-hour recipe then a recovery stage: 2,000 "
           "steps with demos whose first grasp misses (`recipes/rig8-ctx-recover.json`)",
           "recipes/rig8-ctx-recover.json", "runs/rig8-ctx-recover"),
    Method("wam_ctx_recover_noise", "action images + context encoder, the 3-hour recipe then a longer recovery stage: "
           "5,000 steps with missed-grasp demos whose executed targets carry noise "
           "(`recipes/rig8-ctx-recover-noise.json`)", "recipes/rig8-ctx-recover-noise.json",
           "runs/rig8-ctx-recover-noise"),
    Method("wam_ctx_recover_noise_long", "action images + context encoder, the 3-hour recipe then the same noisy "
           "recovery stage at 6,500 steps (`recipes/rig8-ctx-recover-noise-long.json`)",
           "recipes/rig8-ctx-recover-noise-long.json", "runs/rig8-ctx-recover-noise-long"),
    Method("wam_ctx_recover_noise_9k", "action images + context encoder, the 3-hour recipe then the same noisy "
           "recovery stage at 9,000 steps on two threads (`recipes/rig8-ctx-recover-noise-9k.json`)",
           "recipes/rig8-ctx-recover-noise-9k.json", "runs/rig8-ctx-recover-noise-9k"),
    Method("wam_ctx_recover_noise_9k_all", "the same 9,000-step checkpoint seeing every rig view at test time "
           "(`--policy-cameras all`: the rigs' 4 views; left + top stays 2)", "recipes/rig8-ctx-recover-noise-9k.json",
           "runs/rig8-ctx-recover-noise-9k", eval_flags="--policy-cameras all"),
    Method("wam_ctx_decay", "action images + context encoder, the quick recipe then a decaying stage to the 3-hour "
           "step count (`recipes/rig8-ctx-decay.json`)", "recipes/rig8-ctx-decay.json", "runs/rig8-ctx-decay"),
    Method("bc_3h", "image behaviour cloning, 3-hour recipe", "recipes/rig8-bc-3h.json", "runs/rig8-bc-3h"),
    Method("bc_3h_all", "image behaviour cloning, its 3-hour recipe trained again (on the demos as collected again), "
           "seeing every rig view at test time (`--policy-cameras all`)", "recipes/rig8-bc-3h.json", "runs/rig8-bc-3h",
           eval_flags="--policy-cameras all"),
    Method("dp_3h", "image Diffusion Policy, 3-hour recipe", "recipes/rig8-dp-3h.json", "runs/rig8-dp-3h"),
)
# condition -> (column title, eval flags)
CONDITIONS: dict[str, tuple[str, str]] = {
    "train_rigs": ("training rig distribution (new draws)", "--rig-distribution train"),
    "heldout_rigs": ("held-out rigs", "--rig-distribution heldout"),
    "left_top": ("fixed pair left + top (never seen)", "--cameras left,top"),
}
EVAL_DIR = "runs/claims"
RESULTS_DIR = "bench/results/claims"
RUNS_FILE = "runs.json"     # RESULTS_DIR's record of each row's training run: {key: {params_millions, steps, ...}}
OPENLOOP_DATA = "data/rig8_val_heldout"
OPENLOOP_COLUMN = "open-loop keyframe error (held-out demos)"
# equal in every row: the windows' settings, and what holding still scores on them (a dataset of the same name
# collected again holds other windows, and scores otherwise)
OPENLOOP_SAME = ("data", "episodes", "starts", "seed", "steps", "views", "keyframe_steps", "still_baseline_cm_median")


def train_command(m: Method) -> str:
    base = f"action-images train --config {m.recipe} --out {m.run} --collect-missing {m.train_flags}".strip()
    return f"{base} && {m.train_cmd}" if m.train_cmd else base


def eval_command(m: Method, condition: str, episodes: int, seed: int, out_dir: str = EVAL_DIR) -> str:
    flags = " ".join(f for f in (CONDITIONS[condition][1], m.eval_flags) if f)
    return (f"action-images eval --checkpoint {m.run} --tasks all --episodes {episodes} --seed {seed} {flags} "
            f"--sampler-steps 6 --videos 1 --jobs 2 --no-progress --out {out_dir}/{m.key}_{condition}")


def openloop_command(data: str, episodes: int, starts: int, seed: int, steps: int = 6,
                     eval_dir: str = EVAL_DIR) -> str:
    return (f"python -m action_images.claims openloop --data {data} --episodes {episodes} --starts {starts} "
            f"--seed {seed} --sampler-steps {steps} --eval-dir {eval_dir}")


def trained(m: Method) -> bool:
    """The row's checkpoint (and its extra folder) exist."""
    return (Path(m.run) / "model.safetensors").exists() and (not m.extra
                                                               or (Path(m.extra) / "model.safetensors").exists())


def run_progress(run: Path) -> tuple[int | None, int | None]:
    """(the last logged step, the recipe's step count) of a run folder; None where it cannot be read."""
    try:
        want = json.loads((run / "train_config.json").read_text())["optim"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        want = None
    try:
        at = read_jsonl(run / "log.jsonl")[-1]["step"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        at = None
    return at, want


def finished(run: Path) -> bool:
    """The run reached its recipe's step count (``train_config.json``'s ``optim.steps``; a run without one, or
    without a log, counts as finished: its export is what there is)."""
    at, want = run_progress(run)
    return want is None or at is None or at >= want


def ready(m: Method) -> bool:
    """The row's model is trained to its recipe's end (a run still training exports its weights at every
    checkpoint, so ``model.safetensors`` alone does not say it is done)."""
    return trained(m) and finished(Path(m.run))


def _still_training(m: Method) -> str:
    at, want = run_progress(Path(m.run))
    return (f"{m.run} is still training (step {at} of {want}); finish it with "
            f"`{train_command(m).split(' && ')[0]} --resume`")


def _metrics(path: Path, episodes: int | None = None, seed: int | None = None) -> dict[str, Any] | None:
    """An evaluation folder's metrics, or None when there is none; ``ValueError`` when it ran other settings."""
    return _metrics_file(path / "metrics.json", episodes, seed)


def _metrics_file(path: Path, episodes: int | None = None, seed: int | None = None) -> dict[str, Any] | None:
    """A metrics JSON, or None when there is none; ``ValueError`` when it ran other settings."""
    try:
        m = json.loads(path.read_text())
    except OSError:
        return None
    except ValueError:
        raise ValueError(f"{path}: not JSON; remove it to measure it again") from None
    s = m.get("settings", {})
    for key, want in (("episodes", episodes), ("seed", seed)):
        if want is not None and s.get(key) != want:
            raise ValueError(f"{path} ran {key} {s.get(key)!r}, not {want}; remove it to re-run it or pass the same "
                             "--episodes / --seed")
    return m


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _cell(m: dict[str, Any] | None) -> str:
    if m is None:
        return "not measured"
    ov = m["overall"]
    lo, hi = ov["success_ci95"]
    return f"**{ov['successes']}/{ov['episodes']}** = {_pct(ov['success_rate'])} ({_pct(lo)}–{_pct(hi)})"


def _run_facts(run: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Parameters, steps and minutes of a training run (from its files); a run started ``--init-from`` another
    (its ``train_config.json``'s ``model.init_from``) adds that run's steps and minutes, so a two-stage recipe
    counts its whole training."""
    facts: dict[str, Any] = {"params": None, "steps": None, "minutes": None}
    try:
        facts["params"] = sum(math.prod(shape) for shape in weights_header(run / "model.safetensors").values())
    except ValueError:                     # no run yet
        pass
    try:
        rows = read_jsonl(run / "log.jsonl")
        facts["steps"] = rows[-1]["step"]
        # each invocation (a --resume) restarts the clock: add up the last time of every stretch
        total, prev = 0.0, 0.0
        for r in rows:
            if r["elapsed_s"] < prev:
                total += prev
            prev = r["elapsed_s"]
        facts["minutes"] = (total + prev) / 60
    except (ValueError, IndexError, KeyError):
        pass
    try:
        parent = json.loads((run / "train_config.json").read_text())["model"].get("init_from")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        parent = None
    if parent and facts["steps"] is not None and Path(parent).resolve() not in _seen:
        before = _run_facts(Path(parent), (*_seen, run.resolve()))
        if before["steps"] is None or before["minutes"] is None:
            raise ValueError(f"{run} started from {parent}, whose log.jsonl is missing: its training is not counted")
        facts["steps"] += before["steps"]
        facts["minutes"] += before["minutes"]
    return facts


def row_facts(m: Method, results: str | None = None) -> dict[str, Any] | None:
    """A trained row's ``params_millions`` (model plus its extra folder), ``steps`` and ``minutes``: from its run
    folders, or with ``results`` from that folder's ``runs.json``; None when the row is not trained (or not
    archived)."""
    if results is not None:
        try:
            return json.loads((Path(results) / RUNS_FILE).read_text())["rows"].get(m.key)
        except (OSError, ValueError, KeyError):
            return None
    if not trained(m) or not finished(Path(m.run)):
        return None
    facts = _run_facts(Path(m.run))
    if facts["params"] is None:
        return None
    params = facts["params"] + ((_run_facts(Path(m.extra))["params"] or 0) if m.extra else 0)
    return {"params": params, "params_millions": round(params / 1e6, 4), "steps": facts["steps"],
            "minutes": facts["minutes"], "source": m.run + (f" + {m.extra}" if m.extra else "")}


def _metrics_path(m: Method, condition: str, eval_dir: str, results: str | None) -> Path:
    if results is not None:
        return Path(results) / f"{m.key}_{condition}.json"
    return Path(eval_dir) / f"{m.key}_{condition}" / "metrics.json"


def _openloop_path(m: Method, eval_dir: str, results: str | None) -> Path:
    if results is not None:
        return Path(results) / f"openloop_{m.key}.json"
    return Path(eval_dir) / f"{m.key}_openloop.json"


def archive(eval_dir: str = EVAL_DIR, results: str = RESULTS_DIR, methods: tuple[Method, ...] = METHODS) -> list[Path]:
    """Copy every trained row's facts, evaluations and open loop from the run folders and ``eval_dir`` into
    ``results`` (the layout ``table(results=...)`` reads); rows and files that do not exist here are left as they
    are in ``results``. Returns the files written."""
    out, written = Path(results), []
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / RUNS_FILE
    try:
        runs = json.loads(runs_path.read_text())
    except OSError:
        runs = {}
    except ValueError:
        raise ValueError(f"{runs_path} is not JSON: archiving would drop its rows; restore it first") from None
    rows = dict(runs.get("rows", {}))
    for m in methods:
        facts = row_facts(m)
        if facts is None:
            continue
        rows[m.key] = facts
        for c in CONDITIONS:
            src, dst = _metrics_path(m, c, eval_dir, None), _metrics_path(m, c, eval_dir, results)
            if src.exists():
                atomic_write_text(dst, src.read_text())
                written.append(dst)
        src, dst = _openloop_path(m, eval_dir, None), _openloop_path(m, eval_dir, results)
        if src.exists():
            other = _openloop_mismatch(json.loads(src.read_text()), results, m.key)
            if other:
                print(f"claims archive: not copying {src}: it ran other windows than {other} "
                      f"({', '.join(OPENLOOP_SAME)} must match)", file=sys.stderr)
                continue
            atomic_write_text(dst, src.read_text())
            written.append(dst)
    runs = {"comment": runs.get("comment", "Each claims row's training run: parameters (millions, with its extra "
                                           "folder), steps and minutes, as `claims archive` read them from the run "
                                           "folder named in source."), "rows": rows}
    atomic_write_json(runs_path, runs)
    return [runs_path, *written]


def _openloop_mismatch(result: dict[str, Any], results: str, key: str) -> str:
    """The name of an archived open-loop JSON of another row that ran other windows than ``result`` ('' if none)."""
    for path in sorted(Path(results).glob("openloop_*.json")):
        if path.name == f"openloop_{key}.json":
            continue
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if any(theirs.get(k) != result.get(k) for k in OPENLOOP_SAME):
            return path.name
    return ""


def openloop_results(eval_dir: str = EVAL_DIR, methods: tuple[Method, ...] = METHODS,
                     results: str | None = None) -> dict[str, dict[str, Any]]:
    """The rows' open-loop JSONs that exist (``eval_dir/<key>_openloop.json``, or ``results/openloop_<key>.json``
    with ``results``); ``ValueError`` when two ran other windows."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        path = _openloop_path(m, eval_dir, results)
        try:
            out[m.key] = json.loads(path.read_text())
        except OSError:
            continue
        except ValueError:
            raise ValueError(f"{path}: not JSON; remove it to measure it again") from None
        first_key, first = next(iter(out.items()))
        diff = [k for k in OPENLOOP_SAME if out[m.key].get(k) != first.get(k)]
        if diff:
            raise ValueError(f"{path} ran other {', '.join(diff)} than {first_key}_openloop.json; re-run it with "
                             "claims openloop --force")
    return out


def openloop_caption(results: dict[str, dict[str, Any]]) -> str:
    """The sentence under the table's caption saying how the open-loop column was measured ('' without results)."""
    if not results:
        return ""
    r = next(iter(results.values()))
    steps = ", ".join(str(t) for t in r["keyframe_steps"])
    return (f"The open-loop column: median keyframe position error over the {r['keyframes']} keyframes of "
            f"{r['windows']} held-out windows ({len(r['episodes'])} episodes × {r['starts']} start frames of "
            f"`{r['data']}`, views {' + '.join(r['views'])}, seed {r['seed']}, {r['steps']} sampler steps), every "
            f"method compared at the same {steps} control steps ahead; holding the current pose (\"nothing "
            f"moves\") scores {r['still_baseline_cm_median']:.1f} cm on the same windows.")


LATENCY_CAPTION = ("The latency column: the mean time per replanning step over the training rig distribution's "
                   "episodes (the first condition measured), under whatever ran beside that evaluation on the "
                   "shared 2 cores (other evaluations, training runs), so it ranks the rows only roughly; "
                   "`action-images bench policy` measures latency under control.")


def _openloop_cell(r: dict[str, Any] | None) -> str:
    return "not measured" if r is None else f"{r['pos_err_cm_median']:.1f} cm"


def table(eval_dir: str = EVAL_DIR, methods: tuple[Method, ...] = METHODS, episodes: int | None = None,
          seed: int | None = None, results: str | None = None) -> str:
    """The markdown claims table (and the per-task breakdown) from the run and evaluation folders, or from the
    archived copies in ``results``; every cell must come from an evaluation with ``episodes`` per task and ``seed``
    (when given); the open-loop column from the rows' open-loop JSONs (:func:`openloop_results`)."""
    openloop = openloop_results(eval_dir, methods, results)
    head = (["method", "parameters", "training"] + [CONDITIONS[c][0] for c in CONDITIONS]
            + [OPENLOOP_COLUMN, "latency / replan"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per_task: list[str] = []
    for m in methods:
        facts = row_facts(m, results)
        if facts is None:
            lines.append(f"| {m.name} | – | not trained | " + " | ".join(["–"] * (len(CONDITIONS) + 2)) + " |")
            continue
        cells, lat = [], None
        for c in CONDITIONS:
            res = _metrics_file(_metrics_path(m, c, eval_dir, results), episodes, seed)
            cells.append(_cell(res))
            if res is not None:
                lat = lat or res["overall"]["latency"]["mean_ms"]
                tasks = res["tasks"]
                per_task.append(f"| {m.key} | {CONDITIONS[c][0]} | " + " | ".join(
                    f"{t['successes']}/{t['episodes']}" for t in tasks.values()) + " |")
                task_names = list(tasks)
        train = f"{facts['steps']} steps, {facts['minutes']:.0f} min" if facts["steps"] else "–"
        lines.append(f"| {m.name} | {facts['params_millions']:.2f} M | {train} | " + " | ".join(cells)
                     + f" | {_openloop_cell(openloop.get(m.key))} | {'–' if lat is None else f'{lat:.0f} ms'} |")
    out = "\n".join(lines) + "\n"
    if per_task:
        out += ("\nPer task (successes / episodes):\n\n| method | cameras | " + " | ".join(task_names) + " |\n|"
                + "---|" * (2 + len(task_names)) + "\n" + "\n".join(per_task) + "\n")
    return out


def _named_rows(text: str | None) -> tuple[list[str], list[str]]:
    """``--rows``: the row keys named (every row when none is), and those that name no row."""
    keys = [m.key for m in METHODS]
    rows = keys if text is None else list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    return rows, [k for k in rows if k not in keys]


def _flag_error(args: argparse.Namespace) -> str:
    """The first bad flag of ``args``, as one line ('' when all are good); checked before any work starts."""
    keys = [m.key for m in METHODS]
    rows, bad = _named_rows(args.rows)
    if args.episodes < 1:
        return f"--episodes must be >= 1; got {args.episodes}"
    if args.seed < 0:
        return f"--seed must be >= 0; got {args.seed}"
    for flag, value in (("--starts", args.starts), ("--sampler-steps", args.sampler_steps),
                        ("--threads", args.threads)):
        if value < 1:
            return f"{flag} must be >= 1; got {value}"
    if args.rows is not None:
        if args.what == "table":
            return "--rows: the table always shows every row (archive or measure fewer rows instead)"
        if bad:
            return f"--rows: no row is named {', '.join(bad)}; the rows are {', '.join(keys)}"
        if not rows:
            return f"--rows: name at least one row of {', '.join(keys)}"
    if args.what == "archive" or (args.what == "table" and args.results is not None):
        res = Path(args.results or RESULTS_DIR)
        if res.exists() and not res.is_dir():
            return f"--results {res}: not a folder"
        runs = res / RUNS_FILE
        if args.what == "table" and not runs.is_file():
            return f"--results {res}: no {RUNS_FILE} (an archive written by `claims archive`)"
        if runs.is_file():
            try:
                json.loads(runs.read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):
                return (f"--results {res}: {runs} is not a claims archive index (JSON with \"rows\"); restore "
                        "it, e.g. with git checkout")
    if args.out is not None and Path(args.out).is_dir():
        return f"--out {args.out}: is a folder; name the markdown file"
    return ""


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m action_images.claims", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("commands", "train", "run", "openloop", "archive", "table"))
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task and condition (default 20); openloop: held-out episodes (default 40)")
    p.add_argument("--seed", type=int, default=None,
                   help="evaluation seed (default 31337, never tuned on); openloop: window and noise seed (default 0)")
    p.add_argument("--eval-dir", default=EVAL_DIR)
    p.add_argument("--out", default=None, help="table: write the markdown table into this file's marked block")
    p.add_argument("--results", default=None,
                   help=f"archive: the folder to copy into (default {RESULTS_DIR}); table: read this archive instead "
                        "of the run folders and --eval-dir")
    p.add_argument("--data", default=OPENLOOP_DATA, help=f"openloop: held-out dataset (default {OPENLOOP_DATA})")
    p.add_argument("--starts", type=int, default=2, help="openloop: start frames per episode (default 2)")
    p.add_argument("--sampler-steps", type=int, default=6, help="openloop: sampler steps (default 6)")
    p.add_argument("--rows", default=None,
                   help="commands, train, run, openloop, archive: comma separated row keys (default: every row; "
                        "archive copies only these rows, leaving the others' archived results as they are)")
    p.add_argument("--force", action="store_true", help="openloop: measure rows whose JSON exists again")
    p.add_argument("--threads", type=int, default=1, help="openloop: torch threads (default 1)")
    args = p.parse_args(argv)
    if args.episodes is None:
        args.episodes = 40 if args.what == "openloop" else 20
    if args.seed is None:
        args.seed = 0 if args.what == "openloop" else 31337
    error = _flag_error(args)
    if error:
        print(f"python -m action_images.claims {args.what}: {error}", file=sys.stderr)
        return 2
    rows = _named_rows(args.rows)[0]
    named = tuple(m for m in METHODS if m.key in rows)
    if args.what == "commands":
        for m in named:
            print(train_command(m))
        for m in named:
            for c in CONDITIONS:
                print(eval_command(m, c, args.episodes, args.seed, args.eval_dir))
        print(openloop_command(OPENLOOP_DATA, 40, 2, 0, 6, args.eval_dir))
        return 0
    if args.what == "archive":
        written = archive(args.eval_dir, args.results or RESULTS_DIR, named)
        print(f"archived {len(written)} files into {args.results or RESULTS_DIR}", file=sys.stderr)
        return 0
    if args.what in ("train", "run", "openloop"):
        from action_images import claims_runner          # imported here: the runner imports this module
        if args.what == "train":
            return claims_runner.train_missing(named)
        if args.what == "run":
            return claims_runner.run_missing(named, args.episodes, args.seed, args.eval_dir)
        import torch
        torch.set_num_threads(args.threads)
        return claims_runner.openloop_missing(METHODS, rows, args.data, args.episodes, args.starts, args.seed,
                                              args.sampler_steps, args.eval_dir, args.force)
    try:
        text = table(args.eval_dir, METHODS, episodes=args.episodes, seed=args.seed, results=args.results)
    except ValueError as e:
        print(f"python -m action_images.claims: {e}", file=sys.stderr)
        return 2
    caption = openloop_caption(openloop_results(args.eval_dir, METHODS, args.results))
    text = (f"Closed loop, {args.episodes} episodes per task and camera condition, seed {args.seed}; success "
            f"with 95 % Wilson intervals.{' ' + caption if caption else ''} {LATENCY_CAPTION}\n\n" + text)
    if args.out:
        path = Path(args.out)
        doc = path.read_text() if path.exists() else "<!-- claims table -->\n<!-- /claims table -->\n"
        a, b = "<!-- claims table -->", "<!-- /claims table -->"
        if a not in doc or b not in doc:
            print(f"{path}: no '{a}' ... '{b}' block to fill", file=sys.stderr)
            return 2
        pre, rest = doc.split(a, 1)
        try:
            atomic_write_text(path, pre + a + "\n" + text + rest[rest.index(b):])
        except OSError as e:
            print(f"--out {path}: could not write it ({e.strerror or e})", file=sys.stderr)
            return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
