"""The results table: Table 1's layout, the difference from the reference, guided vs random."""

from pathlib import Path

import pytest
from PIL import Image

from dcn_ray.results import report


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


def seeded(k, phase, iou, seed, **extra):
    return {**row(k, phase, iou), "seed": seed, "trial_id": f"t{k}{seed}", **extra}


def test_markdown_leads_with_configurations_over_seeds_and_the_findings():
    rows = []
    for seed, base in enumerate([0.80, 0.81, 0.79]):
        rows.append(seeded((4, 8, 16), "grid", base, seed, weak_branch="F3" if seed < 2 else "F2"))
        rows.append(seeded((4, 8, 14), "followup", base + 0.02, seed, reference="4-8-16", reference_weak="F3"))
        rows.append(seeded((4, 8, 18), "control", base - 0.01 * seed, seed, reference="4-8-16", reference_weak="F3"))
    rounds = [{"round": 1, "reference": [4, 8, 16], "weak": "F3", "agreement": "F3 in 2 of 3 seeds",
               "guided": [[4, 8, 14]], "controls": [[4, 8, 18]]}]  # fmt: skip
    table = report.results_table(rows, rounds=rounds)
    assert report.rounds_of(table) == rounds
    by_trial = {(r["k1"], r["k2"], r["k3"], r["seed"]): r for r in table.to_pylist()}
    assert by_trial[(4, 8, 18, 2)]["vs_reference"] == pytest.approx(-0.02)  # against the reference of its own seed
    text = report.markdown(table)
    assert (
        "| k1, k2, k3 | phase | n | best val IoU mean [95 % CI] | vs 4-8-16 (paired by seed) | p | p (Holm) |" in text
    )
    assert "| 4, 8, 16 | grid | 3 | 0.800 [" in text and "| 4, 8, 14 | followup | 3 | 0.820 [" in text
    assert "round 1: weak branch of 4-8-16 (lowest calibrated separation): F3 in 2 of 3 seeds; guided 4-8-14" in text
    assert "guided +0.020 [+0.020, +0.020] vs matched controls -0.010 [-0.035, +0.015]" in text
    # per seed guided - control: 0.02, 0.03, 0.04; the sign-flip test: 2 of the 2^3 patterns as extreme
    assert "guided minus all matched controls: +0.030 [" in text and "permutation p = 0.25" in text
    assert "guided minus weak branch enlarged: +0.030" in text and "guided better" in text
    assert "power (configuration vs reference): sd of one paired difference" in text
    assert "### Trials" in text and "| 4, 8, 14 | 1 | followup | finished | 0.8300 | +0.0200 |" in text
    assert "best guided" not in text  # no best-of comparison any more


def test_written_files_round_trip(tmp_path: Path):
    table = report.results_table(ROWS)
    files = report.write(table, tmp_path)
    assert {f.name for f in files} == {"results.parquet", "results.md", "iou_by_config.png", "iou_by_kernel.png"}
    assert report.read(tmp_path).equals(table)
    markdown = (tmp_path / "results.md").read_text()
    assert "| 4, 8, 16 |  | grid | finished | 0.6500 | +0.0000 |" in markdown
    assert "| 4, 6, 16 |  | grid | errored |  |  |" in markdown
    assert Image.open(tmp_path / "iou_by_config.png").size[0] >= 600


EVALUATION = {
    "split": "test",
    "slices": [25, 26, 27, 28, 29],
    "baselines": {
        "all_foreground": {"iou": 0.8036, "dice": 0.89, "pixel_error": 0.196, "membrane_iou": 0.0, "vrand": 0.09},
        "all_background": {"iou": 0.0, "dice": 0.0, "pixel_error": 0.804, "membrane_iou": 0.196, "vrand": 0.09},
    },
}


def with_test_scores(k, phase, val_iou, test_iou):
    scores = {"test_dice": 0.9, "test_pixel_error": 0.1, "test_membrane_iou": 0.6, "test_vrand": 0.8}
    return {**row(k, phase, val_iou), "test_iou": test_iou, "test_vinfo": 0.85, **scores}


TESTED = [
    with_test_scores((4, 8, 16), "grid", 0.90, 0.85),
    with_test_scores((2, 8, 16), "grid", 0.93, 0.84),  # the better validation score, the worse test score
    with_test_scores((4, 8, 12), "followup", 0.91, 0.87),
]


def test_with_a_test_split_the_table_leads_with_test_scores_and_baselines(tmp_path: Path):
    table = report.results_table(TESTED, evaluation=EVALUATION)
    assert report.headline(table) == ("test_iou", "test IoU")
    rows = {(r["k1"], r["k2"], r["k3"]): r for r in table.to_pylist()}
    assert rows[(2, 8, 16)]["vs_reference"] == pytest.approx(-0.01)  # measured on test IoU, not validation
    assert rows[(2, 8, 16)]["test_membrane_iou"] == 0.6 and rows[(2, 8, 16)]["best_val_iou"] == 0.93
    text = report.markdown(table)
    assert "| k1, k2, k3 | seed | phase | status | test IoU | vs reference | test Dice |" in text
    assert "| 2, 8, 16 |  | grid | finished | 0.8400 | -0.0100 | 0.9000 |" in text
    assert "Scores on the test split (5 slices: 25-29)" in text
    assert "all-foreground IoU 0.8036 (V_rand at 0.5 0.0900), all-background IoU 0.0000" in text
    assert "| 4, 8, 12 | followup | 1 | 0.870 | +0.020 |" in text  # per configuration, on test IoU
    # The split and its baselines survive the Parquet file (dcn-ray report reads it back).
    report.write(table, tmp_path)
    assert report.evaluation_of(report.read(tmp_path)) == EVALUATION
    assert report.markdown(report.read(tmp_path)) == text


def test_without_a_test_split_the_table_says_validation_plainly():
    evaluation = {**EVALUATION, "split": "validation", "slices": [21, 22, 23]}
    table = report.results_table(ROWS, evaluation=evaluation)
    assert report.headline(table) == ("best_val_iou", "best val IoU")
    text = report.markdown(table)
    assert "| k1, k2, k3 | seed | phase | status | best val IoU | vs reference | val V_rand at 0.5 |" in text
    assert "Scores on the validation split (3 slices: 21-23): no test split" in text
    assert "biased upwards" in text and "test IoU" not in text
    # A table from before test splits (no metadata) reads as validation.
    plain = report.results_table(ROWS).replace_schema_metadata(None)
    assert report.evaluation_of(plain) == {"split": "validation"}
