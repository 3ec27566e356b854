"""The deconvolution kernel rules of the DCN side branches (no torch: usable anywhere)."""

from __future__ import annotations

from collections.abc import Sequence

#: Upsampling stride of the side branches F1, F2, F3 (1/2, 1/4, 1/8 resolution).
STRIDES: tuple[int, int, int] = (2, 4, 8)
BRANCHES: tuple[str, str, str] = ("F1", "F2", "F3")
#: The paper's default kernels, the reference of every comparison.
REFERENCE: tuple[int, int, int] = (4, 8, 16)

Kernels = tuple[int, int, int]

#: The 16 (k1, k2, k3) rows of the paper's Table 1, in its order (the first is the reference;
#: the next three are its "proposed" rows with F3's kernel shrunk).
TABLE1: tuple[Kernels, ...] = (
    (4, 8, 16), (4, 8, 10), (4, 8, 12), (4, 8, 14), (2, 8, 16), (6, 8, 16), (4, 6, 16), (4, 10, 16),
    (4, 8, 18), (4, 8, 20), (2, 4, 10), (2, 4, 20), (2, 8, 20), (4, 10, 18), (2, 6, 16), (2, 8, 18),
)  # fmt: skip


def kernel_problem(kernels: Sequence[object]) -> str | None:
    """Why ``kernels`` is not a valid (k1, k2, k3) triple, or None when it is.

    A branch of stride s needs an integer kernel k >= s, so that the transposed
    convolution covers every output pixel.
    """
    if isinstance(kernels, (str, bytes)) or len(kernels) != 3:
        return f"kernels must be three integers [k1, k2, k3], got {kernels!r}"
    for index, (k, stride) in enumerate(zip(kernels, STRIDES)):
        name = f"k{index + 1}"
        if isinstance(k, bool) or not isinstance(k, int):
            return f"{name} of branch {BRANCHES[index]} must be an integer, got {k!r}"
        if k < stride:
            return (
                f"{name}={k} is invalid for branch {BRANCHES[index]}: "
                f"the kernel must be at least the branch stride {stride}"
            )
    return None


def check_kernels(kernels: Sequence[object]) -> Kernels:
    """Return ``kernels`` as a tuple, or raise ValueError naming the bad branch."""
    problem = kernel_problem(kernels)
    if problem:
        raise ValueError(problem)
    return tuple(kernels)  # type: ignore[return-value]


def branch_name(weak: object) -> str | None:
    """The weak branch as dcn-ray passes it, its name: ``F1``-``F3``, or ``none`` when no branch is clearly
    the weakest; None when unknown. A number (the branch's index, -1 for none: MLflow's metric
    ``weak_branch``, an older sweep's results) is read as the name it stands for.

    >>> branch_name("F3"), branch_name(2.0), branch_name(-1), branch_name(None), branch_name("not applicable (unet)")
    ('F3', 'F3', 'none', None, None)
    """
    if isinstance(weak, str):
        return weak if weak in (*BRANCHES, "none") else None
    if isinstance(weak, bool) or not isinstance(weak, (int, float)) or weak != weak:
        return None
    return BRANCHES[int(weak)] if 0 <= weak < len(BRANCHES) else "none"


def kernels_text(kernels: Sequence[int]) -> str:
    """The triple as the paper writes it: ``4-8-16``."""
    return "-".join(str(k) for k in kernels)


def relative_change(reference: Sequence[int], kernels: Sequence[int]) -> tuple[int, float] | None:
    """(branch, change of k / stride) of a one-branch change of ``reference``; None for another change.

    ``relative_change((4, 8, 16), (4, 8, 12))`` is ``(2, -0.5)``: F3's kernel shrank by half its
    stride. Matched controls are matched on this change, not on the kernel step: 16 -> 14 on F3
    changes k / s by as much as 8 -> 7 on F2, while 4 -> 2 on F1 halves it.
    """
    changed = [index for index, (a, b) in enumerate(zip(reference, kernels)) if a != b]
    if len(changed) != 1:
        return None
    branch = changed[0]
    return branch, (kernels[branch] - reference[branch]) / STRIDES[branch]
