"""The results table: Table 1's layout, the difference from the reference, guided vs random."""

from pathlib import Path

import pytest
from PIL import Image

from dcn_ray.track import report


def row(k, phase, iou, status="finished"):
    return {
        "k1": k[0],
        "k2": k[1],
        "k3": k[2],
        "phase": phase,
        "status": status,
        "best_val_iou": iou,
        "val_vrand": 0.9,
        "val_vinfo": 0.95,
        "weak_branch": "F3",
        "mlflow_run_id": "r",
        "trial_id": f"t{k}",
    }


ROWS = [
    row((4, 8, 12), "followup", 0.70),
    row((2, 8, 16), "grid", 0.68),
    row((4, 8, 14), "followup", 0.66),
    row((6, 8, 16), "control", 0.71),
    row((4, 8, 16), "grid", 0.65),
    row((4, 6, 16), "grid", None, status="errored"),
]


def test_table_orders_like_table1_and_measures_from_the_reference():
    table = report.results_table(ROWS)
    rows = table.to_pylist()
    assert [(r["k1"], r["k2"], r["k3"]) for r in rows] == [
        (4, 8, 16),
        (2, 8, 16),
        (4, 6, 16),
        (4, 8, 12),
        (4, 8, 14),
        (6, 8, 16),
    ]
    assert [r["phase"] for r in rows] == ["grid", "grid", "grid", "followup", "followup", "control"]
    assert rows[0]["vs_reference"] == 0.0
    assert rows[1]["vs_reference"] == pytest.approx(0.03)
    assert rows[2]["vs_reference"] is None and rows[2]["status"] == "errored"


def test_summary_compares_guided_random_and_reference():
    line = report.summary_line(report.results_table(ROWS))
    assert line == (
        "reference 4-8-16 IoU 0.6500; best guided follow-up 4-8-12 IoU 0.7000 (+0.0500 vs reference); "
        "best random control 6-8-16 IoU 0.7100 (+0.0600 vs reference)"
    )
    assert report.summary_line(report.results_table([row((4, 8, 16), "grid", 0.6)])) == ""


def test_written_files_round_trip(tmp_path: Path):
    table = report.results_table(ROWS)
    files = report.write(table, tmp_path)
    assert {f.name for f in files} == {"results.parquet", "results.md", "iou_by_config.png"}
    assert report.read(tmp_path).equals(table)
    markdown = (tmp_path / "results.md").read_text()
    assert "| 4, 8, 16 | grid | finished | 0.6500 | +0.0000 |" in markdown
    assert "| 4, 6, 16 | grid | errored |  |  |" in markdown
    assert Image.open(tmp_path / "iou_by_config.png").size[0] >= 600
