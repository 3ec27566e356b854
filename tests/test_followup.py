"""Follow-up proposal rules: the paper's guided rows, random controls, exclusion and exhaustion."""

from __future__ import annotations

import pytest

from dcn_ray.core.proposals import (
    FollowupPlan,
    control_candidates,
    control_kind,
    plan_followups,
    propose_controls,
    propose_guided,
)
from dcn_ray.kernels import REFERENCE, kernel_problem


def changed_branches(kernels: tuple[int, int, int], reference: tuple[int, int, int]) -> list[int]:
    return [i for i, (k, r) in enumerate(zip(kernels, reference)) if k != r]


def test_guided_reproduces_the_papers_table_1_rows() -> None:
    assert propose_guided(REFERENCE, 2) == [(4, 8, 14), (4, 8, 12), (4, 8, 10)]
    assert propose_guided(REFERENCE, 1, steps=1) == [(4, 6, 16)]


def test_guided_skips_excluded_and_keeps_walking_down() -> None:
    done = [[4, 8, 14], (4, 8, 10)]  # lists (as read from YAML) match too
    assert propose_guided(REFERENCE, 2, exclude=done) == [(4, 8, 12), (4, 8, 8)]


def test_guided_stops_at_the_stride_floor() -> None:
    assert propose_guided(REFERENCE, 0) == [(2, 8, 16)]  # k1 = 0 would be below stride 2
    assert propose_guided(REFERENCE, 0, exclude=[(2, 8, 16)]) == []
    assert propose_guided(REFERENCE, 1, steps=5) == [(4, 6, 16), (4, 4, 16)]
    for proposal in propose_guided((4, 8, 48), 2, steps=30, step_size=3):
        assert kernel_problem(proposal) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reference": (1, 8, 16), "weak": 0},
        {"reference": (4, 8), "weak": 0},
        {"reference": REFERENCE, "weak": 3},
        {"reference": REFERENCE, "weak": True},
        {"reference": REFERENCE, "weak": 2, "steps": -1},
        {"reference": REFERENCE, "weak": 2, "step_size": 0},
    ],
)
def test_guided_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        propose_guided(**kwargs)


def test_controls_change_one_branch_within_bounds() -> None:
    controls = propose_controls(REFERENCE, 8, seed=11)
    assert len(controls) == len(set(controls)) == 8
    for kernels in controls:
        assert kernel_problem(kernels) is None
        (branch,) = changed_branches(kernels, REFERENCE)
        stride = (2, 4, 8)[branch]
        assert stride <= kernels[branch] <= 3 * stride
        assert (kernels[branch] - REFERENCE[branch]) % 2 == 0


def test_controls_are_deterministic_per_seed() -> None:
    assert propose_controls(REFERENCE, 5, seed=4) == propose_controls(REFERENCE, 5, seed=4)
    draws = {tuple(propose_controls(REFERENCE, 5, seed=seed)) for seed in range(10)}
    assert len(draws) > 1


def test_controls_respect_exclude_and_exhaust_without_looping() -> None:
    every = sorted(k for branch in control_candidates(REFERENCE) for k in branch)
    # F1 in [2, 6]: 2, 6; F2 in [4, 12]: 4, 6, 10, 12; F3 in [8, 24]: 8, 10, 12, 14, 18, ..., 24.
    assert len(every) == 2 + 4 + 8
    assert sorted(propose_controls(REFERENCE, 100, seed=0)) == every
    excluded = every[:5]
    rest = propose_controls(REFERENCE, 100, seed=0, exclude=excluded)
    assert sorted(rest) == every[5:]
    assert propose_controls(REFERENCE, 3, seed=0, exclude=every) == []
    assert propose_controls(REFERENCE, 0, seed=0) == []


def test_controls_bad_arguments() -> None:
    with pytest.raises(ValueError, match="count"):
        propose_controls(REFERENCE, -1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        propose_controls(REFERENCE, 1, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_kernel_factor"):
        propose_controls(REFERENCE, 1, seed=0, max_kernel_factor=0)


def test_plan_keeps_random_extras_apart_from_guided_and_done() -> None:
    done = [REFERENCE, (6, 8, 16)]
    for seed in range(20):
        plan = plan_followups(REFERENCE, 2, steps=3, controls=0, random_controls=10, seed=seed, exclude=done)
        assert isinstance(plan, FollowupPlan) and plan.weak == 2
        assert plan.guided == ((4, 8, 14), (4, 8, 12), (4, 8, 10))
        assert plan.controls == () and len(plan.extras) == 10
        proposals = plan.guided + plan.extras
        assert len(set(proposals)) == len(proposals)
        assert not set(proposals) & set(done)
        for kernels in plan.extras:
            assert kernel_problem(kernels) is None
            assert len(changed_branches(kernels, REFERENCE)) == 1
    # 14 candidates - 3 guided - 1 done = 10 left: asking for more gives exactly those.
    assert len(plan_followups(REFERENCE, 2, controls=0, random_controls=50, seed=0, exclude=done).extras) == 10


def test_matched_controls_are_every_same_change_of_k_over_stride_without_a_draw() -> None:
    from dcn_ray.kernels import STRIDES, relative_change

    plans = {plan_followups(REFERENCE, 2, steps=3, seed=seed) for seed in range(10)}
    assert len(plans) == 1  # no lottery: the seed changes nothing
    (plan,) = plans
    assert plan.guided == ((4, 8, 14), (4, 8, 12), (4, 8, 10))
    # 16 -> 14 on F3 (k/s -0.25) matches 8 -> 7 on F2 (no whole F1 kernel does) and F3 enlarged to 18
    assert plan.controls == ((4, 7, 16), (4, 8, 18), (3, 8, 16), (4, 6, 16), (4, 8, 20), (4, 5, 16), (4, 8, 22))
    sizes = {abs(relative_change(REFERENCE, g)[1]) for g in plan.guided}
    for control in plan.controls:
        branch, change = relative_change(REFERENCE, control)
        assert abs(change) in sizes and kernel_problem(control) is None
        assert (branch != 2 and change < 0) or (branch == 2 and change > 0)  # another direction
        assert control[branch] >= STRIDES[branch]
    kinds = {control_kind(REFERENCE, 2, c) for c in plan.controls}
    assert kinds == {"shrunk", "enlarged"}
    # F1 weak: 4 -> 2 halves k/s; F2 8 -> 4 and F3 16 -> 8 do too (valid shrinks now exist), F1 enlarged to 6
    assert plan_followups(REFERENCE, 0, steps=3, seed=0).controls == ((4, 4, 16), (4, 8, 8), (6, 8, 16))
    assert len(plan_followups(REFERENCE, 2, steps=3, controls=2, seed=0).controls) == 2  # a cap keeps the order


def test_matched_controls_are_the_same_whatever_already_ran() -> None:
    """The arms of the comparison follow the rule alone; exclusions only keep random extras new."""
    a = plan_followups(REFERENCE, 2, steps=3, seed=7, exclude=[(4, 8, 18), (4, 6, 16)], random_controls=2)
    b = plan_followups(REFERENCE, 2, steps=3, seed=7, random_controls=2)
    assert (a.guided, a.controls) == (b.guided, b.controls) and len(a.controls) == 7
    assert a == plan_followups(REFERENCE, 2, steps=3, seed=7, exclude=[(4, 8, 18), (4, 6, 16)], random_controls=2)
    assert not {(4, 8, 18), (4, 6, 16)} & set(a.extras)
    assert not set(a.extras) & set(a.guided + a.controls)
