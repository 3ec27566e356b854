"""A sweep's results as the paper's Table 1: Parquet, Markdown, a chart, and the guided-vs-random line."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dcn_ray.core.kernels import REFERENCE

#: Final metrics of a trial kept per row (validation chooses; test, where there is one, reports).
METRIC_COLUMNS = ("best_val_iou", "val_vrand", "val_vinfo")
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


def results_table(rows: Sequence[dict[str, Any]], reference: Sequence[int] = REFERENCE) -> pa.Table:
    """Rows (one per trial) -> a table ordered like Table 1, with the IoU difference from the reference."""
    reference = tuple(reference)
    reference_iou = next(
        (
            r["best_val_iou"]
            for r in rows
            if (r["k1"], r["k2"], r["k3"]) == reference and _number(r.get("best_val_iou"))
        ),
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
        iou = row.get("best_val_iou")
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
        ]
    )
    return pa.table(columns, schema=schema)


def summary_line(table: pa.Table, reference: Sequence[int] = REFERENCE) -> str:
    """The paper's comparison: best guided follow-up vs best random control vs the reference."""
    rows = table.to_pylist()
    reference = tuple(reference)
    ref = next((r for r in rows if (r["k1"], r["k2"], r["k3"]) == reference and _number(r["best_val_iou"])), None)
    parts = []
    for phase, label in (("followup", "best guided follow-up"), ("control", "best random control")):
        candidates = [r for r in rows if r["phase"] == phase and _number(r["best_val_iou"])]
        if candidates:
            best = max(candidates, key=lambda r: r["best_val_iou"])
            delta = f" ({best['best_val_iou'] - ref['best_val_iou']:+.4f} vs reference)" if ref else ""
            parts.append(f"{label} {_triple(best)} IoU {best['best_val_iou']:.4f}{delta}")
    if not parts:
        return ""
    head = f"reference {_triple(ref)} IoU {ref['best_val_iou']:.4f}; " if ref else ""
    return head + "; ".join(parts)


def markdown(table: pa.Table, reference: Sequence[int] = REFERENCE) -> str:
    headers = ["k1, k2, k3", "phase", "status", "best val IoU", "vs reference", "V_rand", "weak branch"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in table.to_pylist():
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['k1']}, {r['k2']}, {r['k3']}",
                    r["phase"],
                    r["status"],
                    _fmt(r["best_val_iou"]),
                    _fmt(r["vs_reference"], signed=True),
                    _fmt(r["val_vrand"]),
                    r["weak_branch"] or "",
                ]
            )
            + " |"
        )
    summary = summary_line(table, reference)
    return "\n".join(lines) + ("\n\n" + summary if summary else "") + "\n"


def write(table: pa.Table, folder: Path, reference: Sequence[int] = REFERENCE) -> list[Path]:
    """Write results.parquet, results.md and the chart into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / TABLE_FILE)
    (folder / MARKDOWN_FILE).write_text(markdown(table, reference))
    return [folder / TABLE_FILE, folder / MARKDOWN_FILE, chart(table, folder / CHART_FILE, reference)]


def read(folder: Path) -> pa.Table:
    return pq.read_table(folder / TABLE_FILE)


def chart(table: pa.Table, path: Path, reference: Sequence[int] = REFERENCE) -> Path:
    """Bar chart of best validation IoU per configuration, coloured by phase, reference marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in table.to_pylist() if _number(r["best_val_iou"])]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 2), 4.0))
    labels = [_triple(r) for r in rows]
    axes.bar(
        range(len(rows)),
        [r["best_val_iou"] for r in rows],
        color=[PHASE_COLOURS.get(r["phase"], "#555555") for r in rows],
    )
    handles = [Patch(color=colour, label=phase) for phase, colour in PHASE_COLOURS.items()]
    ref = next((r for r in rows if (r["k1"], r["k2"], r["k3"]) == tuple(reference)), None)
    if ref:
        handles.append(
            axes.axhline(
                ref["best_val_iou"], color="black", linestyle="--", linewidth=1, label=f"reference {_triple(ref)}"
            )
        )
    axes.set_xticks(range(len(rows)), labels, rotation=60, ha="right")
    axes.set_ylabel("best validation IoU")
    axes.set_title("IoU per kernel configuration (k1-k2-k3)")
    values = [r["best_val_iou"] for r in rows] or [0.0, 1.0]
    axes.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    axes.legend(handles=handles, loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _triple(row: dict[str, Any]) -> str:
    return f"{row['k1']}-{row['k2']}-{row['k3']}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, *, signed: bool = False) -> str:
    if not _number(value):
        return ""
    return f"{value:+.4f}" if signed else f"{value:.4f}"
