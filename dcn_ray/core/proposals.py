"""Propose the next kernel configurations: the paper's method, automated (no Ray).

After the reference run, the weak branch (see :func:`dcn_ray.core.branches.weak_branch`)
gets a smaller deconvolution kernel, step by step (the paper's "proposed" rows of
Table 1: (4, 8, 16) with F3 weak -> (4, 8, 14), (4, 8, 12), (4, 8, 10)). The guided
choice is compared with every control matched to it: the same change of k / stride made on
another branch (shrunk), or the weak branch enlarged by the same step; no draw.
Purely random one-branch changes may run beside them as extras.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dcn_ray.kernels import BRANCHES, STRIDES, Kernels, kernel_problem


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
    count: int | None = None,
    max_kernel_factor: int = 3,
) -> list[Kernels]:
    """Every valid control matched to the guided follow-ups: the same change of k / stride, elsewhere.

    A guided follow-up shrinks the weak branch's kernel by d, a change of k / s of -d / s. Its
    matched controls make the same change of k / stride on one other branch b (shrink by
    d s_b / s, where that is a whole number and keeps the kernel >= s_b): "another branch
    shrunk"; and enlarge the weak branch by d (up to ``max_kernel_factor`` times its stride):
    "the weak branch enlarged". All of them, in a fixed order (by guided follow-up, then branch,
    then the enlargement): no draw. ``count`` keeps the first ``count`` of that order.
    """
    base = _reference(reference)
    proposals: list[Kernels] = []
    for target in guided:
        size = base[weak] - tuple(target)[weak]
        options = []
        for branch, stride in enumerate(STRIDES):
            shrink = size * stride / STRIDES[weak]
            if branch != weak and shrink == int(shrink) and base[branch] - int(shrink) >= stride:
                options.append(_with_kernel(base, branch, base[branch] - int(shrink)))
        if base[weak] + size <= STRIDES[weak] * max_kernel_factor:
            options.append(_with_kernel(base, weak, base[weak] + size))
        proposals += [k for k in options if k not in proposals and k not in _excluded(guided)]
    return proposals if count is None else proposals[: _positive_int("count", count, minimum=0)]


def control_kind(reference: Sequence[int], weak: int, control: Sequence[int]) -> str:
    """``shrunk`` (another branch's kernel shrunk) or ``enlarged`` (the weak branch's kernel enlarged)."""
    return "enlarged" if tuple(control)[weak] != tuple(reference)[weak] else "shrunk"


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
    ``steps`` valid kernels); controls: every valid control matched to them (or the first
    ``controls``; see :func:`propose_matched_controls`). Both arms
    are what the rule names, whether or not they already ran (a sweep runs only the new ones).
    Extras: ``random_controls`` random one-branch changes, none in ``exclude`` or the arms.
    """
    guided = propose_guided(reference, weak, steps=steps, step_size=step_size)
    matched = propose_matched_controls(reference, weak, guided, count=controls, max_kernel_factor=max_kernel_factor)
    extras = propose_controls(
        reference,
        random_controls,
        seed=seed,
        exclude=_excluded(exclude) | set(guided) | set(matched),
        max_kernel_factor=max_kernel_factor,
        step_size=step_size,
    )
    return FollowupPlan(guided=tuple(guided), controls=tuple(matched), weak=weak, extras=tuple(extras))
