"""The sweep's live view: a status line, and one line per running trial that reported since (step / total,
last validation score, time left), not a line per result."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcn_ray.tune.progress import Progress, trial_line
from dcn_ray.tune.spec import TrialSpec


@dataclass
class FakeTrial:
    trial_id: str
    seed: int
    status: str = "RUNNING"
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = TrialSpec.of((4, 8, 16), seed=self.seed).to_config()


def test_a_line_per_running_trial_with_news_and_its_time_left() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, interval=0.0)
    first, second, waiting = FakeTrial("a", 0), FakeTrial("b", 1), FakeTrial("c", 2, status="PENDING")
    trials = [first, second, waiting]
    for step in (10, 20, 40):  # three results of one trial between two summaries: one line
        result = {"step": step, "steps_total": 200, "val_iou": 0.5 + step / 100, "elapsed_s": 3.0 * step}
        progress.on_trial_result(0, trials, first, result)
    progress.on_step_end(0, trials)
    assert lines[0].endswith("pending 1  running 2  finished 0  errored 0  | IoU grid-4-8-16-s0: 0.900")
    assert lines[1:] == ["         grid-4-8-16-s0  step 40/200  val IoU 0.900  about 8 min left"]
    progress.on_step_end(0, trials)  # nothing new: the status line alone
    assert len(lines) == 3
    assert trial_line({"step": 5, "val_iou": 0.7}) == "step 5  val IoU 0.700"
    assert trial_line({"step": 200, "steps_total": 200, "val_iou": 0.9, "elapsed_s": 60.0}).endswith("0.900")
