"""What reusing Tune's trial actors saves: a trial's process start-up against one worker's, side by side.

Each trial of a sweep imports dcn-ray's trial code (torch, MLflow, Ray Tune, SciPy) before it trains. With
``reuse_actors=False`` Tune starts a fresh worker process per trial and pays that again every time; with
``True`` (what ``dcn-ray sweep`` sets) a worker that finished a trial takes the next one with the same
resources. The trainable here imports what the real trial imports and reports once, so the wall time is the
start-up alone. Both settings alternate in one run (REPEATS times each, best of each kept: these machines
are noisy); the last line is the ratio.

    python bench/actor_reuse.py [--trials 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402


def _trial(config: dict) -> None:
    import dcn_ray.tune.trial  # noqa: F401  the real trial's imports, paid once per process

    tune.report({"done": 1})


def sweep_seconds(trials: int, reuse: bool, storage: str) -> float:
    """Wall time of a sweep of ``trials`` import-only trials, two at a time."""
    start = time.perf_counter()
    tune.Tuner(
        _trial,
        param_space={"i": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    ).fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    best = {False: float("inf"), True: float("inf")}
    try:
        with tempfile.TemporaryDirectory() as storage:
            for _ in range(args.repeats):
                for reuse in (False, True):
                    seconds = sweep_seconds(args.trials, reuse, storage)
                    best[reuse] = min(best[reuse], seconds)
                    print(f"reuse_actors={reuse}: {args.trials} trials in {seconds:.1f} s")
    finally:
        ray.shutdown()
    print(f"per trial: {best[False] / args.trials:.2f} s fresh, {best[True] / args.trials:.2f} s reused")
    print(f"reused / fresh wall time: {best[True] / best[False]:.2f}")


if __name__ == "__main__":
    main()
