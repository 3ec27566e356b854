"""A sweep's results as the paper's Table 1: per configuration over seeds, the findings, every trial, charts.

The headline score is the test IoU when the job has a test split (each trial scored it once, with
its best-validation checkpoint), else the best validation IoU, said plainly: those slices also chose
the checkpoint. Which split it is, and the all-foreground / all-background baselines on it, travel
with the table in its Parquet metadata (``dcn_ray.evaluation``), so ``dcn-ray report`` shows them too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dcn_ray.core import scores
from dcn_ray.kernels import BRANCHES, REFERENCE, kernels_text
from dcn_ray.results import charts, power, summary, verdict

#: Test-split scores of a trial (empty without a test split): dcn_ray.core.scores.SCORE_KEYS, prefixed.
TEST_COLUMNS = scores.TEST_COLUMNS
#: Branch separations of a trial's model: calibrated (the weak-branch score; the planner and the
#: mechanism check read them) and raw (not identified, kept for comparison).
SEPARATION_COLUMNS = (*(f"calibrated_{name}" for name in BRANCHES), *(f"separation_{name}" for name in BRANCHES))
#: Final metrics of a trial kept per row (validation chooses; test, where there is one, reports).
METRIC_COLUMNS = (scores.BEST_VAL_HEADLINE, *scores.VAL_COLUMNS, *TEST_COLUMNS, *SEPARATION_COLUMNS)
IDENTITY_COLUMNS = ("k1", "k2", "k3", "seed", "round")
#: The full configuration (``4-8-16``, ``unet_train.lr=0.001``) and the model family of a trial.
CONFIG_COLUMNS = ("config", "model_family")
#: Where a follow-up comes from: its reference configuration (``4-8-16``) and that one's weak branch.
PROVENANCE_COLUMNS = ("reference", "reference_weak")
COLUMNS = (
    *IDENTITY_COLUMNS,
    *CONFIG_COLUMNS,
    "phase",
    "status",
    *METRIC_COLUMNS,
    "vs_reference",
    "weak_branch",
    *PROVENANCE_COLUMNS,
    "mlflow_run_id",
    "trial_id",
)
PHASE_ORDER = {"grid": 0, "search": 0, "followup": 1, "control": 2, "sham": 3, "random": 4}
TABLE_FILE, MARKDOWN_FILE = "results.parquet", "results.md"
CHART_FILE, KERNEL_CHART_FILE = "iou_by_config.png", "iou_by_kernel.png"
EVALUATION_KEY = b"dcn_ray.evaluation"
#: The follow-up rounds (reference, weak branch, guided, control and sham configurations) in the metadata.
ROUNDS_KEY = b"dcn_ray.rounds"


def results_table(
    rows: Sequence[dict[str, Any]],
    reference: Sequence[int] = REFERENCE,
    evaluation: Mapping[str, Any] | None = None,
    rounds: Sequence[Mapping[str, Any]] = (),
) -> pa.Table:
    """Rows (one per trial) -> a table ordered like Table 1, with the headline IoU's difference from the reference.

    ``evaluation`` (:func:`dcn_ray.core.evaluation.reported_split`): the split the headline is scored
    on and its baselines, kept in the table's metadata. Without it, the headline is the test IoU
    when any row has one.
    """
    reference = tuple(reference)
    test = evaluation["split"] == "test" if evaluation else any(_number(r.get(scores.TEST_HEADLINE)) for r in rows)
    key = scores.TEST_HEADLINE if test else scores.BEST_VAL_HEADLINE
    ordered = sorted(
        rows,
        key=lambda r: (
            PHASE_ORDER.get(r["phase"], 9),
            (r["k1"], r["k2"], r["k3"]) != reference,
            r["k1"] is None,  # other families after the DCN
            r["k1"] or 0,
            r["k2"] or 0,
            r["k3"] or 0,
            r.get("config") or "",
            r.get("seed") or 0,
        ),
    )
    reference_name = summary.reference_config(ordered, reference)  # the statistics' reference, same order
    reference_iou = {  # by seed: a trial is compared with the reference trial of its own seed
        r.get("seed") or 0: r[key] for r in ordered if summary.config_of(r) == reference_name and _number(r.get(key))
    }
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for row in ordered:
        iou, base = row.get(key), reference_iou.get(row.get("seed") or 0)
        row = {**row, "vs_reference": (iou - base) if _number(iou) and base is not None else None}
        for name in COLUMNS:
            columns[name].append(row.get(name))
    schema = pa.schema(
        [
            *(pa.field(n, pa.int64()) for n in IDENTITY_COLUMNS),
            *(pa.field(n, pa.string()) for n in CONFIG_COLUMNS),
            pa.field("phase", pa.string()),
            pa.field("status", pa.string()),
            *(pa.field(n, pa.float64()) for n in (*METRIC_COLUMNS, "vs_reference")),
            pa.field("weak_branch", pa.string()),
            *(pa.field(n, pa.string()) for n in PROVENANCE_COLUMNS),
            pa.field("mlflow_run_id", pa.string()),
            pa.field("trial_id", pa.string()),
        ],
        metadata={
            EVALUATION_KEY: json.dumps({"split": "test" if test else "validation", **(evaluation or {})}),
            ROUNDS_KEY: json.dumps(list(rounds)),
        },
    )
    return pa.table(columns, schema=schema)


def evaluation_of(table: pa.Table) -> dict[str, Any]:
    """The table's evaluation record: ``split`` ("test" or "validation"), ``slices``, ``baselines`` (if known)."""
    raw = (table.schema.metadata or {}).get(EVALUATION_KEY)
    if raw is None:  # a table written before test splits were reported
        return {"split": "test" if any(_number(v) for v in _column(table, scores.TEST_HEADLINE)) else "validation"}
    return json.loads(raw)


def rounds_of(table: pa.Table) -> list[dict[str, Any]]:
    """The follow-up rounds kept with the table (see :mod:`dcn_ray.results.summary`); [] when none."""
    return json.loads((table.schema.metadata or {}).get(ROUNDS_KEY, b"[]"))


def headline(table: pa.Table) -> tuple[str, str]:
    """(column, label) of the score the table leads with: test IoU, else best validation IoU."""
    column = scores.TEST_HEADLINE if evaluation_of(table)["split"] == "test" else scores.BEST_VAL_HEADLINE
    return column, scores.label(column)


def evaluation_note(table: pa.Table) -> str:
    """Which slices the scores come from, and the trivial baselines there."""
    evaluation = evaluation_of(table)
    slices = evaluation.get("slices")
    where = f" ({len(slices)} slices: {_ranges(slices)})" if slices else ""
    if evaluation["split"] == "test":
        text = (
            f"Scores on the test split{where}, scored once per trial with its best-validation checkpoint; "
            "best val IoU is the validation score that chose that checkpoint."
        )
    else:
        text = (
            f"Scores on the validation split{where}: no test split (data.split.test), so these are the "
            "slices that also chose each checkpoint, and the scores are biased upwards."
        )
    baselines = evaluation.get("baselines")
    if baselines:
        everything, nothing = baselines["all_foreground"], baselines["all_background"]
        beside = next((key for key in ("vrand", "object_f1") if key in everything), None)
        text += (
            f" Baselines on the same slices: all-foreground IoU {everything['iou']:.4f}"
            + (f" ({scores.label('test_' + beside)[5:]} {everything[beside]:.4f})" if beside else "")
            + f", all-background IoU {nothing['iou']:.4f}."
        )
    if evaluation.get("target"):
        text += f" Target: {evaluation['target']}."
    return text


def statistics(table: pa.Table, reference: Sequence[int] = REFERENCE) -> list[summary.ConfigResult]:
    """Per-configuration results over seeds, on the headline score."""
    return summary.configuration_results(table.to_pylist(), headline(table)[0], reference)


def findings(table: pa.Table, reference: Sequence[int] = REFERENCE, effect: float | None = None) -> list[str]:
    """The sentences a reader wants: the weak branch's agreement, guided vs matched controls, the
    mechanism, and what the seeds can detect (with the seeds ``effect`` needs)."""
    rows, (key, label), rounds = table.to_pylist(), headline(table), rounds_of(table)
    lines: list[str | None] = list(verdict.round_lines(rounds))
    comparison = verdict.guided_vs_controls(rows, key, label, rounds)
    lines.append(comparison.sentence() if comparison else None)
    mechanism = verdict.mechanism(rows, rounds)
    lines.append(mechanism.sentence() if mechanism else None)
    lines += power.power_lines(rows, key, reference, rounds, effect)
    return [line for line in lines if line]


def configuration_markdown(results: Sequence[summary.ConfigResult], label: str, reference: Sequence[int]) -> str:
    """The per-configuration table: n, mean [95 % CI], difference from the reference, p, Holm p.

    Without a reference configuration among the results (a grid of other families) the comparison
    columns are left out; with fewer than :data:`summary.MIN_PAIRS` seeds p and Holm p say so.
    """
    named = next((r.config or kernels_text(r.kernels or reference) for r in results if r.reference), None)
    head = ["k1, k2, k3", "phase", "n", f"{label} mean [95 % CI]"]
    if named is not None:
        head += [f"vs {named} (paired by seed)", "p", "p (Holm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.label, r.phase, str(r.score.n), r.score.text()]
        if named is not None:
            pairs = r.difference.n if r.difference else None
            diff = r.difference.text(signed=True) if r.difference else "reference"
            cells += [diff, summary.p_text(r.p_value, pairs), summary.p_text(r.p_holm, pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(table: pa.Table, reference: Sequence[int] = REFERENCE, effect: float | None = None) -> str:
    """Per configuration over seeds (mean, interval, paired difference, p), the findings, then every trial."""
    label = headline(table)[1]
    parts = [configuration_markdown(statistics(table, reference), label, reference), evaluation_note(table)]
    parts += findings(table, reference, effect)
    return "\n\n".join(parts) + "\n\n### Trials\n\n" + trials_markdown(table) + "\n"


def trials_markdown(table: pa.Table) -> str:
    """One row per trial (seed), with every score."""
    key = headline(table)[0]
    if key.startswith("test_"):
        others = [c for c in scores.TEST_COLUMNS if c != key] + [scores.BEST_VAL_HEADLINE]
    else:
        others = list(scores.VAL_COLUMNS)
    others = [c for c in others if any(_number(v) for v in _column(table, c))]  # the target's scores only
    columns = [(scores.label(key), key), ("vs reference", "vs_reference"), *((scores.label(c), c) for c in others)]
    headers = ["k1, k2, k3", "seed", "phase", "status", *(label for label, _ in columns), "weak branch"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in table.to_pylist():
        seed = "" if r.get("seed") is None else str(r["seed"])
        plain = r["k1"] is not None and r.get("config") in (None, f"{r['k1']}-{r['k2']}-{r['k3']}")
        cells = [f"{r['k1']}, {r['k2']}, {r['k3']}" if plain else r.get("config") or "", seed, r["phase"], r["status"]]
        cells += [
            _fmt(r[name], signed=name == "vs_reference", count=name.startswith("test_objects_")) for _, name in columns
        ]
        lines.append("| " + " | ".join([*cells, r["weak_branch"] or ""]) + " |")
    return "\n".join(lines)


def write(table: pa.Table, folder: Path, reference: Sequence[int] = REFERENCE) -> list[Path]:
    """Write results.parquet, results.md and the two charts into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / TABLE_FILE)
    (folder / MARKDOWN_FILE).write_text(markdown(table, reference))
    results, label = statistics(table, reference), headline(table)[1]
    baselines = evaluation_of(table).get("baselines")
    floor = baselines["all_foreground"]["iou"] if baselines else None
    return [
        folder / TABLE_FILE,
        folder / MARKDOWN_FILE,
        charts.interval_chart(results, folder / CHART_FILE, reference, label, floor=floor),
        charts.kernel_chart(results, folder / KERNEL_CHART_FILE, label),
    ]


def read(folder: Path) -> pa.Table:
    return pq.read_table(folder / TABLE_FILE)


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else []


def _ranges(slices: Sequence[int]) -> str:
    """[25, 26, 27, 29] -> "25-27, 29"."""
    parts: list[str] = []
    for z in sorted(slices):
        if parts and parts[-1].split("-")[-1] == str(z - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{z}"
        else:
            parts.append(str(z))
    return ", ".join(parts)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, *, signed: bool = False, count: bool = False) -> str:
    if not _number(value):
        return ""
    return f"{value:.0f}" if count else f"{value:+.4f}" if signed else f"{value:.4f}"
