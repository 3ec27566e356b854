"""Propose the next kernel configurations: the paper's method, automated (no Ray).

After the reference run, the weak branch (see :func:`dcn_ray.core.branches.weak_branch`)
gets a smaller deconvolution kernel, step by step (the paper's "proposed" rows of
Table 1: (4, 8, 16) with F3 weak -> (4, 8, 14), (4, 8, 12), (4, 8, 10)). The guided
choice is compared with controls matched to it: as many configurations, changed by the same
sizes, but in another direction (another branch shrunk, or the weak branch enlarged).
Purely random one-branch changes may run beside them as extras.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dcn_ray.core.kernels import BRANCHES, STRIDES, Kernels, kernel_problem


def _reference(reference: Sequence[int]) -> Kernels:
    problem = kernel_problem(reference)
    if problem:
        raise ValueError(f"reference: {problem}")
    return tuple(reference)  # type: ignore[return-value]


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _excluded(exclude: Collection[Sequence[int]]) -> set[Kernels]:
    """``exclude`` as a set of tuples, so that lists (from YAML or JSON) match too."""
    return {tuple(kernels) for kernels in exclude}  # type: ignore[misc]


def _with_kernel(reference: Kernels, branch: int, kernel: int) -> Kernels:
    changed = list(reference)
    changed[branch] = kernel
    return tuple(changed)  # type: ignore[return-value]


def propose_guided(
    reference: Sequence[int],
    weak: int,
    *,
    steps: int = 3,
    step_size: int = 2,
    exclude: Collection[Sequence[int]] = (),
) -> list[Kernels]:
    """Shrink the weak branch's kernel by ``step_size`` at a time, up to ``steps`` new triples.

    Triples in ``exclude`` (already run or queued) are skipped and the walk goes on
    down; it stops at the branch stride (k >= stride), so fewer may come out.
    ``propose_guided((4, 8, 16), 2)`` is ``[(4, 8, 14), (4, 8, 12), (4, 8, 10)]``.
    """
    base = _reference(reference)
    if isinstance(weak, bool) or weak not in range(len(BRANCHES)):
        raise ValueError(f"weak must be a branch index 0, 1 or 2, got {weak!r}")
    _positive_int("steps", steps, minimum=0)
    _positive_int("step_size", step_size)
    skip = _excluded(exclude)
    proposals: list[Kernels] = []
    kernel = base[weak] - step_size
    while kernel >= STRIDES[weak] and len(proposals) < steps:
        candidate = _with_kernel(base, weak, kernel)
        if candidate not in skip:
            proposals.append(candidate)
        kernel -= step_size
    return proposals


def control_candidates(
    reference: Sequence[int], *, max_kernel_factor: int = 3, step_size: int = 2
) -> list[list[Kernels]]:
    """Per branch, every one-branch change of ``reference`` by a nonzero multiple of ``step_size``
    that keeps the kernel within [stride, stride * max_kernel_factor], in ascending order."""
    base = _reference(reference)
    _positive_int("max_kernel_factor", max_kernel_factor)
    _positive_int("step_size", step_size)
    candidates = []
    for branch, stride in enumerate(STRIDES):
        low, high = stride, stride * max_kernel_factor
        kernels = range(base[branch] % step_size, high + 1, step_size)  # same residue as the reference
        candidates.append([_with_kernel(base, branch, k) for k in kernels if low <= k <= high and k != base[branch]])
    return candidates


def propose_controls(
    reference: Sequence[int],
    count: int,
    *,
    seed: int,
    exclude: Collection[Sequence[int]] = (),
    max_kernel_factor: int = 3,
    step_size: int = 2,
) -> list[Kernels]:
    """``count`` random one-branch changes of ``reference`` (the paper's controls).

    Each draw picks a branch uniformly among those with candidates left, then one
    of that branch's candidates (see :func:`control_candidates`) uniformly.
    Nothing in ``exclude`` and nothing twice; the same ``seed`` gives the same
    list; fewer than ``count`` when the candidates run out.
    """
    _positive_int("count", count, minimum=0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    skip = _excluded(exclude)
    pools = [
        [kernels for kernels in branch_candidates if kernels not in skip]
        for branch_candidates in control_candidates(reference, max_kernel_factor=max_kernel_factor, step_size=step_size)
    ]
    rng = random.Random(seed)
    proposals: list[Kernels] = []
    while len(proposals) < count:
        open_pools = [pool for pool in pools if pool]
        if not open_pools:
            break
        pool = rng.choice(open_pools)
        proposals.append(pool.pop(rng.randrange(len(pool))))
    return proposals


def propose_matched_controls(
    reference: Sequence[int],
    weak: int,
    guided: Sequence[Sequence[int]],
    *,
    seed: int,
    exclude: Collection[Sequence[int]] = (),
    count: int | None = None,
) -> list[Kernels]:
    """Controls matched to the guided follow-ups: the same change sizes, another direction.

    For the i-th guided follow-up, which shrinks the weak branch by d_i, the control is drawn
    (seeded) from the changes of the same size d_i that are not the guided one: another branch
    shrunk by d_i (where its kernel stays >= its stride), or the weak branch enlarged by d_i.
    ``count`` controls (default: one per guided follow-up, cycling through their sizes);
    nothing in ``exclude``, nothing twice.
    """
    base = _reference(reference)
    sizes = [base[weak] - tuple(g)[weak] for g in guided]
    count = len(sizes) if count is None else _positive_int("count", count, minimum=0)
    skip = _excluded(exclude) | _excluded(guided)
    rng = random.Random(seed)
    proposals: list[Kernels] = []
    for index in range(count if sizes else 0):
        size = sizes[index % len(sizes)]
        options = [
            _with_kernel(base, branch, base[branch] - size)
            for branch in range(len(BRANCHES))
            if branch != weak and base[branch] - size >= STRIDES[branch]
        ] + [_with_kernel(base, weak, base[weak] + size)]
        options = [kernels for kernels in options if kernels not in skip and kernels not in proposals]
        if options:
            proposals.append(rng.choice(options))
    return proposals


@dataclass(frozen=True)
class FollowupPlan:
    """The follow-up trials after a reference run: guided ones, matched controls, random extras."""

    guided: tuple[Kernels, ...]
    controls: tuple[Kernels, ...]
    weak: int
    #: Purely random one-branch changes (not part of the matched comparison).
    extras: tuple[Kernels, ...] = ()


def plan_followups(
    reference: Sequence[int],
    weak: int,
    *,
    steps: int = 3,
    controls: int | None = None,
    random_controls: int = 0,
    seed: int,
    exclude: Collection[Sequence[int]] = (),
    step_size: int = 2,
    max_kernel_factor: int = 3,
) -> FollowupPlan:
    """The two arms of the comparison and random extras.

    Guided: the ``weak`` branch's kernel shrunk by ``step_size``, 2 ``step_size``, ... (up to
    ``steps`` valid kernels); controls: ``controls`` matched to them (default: as many). Both arms
    are what the rule names, whether or not they already ran (a sweep runs only the new ones).
    Extras: ``random_controls`` random one-branch changes, none in ``exclude`` or the arms.
    """
    guided = propose_guided(reference, weak, steps=steps, step_size=step_size)
    matched = propose_matched_controls(reference, weak, guided, seed=seed, count=controls)
    extras = propose_controls(
        reference,
        random_controls,
        seed=seed,
        exclude=_excluded(exclude) | set(guided) | set(matched),
        max_kernel_factor=max_kernel_factor,
        step_size=step_size,
    )
    return FollowupPlan(guided=tuple(guided), controls=tuple(matched), weak=weak, extras=tuple(extras))
