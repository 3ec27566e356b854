"""A sweep's results as the paper's Table 1: Parquet, Markdown, a chart, and the guided-vs-random line.

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

from dcn_ray.core.kernels import REFERENCE

#: Test-split scores of a trial (empty without a test split): dcn_ray.core.metrics.SCORE_KEYS, prefixed.
TEST_COLUMNS = ("test_iou", "test_dice", "test_pixel_error", "test_membrane_iou", "test_vrand", "test_vinfo")
#: Final metrics of a trial kept per row (validation chooses; test, where there is one, reports).
METRIC_COLUMNS = ("best_val_iou", "val_vrand", "val_vinfo", *TEST_COLUMNS)
IDENTITY_COLUMNS = ("k1", "k2", "k3", "seed")
COLUMNS = (
    *IDENTITY_COLUMNS,
    "phase",
    "status",
    *METRIC_COLUMNS,
    "vs_reference",
    "weak_branch",
    "mlflow_run_id",
    "trial_id",
)
PHASE_ORDER = {"grid": 0, "followup": 1, "control": 2}
PHASE_COLOURS = {"grid": "#4c72b0", "followup": "#dd8452", "control": "#8c8c8c"}
TABLE_FILE, MARKDOWN_FILE, CHART_FILE = "results.parquet", "results.md", "iou_by_config.png"
EVALUATION_KEY = b"dcn_ray.evaluation"


def results_table(
    rows: Sequence[dict[str, Any]],
    reference: Sequence[int] = REFERENCE,
    evaluation: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Rows (one per trial) -> a table ordered like Table 1, with the headline IoU's difference from the reference.

    ``evaluation`` (:func:`dcn_ray.core.evaluation.reported_split`): the split the headline is scored
    on and its baselines, kept in the table's metadata. Without it, the headline is the test IoU
    when any row has one.
    """
    reference = tuple(reference)
    test = evaluation["split"] == "test" if evaluation else any(_number(r.get("test_iou")) for r in rows)
    key = "test_iou" if test else "best_val_iou"
    reference_iou = next(
        (r[key] for r in rows if (r["k1"], r["k2"], r["k3"]) == reference and _number(r.get(key))),
        None,
    )
    ordered = sorted(
        rows,
        key=lambda r: (
            PHASE_ORDER.get(r["phase"], 9),
            (r["k1"], r["k2"], r["k3"]) != reference,
            r["k1"],
            r["k2"],
            r["k3"],
            r.get("seed") or 0,
        ),
    )
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for row in ordered:
        iou = row.get(key)
        row = {**row, "vs_reference": (iou - reference_iou) if _number(iou) and reference_iou is not None else None}
        for name in COLUMNS:
            columns[name].append(row.get(name))
    schema = pa.schema(
        [
            *(pa.field(n, pa.int64()) for n in IDENTITY_COLUMNS),
            pa.field("phase", pa.string()),
            pa.field("status", pa.string()),
            *(pa.field(n, pa.float64()) for n in (*METRIC_COLUMNS, "vs_reference")),
            pa.field("weak_branch", pa.string()),
            pa.field("mlflow_run_id", pa.string()),
            pa.field("trial_id", pa.string()),
        ],
        metadata={EVALUATION_KEY: json.dumps({"split": "test" if test else "validation", **(evaluation or {})})},
    )
    return pa.table(columns, schema=schema)


def evaluation_of(table: pa.Table) -> dict[str, Any]:
    """The table's evaluation record: ``split`` ("test" or "validation"), ``slices``, ``baselines`` (if known)."""
    raw = (table.schema.metadata or {}).get(EVALUATION_KEY)
    if raw is None:  # a table written before test splits were reported
        return {"split": "test" if any(_number(v) for v in _column(table, "test_iou")) else "validation"}
    return json.loads(raw)


def headline(table: pa.Table) -> tuple[str, str]:
    """(column, label) of the score the table leads with: test IoU, else best validation IoU."""
    if evaluation_of(table)["split"] == "test":
        return "test_iou", "test IoU"
    return "best_val_iou", "best val IoU"


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
        text += (
            f" Baselines on the same slices: all-foreground IoU {everything['iou']:.4f} "
            f"(V_rand {everything['vrand']:.4f}), all-background IoU {nothing['iou']:.4f}."
        )
    return text


def summary_line(table: pa.Table, reference: Sequence[int] = REFERENCE) -> str:
    """The paper's comparison: best guided follow-up vs best random control vs the reference."""
    rows = table.to_pylist()
    reference = tuple(reference)
    key, label_iou = headline(table)
    ref = next((r for r in rows if (r["k1"], r["k2"], r["k3"]) == reference and _number(r[key])), None)
    parts = []
    for phase, label in (("followup", "best guided follow-up"), ("control", "best random control")):
        candidates = [r for r in rows if r["phase"] == phase and _number(r[key])]
        if candidates:
            best = max(candidates, key=lambda r: r[key])
            delta = f" ({best[key] - ref[key]:+.4f} vs reference)" if ref else ""
            parts.append(f"{label} {_triple(best)} {label_iou} {best[key]:.4f}{delta}")
    if not parts:
        return ""
    head = f"reference {_triple(ref)} {label_iou} {ref[key]:.4f}; " if ref else ""
    return head + "; ".join(parts)


def markdown(table: pa.Table, reference: Sequence[int] = REFERENCE) -> str:
    """The table as Markdown, the note on its split and baselines, and the guided-vs-random line."""
    if headline(table)[0] == "test_iou":
        scores = [("test IoU", "test_iou"), ("vs reference", "vs_reference"), ("test Dice", "test_dice")]
        scores += [("test pixel error", "test_pixel_error"), ("test membrane IoU", "test_membrane_iou")]
        scores += [("test V_rand", "test_vrand"), ("test V_info", "test_vinfo"), ("best val IoU", "best_val_iou")]
    else:
        scores = [("best val IoU", "best_val_iou"), ("vs reference", "vs_reference")]
        scores += [("val V_rand", "val_vrand"), ("val V_info", "val_vinfo")]
    headers = ["k1, k2, k3", "phase", "status", *(label for label, _ in scores), "weak branch"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in table.to_pylist():
        cells = [f"{r['k1']}, {r['k2']}, {r['k3']}", r["phase"], r["status"]]
        cells += [_fmt(r[name], signed=name == "vs_reference") for _, name in scores]
        lines.append("| " + " | ".join([*cells, r["weak_branch"] or ""]) + " |")
    summary = summary_line(table, reference)
    return "\n".join(lines) + "\n\n" + evaluation_note(table) + ("\n\n" + summary if summary else "") + "\n"


def write(table: pa.Table, folder: Path, reference: Sequence[int] = REFERENCE) -> list[Path]:
    """Write results.parquet, results.md and the chart into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / TABLE_FILE)
    (folder / MARKDOWN_FILE).write_text(markdown(table, reference))
    return [folder / TABLE_FILE, folder / MARKDOWN_FILE, chart(table, folder / CHART_FILE, reference)]


def read(folder: Path) -> pa.Table:
    return pq.read_table(folder / TABLE_FILE)


def chart(table: pa.Table, path: Path, reference: Sequence[int] = REFERENCE) -> Path:
    """Bar chart of the headline IoU per configuration, coloured by phase; reference and baseline marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    key, label = headline(table)
    rows = [r for r in table.to_pylist() if _number(r[key])]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 2), 4.0))
    labels = [_triple(r) for r in rows]
    axes.bar(
        range(len(rows)),
        [r[key] for r in rows],
        color=[PHASE_COLOURS.get(r["phase"], "#555555") for r in rows],
    )
    handles = [Patch(color=colour, label=phase) for phase, colour in PHASE_COLOURS.items()]
    ref = next((r for r in rows if (r["k1"], r["k2"], r["k3"]) == tuple(reference)), None)
    if ref:
        handles.append(
            axes.axhline(ref[key], color="black", linestyle="--", linewidth=1, label=f"reference {_triple(ref)}")
        )
    values = [r[key] for r in rows] or [0.0, 1.0]
    baselines = evaluation_of(table).get("baselines")
    if baselines:
        floor = baselines["all_foreground"]["iou"]
        handles.append(
            axes.axhline(floor, color="#c44e52", linestyle=":", linewidth=1.5, label="all-foreground baseline")
        )
        values.append(floor)
    axes.set_xticks(range(len(rows)), labels, rotation=60, ha="right")
    axes.set_ylabel(label.replace("val", "validation"))
    axes.set_title(f"{label} per kernel configuration (k1-k2-k3)")
    axes.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    axes.legend(handles=handles, loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


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


def _triple(row: dict[str, Any]) -> str:
    return f"{row['k1']}-{row['k2']}-{row['k3']}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, *, signed: bool = False) -> str:
    if not _number(value):
        return ""
    return f"{value:+.4f}" if signed else f"{value:.4f}"
