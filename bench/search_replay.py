"""Which search to use, replayed on a table (docs/results/search.md, pre-registered there).

A table is configurations x seeds trained once (each row: the configuration, the seed, the best
validation IoU, the test IoU of that checkpoint, the validation curve, the wall time). A strategy is
replayed against it: it asks for a configuration, pays the recorded wall time of its *selection
seeds*, is told their mean best validation IoU, and stops when its budget of trial-hours is spent.
Its pick (best mean validation IoU among the configurations it completed) is scored by its mean test
IoU on the *evaluation seeds*, which it never saw. The searchers are dcn-ray's own
(:mod:`dcn_ray.tune.search_algs`: Tune's domains, OptunaSearch + TPE, ASHAScheduler).

    python bench/search_replay.py kernels [--replicates 1000]          # the recorded ISBI kernel tables
    python bench/search_replay.py table --tracking-uri URI --experiment NAME --out table.jsonl
    python bench/search_replay.py replay table.jsonl [--replicates 1000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, median

import numpy as np

from dcn_ray.core.proposals import propose_guided
from dcn_ray.core.stats import paired_difference
from dcn_ray.job.search_config import SchedulerConfig, SearchConfig
from dcn_ray.kernels import BRANCHES, STRIDES
from dcn_ray.tune import search_algs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
METRIC = "score"
#: Suggestions per replicate at most, as a multiple of the table's size (repeats cost nothing).
MAX_SUGGESTIONS = 20


@dataclass(frozen=True)
class Row:
    best_val: float
    test: float
    wall: float = 1.0  # trial-hours are units where a table recorded no wall time
    curve: tuple[tuple[int, float], ...] = ()
    weak: str | None = None


@dataclass
class Table:
    """Configurations (ordered as their job runs them) -> seed -> row; ``values`` the job values of each."""

    name: str
    rows: dict[str, dict[int, Row]]
    values: dict[str, dict[str, object]]
    steps: int = 0
    order: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(set.intersection(*(set(seeds) for seeds in self.rows.values())))

    def space(self, trials: int, seed: int) -> SearchConfig:
        keys = list(next(iter(self.values.values())))
        choices = {key: sorted({_plain(v[key]) for v in self.values.values()}, key=str) for key in keys}
        space = {key: {"choice": [list(c) if isinstance(c, tuple) else c for c in cs]} for key, cs in choices.items()}
        return SearchConfig(algorithm="optuna", trials=trials, seed=seed, space=space)

    def config_of(self, values: dict) -> str | None:
        wanted = {k: _plain(v) for k, v in values.items()}
        for name, own in self.values.items():
            if {k: _plain(v) for k, v in own.items()} == wanted:
                return name
        return None  # a combination the table does not hold (kernel tables are not products)

    def mean(self, config: str, seeds: Sequence[int], what: str = "test") -> float:
        return fmean(getattr(self.rows[config][s], what) for s in seeds)


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value


@dataclass
class Outcome:
    tried: list[str]  # configurations run (completed or stopped), in order
    hours: list[float]  # trial-hours spent after each
    pick: str | None
    completed: int = 0


class Replay:
    """One replicate: the table, the selection seeds, the budget in trial-hours; runs and remembers."""

    def __init__(self, table: Table, selection: Sequence[int], budget: float, asha: SchedulerConfig | None = None):
        self.table, self.selection, self.budget = table, list(selection), budget
        self.asha = search_algs.scheduler(asha, metric=METRIC, mode="max", max_steps=table.steps) if asha else None
        self.told: dict[str, float] = {}
        self.eligible: dict[str, float] = {}
        self.outcome = Outcome([], [], None)
        self.spent = 0.0
        self.trial_ids = itertools.count()

    def cost(self, config: str) -> float:
        return sum(self.table.rows[config][s].wall for s in self.selection)

    @property
    def exhausted(self) -> bool:
        """Whether the budget left pays for no configuration not yet run (then the replay ends)."""
        left = self.budget - self.spent + 1e-9
        return all(c in self.told or self.cost(c) > left for c in self.table.rows)

    def run(self, config: str) -> float | None:
        """The seed mean told to the searcher; None when the budget left cannot pay for it (skipped)."""
        if config in self.told:
            return self.told[config]
        if self.spent + self.cost(config) > self.budget + 1e-9:
            return None
        values, stopped = [], False
        for seed in self.selection:
            row = self.table.rows[config][seed]
            if self.asha is None:
                values.append(row.best_val)
                self.spent += row.wall
                continue
            best, reached = self._asha_trial(row)
            values.append(best)
            stopped |= reached < self.table.steps
            self.spent += row.wall * reached / self.table.steps
        told = fmean(values)
        self.told[config] = told
        if not stopped:
            self.eligible[config] = told
        self.outcome.tried.append(config)
        self.outcome.hours.append(self.spent)
        return told

    def _asha_trial(self, row: Row) -> tuple[float, int]:
        """Feed one trial's recorded curve to Tune's ASHA: (best validation IoU so far, step reached)."""
        from ray.tune.schedulers import TrialScheduler

        trial = _Trial(f"t{next(self.trial_ids)}")
        self.asha.on_trial_add(None, trial)
        best = -math.inf
        for step, value in row.curve:
            best = max(best, value)
            result = {"step": step, METRIC: best}
            if step >= self.table.steps:
                self.asha.on_trial_complete(None, trial, result)
                return best, step
            if self.asha.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                self.asha.on_trial_remove(None, trial)
                return best, step
        self.asha.on_trial_complete(None, trial, {"step": self.table.steps, METRIC: best})
        return best, self.table.steps

    def finish(self) -> Outcome:
        self.outcome.pick = max(self.eligible, key=self.eligible.get) if self.eligible else None
        self.outcome.completed = len(self.eligible)
        return self.outcome


@dataclass
class _Trial:
    trial_id: str


# ----------------------------------------------------------------------------- the strategies


def in_order(order: Sequence[str]) -> Callable[[Replay, int], Outcome]:
    def strategy(replay: Replay, replicate: int) -> Outcome:
        for config in order:
            if replay.run(config) is None and replay.exhausted:
                break
        return replay.finish()

    return strategy


def grid(replay: Replay, replicate: int) -> Outcome:
    return in_order(replay.table.order)(replay, replicate)


def shuffled(replay: Replay, replicate: int) -> Outcome:
    order = list(replay.table.order)
    np.random.default_rng(replicate).shuffle(order)
    return in_order(order)(replay, replicate)


def random(replay: Replay, replicate: int) -> Outcome:
    """Tune's sampling of the space (the domains dcn-ray hands the seeded BasicVariantGenerator)."""
    table = replay.table
    search = table.space(len(table.rows), replicate)
    domains = search_algs.tune_space(search)
    rng = np.random.default_rng(replicate)
    for _ in range(MAX_SUGGESTIONS * len(table.rows)):
        config = table.config_of(
            search_algs.decode(search, {k: d.sample(random_state=rng) for k, d in domains.items()})
        )
        if config is None:
            continue
        replay.run(config)
        if replay.exhausted:
            break
    return replay.finish()


def tpe(replay: Replay, replicate: int, trials: int) -> Outcome:
    """Tune's OptunaSearch with dcn-ray's seeded TPE, told each configuration's seed mean."""
    table = replay.table
    search = table.space(trials, replicate)
    searcher = search_algs.search_algorithm(search, metric=METRIC, mode="max", max_concurrent=1)
    for index in range(MAX_SUGGESTIONS * len(table.rows)):
        suggestion = searcher.suggest(f"s{index}")
        config = table.config_of(search_algs.decode(search, suggestion))
        told = replay.run(config) if config is not None else min(replay.told.values(), default=0.0)
        if told is None:  # the budget left cannot pay for it: not run
            searcher.on_trial_complete(f"s{index}", None, error=True)
        else:
            searcher.on_trial_complete(f"s{index}", {METRIC: told})
        if replay.exhausted:
            break
    return replay.finish()


def guided(replay: Replay, replicate: int, steps: int, step_size: int, relative: float | None) -> Outcome:
    """The paper's rule: the reference, the weak branch by the majority of its selection seeds, its guided changes."""
    reference = "4-8-16"
    replay.budget = math.inf  # its budget is what it runs
    replay.run(reference)
    votes = Counter(replay.table.rows[reference][s].weak for s in replay.selection)
    (top, count), *rest = votes.most_common() + [(None, 0)]
    if top in BRANCHES and not (rest and rest[0][1] == count):
        weak = BRANCHES.index(top)
        size = max(1, round(relative * STRIDES[weak])) if relative else step_size
        for kernels in propose_guided((4, 8, 16), weak, steps=steps, step_size=size):
            name = "-".join(map(str, kernels))
            if name in replay.table.rows:
                replay.run(name)
    return replay.finish()


# ----------------------------------------------------------------------------- tables


def markdown_trials(path: Path, heading: str) -> list[dict[str, str]]:
    """The per-trial table under ``heading`` of a results page, as dicts by column."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    table = [line for line in itertools.takewhile(lambda text: text.startswith("|"), lines[start + 2 :])]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def kernel_table(name: str, path: Path, heading: str, order: Sequence[str] = ()) -> Table:
    rows: dict[str, dict[int, Row]] = {}
    for trial in markdown_trials(path, heading):
        if trial["status"] != "finished":
            continue
        config = trial["k1, k2, k3"].replace(", ", "-")
        rows.setdefault(config, {})[int(trial["seed"])] = Row(
            best_val=float(trial["best val IoU"]), test=float(trial["test IoU"]), weak=trial["weak branch"]
        )
    values = {c: {"model.kernels": tuple(int(k) for k in c.split("-"))} for c in rows}
    return Table(name, rows, values, order=list(order) or list(rows))


def kernel_tables() -> list[tuple[Table, dict]]:
    """Table A (isbi2012-cpu, 16 x 3) and B (isbi2012-guided, 5 x 14) with their jobs' follow-up settings."""
    import yaml

    job = yaml.safe_load((REPO / "jobs" / "isbi2012-cpu.yaml").read_text())
    order = ["-".join(map(str, k)) for k in job["sweep"]["kernels"]]
    a = kernel_table("A: isbi2012-cpu, 16 x 3", RESULTS / "isbi2012-cpu.md", "## Every trial", order)
    b = kernel_table("B: isbi2012-guided, 5 x 14", RESULTS / "isbi2012-guided" / "results.md", "### Trials")
    return [
        (a, {"selection": 2, "budgets": [4, 8, 16], "guided": {"steps": 3, "step_size": 2, "relative": None}}),
        (b, {"selection": 3, "budgets": [3, 5], "guided": {"steps": 1, "step_size": 2, "relative": 0.5}}),
    ]


def read_table(path: Path) -> Table:
    """A table written by ``table``: one JSON row per trial (config, values, seed, best_val, test, wall_s, curve)."""
    rows: dict[str, dict[int, Row]] = {}
    values: dict[str, dict] = {}
    steps = 0
    for line in path.read_text().splitlines():
        trial = json.loads(line)
        curve = tuple((int(s), float(v)) for s, v in trial["curve"])
        steps = max(steps, trial.get("steps") or max(s for s, _ in curve))
        rows.setdefault(trial["config"], {})[int(trial["seed"])] = Row(
            trial["best_val"], trial["test"], trial["wall_s"] / 3600, curve
        )
        values[trial["config"]] = trial["values"]
    order = [c for c in values]
    return Table(path.stem, rows, values, steps=steps, order=order)


def export_table(uri: str, experiment: str, out: Path) -> int:
    """A sweep's finished child runs from MLflow as a table (the grid's values from its params)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"search_replay: no MLflow experiment {experiment!r} at {uri}")
    runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=50_000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    grid = sorted({k[len("sweep.grid.") :] for p in parents for k in p.data.params if k.startswith("sweep.grid.")})
    written = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if "config" not in tags or "test_iou" not in metrics:
            continue
        history = client.get_metric_history(run.info.run_id, "val_iou")
        curve = sorted({m.step: m.value for m in history}.items())
        written.append(
            {
                "config": tags["config"],
                "values": {k: _value(params[k]) for k in grid if k in params},
                "seed": int(params["seed"]),
                "best_val": max(v for _, v in curve),
                "test": metrics["test_iou"],
                "wall_s": (run.info.end_time - run.info.start_time) / 1000,
                "steps": int(json.loads(params.get("train.steps", "0"))),
                "curve": curve,
            }
        )
    out.write_text("".join(json.dumps(row) + "\n" for row in sorted(written, key=lambda r: (r["config"], r["seed"]))))
    return len(written)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ----------------------------------------------------------------------------- the experiment


def splits(seeds: Sequence[int], selection: int, replicate: int) -> tuple[list[int], list[int]]:
    """Replicate r's selection and evaluation seeds: every split in turn when there are few, else drawn."""
    every = list(itertools.combinations(seeds, selection))
    chosen = (
        every[replicate % len(every)]
        if len(every) <= 20
        else sorted(np.random.default_rng(replicate).choice(seeds, selection, replace=False).tolist())
    )
    return list(chosen), [s for s in seeds if s not in chosen]


@dataclass
class Scored:
    pick_test: float
    regret: float
    tried: int
    completed: int
    reached: int | None  # configurations tried until one within 0.01 of the table's best (None: never)
    hours_to_reach: float | None
    pick: str | None


def score(table: Table, outcome: Outcome, evaluation: Sequence[int]) -> Scored:
    seeds = table.seeds
    best = max(table.mean(c, seeds) for c in table.rows)
    oracle = max(table.mean(c, evaluation) for c in table.rows)
    pick_test = table.mean(outcome.pick, evaluation) if outcome.pick else math.nan
    reached = next((i for i, c in enumerate(outcome.tried) if table.mean(c, seeds) >= best - 0.01), None)
    return Scored(
        pick_test, oracle - pick_test, len(outcome.tried), outcome.completed,
        None if reached is None else reached + 1, None if reached is None else outcome.hours[reached], outcome.pick,
    )  # fmt: skip


def replicate_all(table: Table, options: dict, replicates: int, asha: bool) -> dict[str, dict[str, dict[int, Scored]]]:
    """budget label -> strategy -> replicate -> scored."""
    seeds, selection = table.seeds, options["selection"]
    unit = fmean(sum(table.rows[c][s].wall for s in seeds[:selection]) for c in table.rows)  # per configuration
    results: dict[str, dict[str, dict[int, Scored]]] = {}
    for r in range(replicates):
        chosen, evaluation = splits(seeds, selection, r)
        budgets: list[tuple[str, float, int]] = []
        if "guided" in options:
            outcome = guided(Replay(table, chosen, math.inf), r, **options["guided"])
            results.setdefault("the guided rule's", {}).setdefault("guided", {})[r] = score(table, outcome, evaluation)
            budgets.append(("the guided rule's", outcome.hours[-1], len(outcome.tried)))
            reference = Replay(table, chosen, math.inf)
            reference.run("4-8-16")
            results["the guided rule's"].setdefault("reference", {})[r] = score(table, reference.finish(), evaluation)
        budgets += [(f"{n} configurations'", n * unit, n) for n in options["budgets"]]
        for label, hours, trials in budgets:
            strategies: dict[str, Callable[[Replay, int], Outcome]] = {
                "grid": grid, "shuffled": shuffled, "random": random,
                "tpe": lambda replay, rep, t=trials: tpe(replay, rep, t),
            }  # fmt: skip
            for name, strategy in strategies.items():
                outcome = strategy(Replay(table, chosen, hours), r)
                results.setdefault(label, {}).setdefault(name, {})[r] = score(table, outcome, evaluation)
            if asha:
                replay = Replay(table, chosen, hours, SchedulerConfig(algorithm="asha", grace_steps=100))
                outcome = tpe(replay, r, trials)
                results[label].setdefault("tpe+asha", {})[r] = score(table, outcome, evaluation)
    return results


def summary(table: Table, results: dict[str, dict[str, dict[int, Scored]]]) -> str:
    seeds = table.seeds
    best = max(table.rows, key=lambda c: table.mean(c, seeds))
    lines = [
        f"### Table {table.name}",
        "",
        f"Table's best (mean test IoU over all {len(seeds)} seeds): {best} {table.mean(best, seeds):.4f}; "
        f"configurations within 0.01 of it: {sum(table.mean(c, seeds) >= table.mean(best, seeds) - 0.01 for c in table.rows)} "
        f"of {len(table.rows)}.",
        "",
        "| budget | strategy | configurations tried | pick's test IoU on unseen seeds | vs random (paired) | regret | "
        "within 0.01 of the best: share, median configurations | no pick | most frequent picks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, strategies in results.items():
        baseline = strategies.get("random")
        for name, scored in strategies.items():
            values = {r: s.pick_test for r, s in scored.items() if not math.isnan(s.pick_test)}
            versus = "" if baseline is None or name == "random" else paired_difference(
                values, {r: s.pick_test for r, s in baseline.items()}
            ).estimate.text(signed=True)  # fmt: skip
            reached = [s.reached for s in scored.values() if s.reached is not None]
            picks = Counter(s.pick for s in scored.values()).most_common(3)
            lines.append(
                f"| {label} | {name} | {fmean(s.tried for s in scored.values()):.1f} | {fmean(values.values()):.4f} | "
                f"{versus} | {fmean(s.regret for s in scored.values() if not math.isnan(s.regret)):.4f} | "
                f"{len(reached) / len(scored):.2f}, {f'{median(reached):g}' if reached else 'n/a'} | "
                f"{sum(s.pick is None for s in scored.values()) / len(scored):.2f} | "
                + ", ".join(f"{p} ({n / len(scored):.0%})" for p, n in picks)
                + " |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    kernels = commands.add_parser("kernels", help="replay the recorded ISBI kernel tables")
    kernels.add_argument("--replicates", type=int, default=1000)
    table = commands.add_parser("table", help="a sweep's MLflow child runs as a table (JSONL)")
    table.add_argument("--tracking-uri", required=True)
    table.add_argument("--experiment", required=True)
    table.add_argument("--out", type=Path, required=True)
    replay = commands.add_parser("replay", help="replay grid, shuffled, random, TPE and TPE + ASHA on a table")
    replay.add_argument("table", type=Path)
    replay.add_argument("--replicates", type=int, default=1000)
    replay.add_argument("--selection", type=int, default=2)
    replay.add_argument("--budgets", default="16,8,32", help="configurations' worth of trial-hours")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # Tune's and Optuna's per-suggestion notices
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.command == "table":
        print(f"{export_table(args.tracking_uri, args.experiment, args.out)} trials written to {args.out}")
        return
    if args.command == "kernels":
        for found, options in kernel_tables():
            print(summary(found, replicate_all(found, options, args.replicates, asha=False)) + "\n")
        return
    found = read_table(args.table)
    budgets = [int(b) for b in args.budgets.split(",")]
    print(
        summary(found, replicate_all(found, {"selection": args.selection, "budgets": budgets}, args.replicates, True))
    )


if __name__ == "__main__":
    sys.exit(main())
