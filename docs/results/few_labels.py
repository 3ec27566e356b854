"""The few-labels study (docs/results/few-labels.md): test IoU against how much is labelled, and one
active round (`dcn-ray suggest` against random slices).

    python docs/results/few_labels.py prepare --work ../few-labels-work
    python docs/results/few_labels.py run --work ../few-labels-work --out docs/results/few-labels.jsonl --workers 2
    python docs/results/few_labels.py summary --out docs/results/few-labels.jsonl

``prepare`` writes the stack (pool | validation | test) and its truth into ``--work`` (outside the
repository); each labels layer is made there when a run first needs it. ``run`` trains each arm with the settings of ``jobs/epfl-few-labels.yaml``
(without Ray, one run per worker process), scores its chosen checkpoint once on the test slices and
appends one JSON line per run to ``--out``: a killed run continues where it stopped. The curve and
scribble arms run first; each replicate's active arm then asks ``suggest`` (the model trained on its
first k slices) for m more. ``summary`` prints the tables and the pre-registered verdicts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "epfl-few-labels.yaml"
#: The EPFL subset: beside the clone (../shared), or two levels up from a worktree; --epfl overrides.
EPFL_PLACES = [REPO.parent / "shared" / "datasets" / "epfl-mito", REPO.parents[1] / "shared" / "datasets" / "epfl-mito"]
EPFL = next((place for place in EPFL_PLACES if place.is_dir()), EPFL_PLACES[0])
EPFL_VAL = (17, 18, 19, 20)  # positions in train-images.tif of the original slices 89, 90, 91, 105
POOL, VAL, TEST = 23, 4, 5
COUNTS = (1, 3, 7, 14, 23)  # labelled pool slices; 23 = every one (the full-label reference)
FRACTIONS = (0.01, 0.0435, 0.13)  # scribbled share of the pool's pixels (0.0435 = one slice's worth)
K, M = 3, 4  # the active round: k slices, then m more chosen by suggest (random: the next m drawn)
SUBSET_SEED = 1000  # replicate r labels the first n slices of permutation(default_rng(1000 + r))
REPLICATES = 10


def permutation(replicate: int) -> list[int]:
    return [int(z) for z in np.random.default_rng(SUBSET_SEED + replicate).permutation(POOL)]


def prepare(work: Path, epfl: Path = EPFL) -> None:
    """The stack and its truth, and replicate 0's layers (the sweep example of the job file)."""
    import tifffile

    images = [tifffile.imread(epfl / f"{s}-images.tif") for s in ("train", "test")]
    masks = [tifffile.imread(epfl / f"{s}-mitochondria.tif") == 255 for s in ("train", "test")]
    order = [i for i in range(len(images[0])) if i not in EPFL_VAL] + list(EPFL_VAL)
    stack, truth = np.concatenate([images[0][order], images[1]]), np.concatenate([masks[0][order], masks[1]])
    assert len(stack) == POOL + VAL + TEST
    (work / "labels").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(work / "images.tif", stack)
    np.save(work / "truth.npy", truth)
    for n in COUNTS:
        layer_file(work, "slices", n, 0)


def layer_file(work: Path, arm: str, level: float, replicate: int) -> Path:
    """The labels layer of a curve or scribble arm (made when missing): 1 mitochondrion, 2 background,
    0 unpainted; validation and test slices always painted whole (they are scored)."""
    import tifffile

    from dcn_ray.core.scribbles import painted_slices, scribbles

    path = work / "labels" / f"{arm}-{level}-r{replicate}.tif"
    if path.exists():
        return path
    truth = np.load(work / "truth.npy")
    scored = list(range(POOL, POOL + VAL + TEST))
    if arm == "slices":
        layer = painted_slices(truth, permutation(replicate)[: int(level)] + scored)
    else:
        layer = scribbles(truth, float(level), seed=replicate, slices=range(POOL))
        layer[scored] = painted_slices(truth, scored)[scored]
    partial = path.with_name(f".{path.name}.{multiprocessing.current_process().pid}")
    tifffile.imwrite(partial, layer, compression="zlib")
    partial.replace(path)
    return path


def arms(replicates: int) -> list[dict]:
    """Every run: the curve and the scribbles first, then the active arm (which needs slices-K)."""
    first = [{"arm": "slices", "level": n, "replicate": r} for r in range(replicates) for n in COUNTS]
    first += [{"arm": "scribbles", "level": f, "replicate": r} for r in range(replicates) for f in FRACTIONS]
    return first + [{"arm": "suggest", "level": K + M, "replicate": r} for r in range(replicates)]


def key(run: dict) -> tuple:
    return run["arm"], float(run["level"]), run["replicate"]


def train_arm(task: tuple[dict, str, int | None]) -> dict:
    """Train one arm; its record (the model of slices-K kept for the active round)."""
    run, work_text, steps = task
    import tifffile
    import torch
    import yaml

    from dcn_ray.core import checkpoint
    from dcn_ray.core.dataset import load_data
    from dcn_ray.core.partial import labelled_slices
    from dcn_ray.core.train import score_test_split, train
    from dcn_ray.job.config import job_from_dict

    work = Path(work_text)
    if run["arm"] == "suggest":
        labels = suggest_layer(work, run["replicate"])
    else:
        labels = layer_file(work, run["arm"], run["level"], run["replicate"])
    raw = yaml.safe_load(JOB.read_text())
    raw["data"] |= {"images": str(work / "images.tif"), "labels": str(labels)}
    raw["train"]["seed"] = run["replicate"]
    if steps:  # a smoke test of the driver only: never the study
        raw["train"] |= {"steps": steps, "eval_every": steps}
    job = job_from_dict(raw)
    dataset = load_data(job.data)
    torch.set_num_threads(job.train.threads or 1)
    started = time.perf_counter()
    result = train(job.model, job.train, dataset, kernels=(4, 8, 16), device=torch.device("cpu"))
    model = checkpoint.model_from_payload(result.model)
    test = score_test_split(model, dataset, torch.device("cpu"))
    if run["arm"] == "slices" and run["level"] == K:
        checkpoint.save(result.model, work / "models" / f"slices-{K}-r{run['replicate']}.pt")
    layer = tifffile.imread(labels)[:POOL] != 0
    return {
        **run,
        "labelled_slices": [int(z) for z in np.flatnonzero(labelled_slices(layer, POOL))],
        "labelled_pixels": float(layer.mean()),
        "val_iou": result.best_iou,
        "best_step": result.best_step,
        "last_val_iou": result.history[-1]["val_iou"],
        "test_iou": test["test_iou"],
        "test_dice": test["test_dice"],
        "steps": result.steps,
        "wall_s": time.perf_counter() - started,
    }


def suggest_layer(work: Path, replicate: int) -> Path:
    """slices-K's layer plus the M pool slices `suggest` ranks highest (its model: slices-K, same replicate)."""
    import tifffile

    from dcn_ray.core.scribbles import painted_slices
    from dcn_ray.predict.suggest import SuggestOptions, suggest
    from dcn_ray.track.sources import load_source

    start = layer_file(work, "slices", K, replicate)
    out = work / "suggest" / f"r{replicate}"
    if not (out / "ranking.json").exists():
        loaded = load_source(str(work / "models" / f"slices-{K}-r{replicate}.pt"))
        suggest(loaded, work / "images.tif", out, SuggestOptions(top=1), labels=start, device="cpu")
    ranking = json.loads((out / "ranking.json").read_text())["slices"]
    chosen = [row["z"] for row in ranking if row["z"] < POOL][:M]
    layer = tifffile.imread(start)
    layer[chosen] = painted_slices(np.load(work / "truth.npy"), chosen)[chosen]
    path = work / "labels" / f"suggest-{K + M}-r{replicate}.tif"
    tifffile.imwrite(path, layer, compression="zlib")
    return path


def run_all(work: Path, out: Path, replicates: int, workers: int, steps: int | None) -> None:
    done = {key(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    todo = [run for run in arms(replicates) if key(run) not in done]
    (work / "models").mkdir(parents=True, exist_ok=True)
    for phase in (
        [r for r in todo if r["arm"] != "suggest"],
        [r for r in todo if r["arm"] == "suggest"],
    ):
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for record in pool.imap_unordered(train_arm, [(run, str(work), steps) for run in phase]):
                with out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"{record['arm']} {record['level']} r{record['replicate']}: test IoU {record['test_iou']:.4f}")


def summary(records: list[dict], target: float = 0.95) -> str:
    from dcn_ray.core.stats import mean_interval, paired_difference, sign_flip_test

    by = {key(r): r["test_iou"] for r in records}
    replicates = sorted({r["replicate"] for r in records})
    full = {r: by[("slices", float(POOL), r)] for r in replicates if ("slices", float(POOL), r) in by}
    lines = ["| labels | replicates | mean test IoU | 95 % interval | ratio to full | one-sided 95 % lower bound |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    reached = None
    for arm, levels in (("slices", COUNTS), ("scribbles", FRACTIONS), ("suggest", (K + M,))):
        for level in levels:
            values = {r: by[(arm, float(level), r)] for r in replicates if (arm, float(level), r) in by}
            if not values:
                continue
            estimate = mean_interval(list(values.values()))
            ratios = [values[r] / full[r] for r in values if r in full]
            lower = float("nan")
            if len(ratios) >= 2:
                from scipy import stats

                sd = float(np.std(ratios, ddof=1)) / np.sqrt(len(ratios))
                lower = float(np.mean(ratios) - stats.t.ppf(0.95, len(ratios) - 1) * sd)
            mean_ratio = float(np.mean(ratios)) if ratios else float("nan")
            if arm == "slices" and level < POOL and reached is None and mean_ratio >= target:
                reached = (level, lower >= target)
            name = f"{level} slice(s)" if arm == "slices" else f"scribbles {100 * level:g} %" if arm == "scribbles" else (
                f"{K} + {M} suggested")  # fmt: skip
            lines.append(
                f"| {name} | {len(values)} | {estimate.mean:.4f} | [{estimate.low:.4f}, {estimate.high:.4f}] | "
                f"{mean_ratio:.3f} | {lower:.3f} |"
            )
    lines.append(
        f"\nn*, the fewest labelled slices (of 1-14) whose mean ratio reaches {target:g}: "
        + ("none (n* > 14)" if reached is None else f"{reached[0]}" + (" (with confidence)" if reached[1] else ""))
    )
    suggested = {r: by[("suggest", float(K + M), r)] for r in replicates if ("suggest", float(K + M), r) in by}
    random = {r: by[("slices", float(K + M), r)] for r in suggested if ("slices", float(K + M), r) in by}
    if len(random) >= 2:
        paired = paired_difference({r: suggested[r] for r in random}, random)
        differences = [suggested[r] - random[r] for r in sorted(random)]
        lines.append(
            f"Active round, suggest - random ({len(random)} replicates): {paired.estimate.mean:+.4f} "
            f"[{paired.estimate.low:+.4f}, {paired.estimate.high:+.4f}], paired t p = {paired.p_value:.4f}, "
            f"sign-flip p = {sign_flip_test(differences):.4f}; per replicate "
            + ", ".join(f"{d:+.3f}" for d in differences)
        )
        low, high = paired.estimate.low, paired.estimate.high
        verdict = "supported" if low > 0 else "refuted (less than +0.05)" if high < 0.05 else "inconclusive"
        lines.append(f"Suggest beats random, by the plan: {verdict}")
    for scribbled, whole in ((0.0435, 1), (0.13, 3)):  # secondary: the same painted pixels, strokes vs slices
        pairs = {
            r: by[("scribbles", scribbled, r)] - by[("slices", float(whole), r)]
            for r in replicates
            if ("scribbles", scribbled, r) in by and ("slices", float(whole), r) in by
        }
        if len(pairs) >= 2:
            estimate = mean_interval(list(pairs.values()))
            lines.append(
                f"Scribbles {100 * scribbled:g} % - {whole} whole slice(s) ({len(pairs)} replicates): "
                f"{estimate.mean:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}]"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "run", "summary"))
    parser.add_argument("--work", type=Path, default=REPO.parent / "few-labels-work")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "few-labels.jsonl")
    parser.add_argument("--epfl", type=Path, default=EPFL, help="the EPFL mitochondria subset's folder")
    parser.add_argument("--replicates", type=int, default=REPLICATES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke-steps", type=int, help="train this many steps (a smoke test, not the study)")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.work, args.epfl)
    elif args.step == "run":
        if not (args.work / "images.tif").exists():
            prepare(args.work, args.epfl)
        run_all(args.work, args.out, args.replicates, args.workers, args.smoke_steps)
    else:
        print(summary([json.loads(line) for line in args.out.read_text().splitlines()]))


if __name__ == "__main__":
    main()
