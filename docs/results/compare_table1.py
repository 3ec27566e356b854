"""Compare a sweep's per-configuration results with the paper's Table 1 (dataset B, single runs).

    python docs/results/compare_table1.py dcn-ray-runs/isbi2012-cpu

Prints, per Table 1 row, the paper's IoU difference from 4-8-16 beside the sweep's paired
difference (mean over seeds), whether their signs agree, and Spearman's rank correlation of the
two columns with its p-value.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scipy import stats

from dcn_ray.kernels import TABLE1, kernels_text
from dcn_ray.results import report

#: The paper's Table 1 (Takaya et al., dataset B): test IoU of each (k1, k2, k3), one run each.
PAPER_IOU = dict(
    zip(
        TABLE1,
        (0.6536, 0.7041, 0.6859, 0.6625, 0.6871, 0.7097, 0.5198, 0.6934,
         0.6163, 0.6801, 0.6693, 0.6573, 0.7063, 0.6611, 0.6419, 0.6736),
    )
)  # fmt: skip


def main(folder: str) -> None:
    table = report.read(Path(folder))
    results = {r.kernels: r for r in report.statistics(table)}
    reference = TABLE1[0]
    label = report.headline(table)[1]
    print(
        f"| k1, k2, k3 | paper IoU vs {kernels_text(reference)} | ours: {label} vs {kernels_text(reference)} | same sign |"
    )
    print("|---|---|---|---|")
    ours, paper = [], []
    for kernels in TABLE1[1:]:
        result = results.get(kernels)
        if result is None or result.difference is None:
            continue
        difference = PAPER_IOU[kernels] - PAPER_IOU[reference]
        same = "yes" if (difference > 0) == (result.difference.mean > 0) else "no"
        print(
            f"| {', '.join(map(str, kernels))} | {difference:+.4f} | {result.difference.text(signed=True)} | {same} |"
        )
        ours.append(result.difference.mean)
        paper.append(difference)
    rho, p = stats.spearmanr(paper, ours)
    agree = sum((a > 0) == (b > 0) for a, b in zip(paper, ours))
    print(
        f"\nSpearman rank correlation over {len(ours)} rows: rho = {rho:+.2f}, p = {p:.2g}; signs agree in {agree} of {len(ours)}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
