"""The scores dcn-ray computes, one registry: key, label, direction, and the headline that chooses.

Training logs each as ``val_<key>``, a trial's test split as ``test_<key>``; the headline (the
foreground IoU, the paper's metric) chooses the checkpoint (``best_val_iou``) and leads reports and
registry versions. Reports, model sources and the planner read the names from here. Nothing here
imports numpy: the CLI and the job checks use it before the science loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    key: str
    label: str
    higher_is_better: bool = True


#: Every score of :func:`dcn_ray.core.metrics.segmentation_scores`, in report order.
SCORES = (
    Score("iou", "IoU"),
    Score("dice", "Dice"),
    Score("pixel_error", "pixel error", higher_is_better=False),
    Score("membrane_iou", "membrane IoU"),
    Score("vrand", "V_rand"),
    Score("vinfo", "V_info"),
)
SCORE_KEYS = tuple(score.key for score in SCORES)
#: The score that chooses checkpoints, trials and registry versions.
HEADLINE = "iou"
#: Its validation value at an evaluation, and the best of a run so far (Tune's metric).
VAL_HEADLINE, BEST_VAL_HEADLINE = f"val_{HEADLINE}", f"best_val_{HEADLINE}"
#: The headline on the test split (a trial scores it once, with the checkpoint validation chose).
TEST_HEADLINE = f"test_{HEADLINE}"
#: The test-split columns of a trial (empty without a test split).
TEST_COLUMNS = tuple(f"test_{key}" for key in SCORE_KEYS)


def label(column: str) -> str:
    """``test_vrand`` -> ``test V_rand``, ``best_val_iou`` -> ``best val IoU``."""
    for prefix in ("best_val_", "val_", "test_"):
        if column.startswith(prefix):
            key = column[len(prefix) :]
            name = next((s.label for s in SCORES if s.key == key), key)
            return f"{prefix.rstrip('_').replace('_', ' ')} {name}"
    return column
