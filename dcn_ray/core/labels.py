"""Labels checked slice by slice before anything trains: unlabelled slices and odd ones, named.

A slice whose annotation is missing looks like a slice without foreground: in training it teaches
that everything there is background, in validation or test it turns every correct detection into a
false positive (one such test slice cost a user 0.12 test IoU). Nothing here can tell a missing
annotation from a truly empty slice, so it names them: the dry run and a sweep's first lines say
which slices have no foreground or a foreground fraction far from the stack's, and an empty
validation or test slice is a warning naming the key that accepts it (``data.allow_empty_slices``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: A slice is far from the stack when its foreground fraction is below 1/FAR or above FAR times the median
#: of the labelled slices' (the median: one odd slice does not move it).
FAR = 5.0
#: The key that accepts empty validation or test slices.
ACCEPT_KEY = "data.allow_empty_slices"


@dataclass(frozen=True)
class LabelCheck:
    """Per-slice foreground fractions of a label stack and what stands out."""

    fractions: tuple[float, ...]
    #: The foreground fraction over the slices that have any foreground (0.0 where none has).
    stack: float

    def __post_init__(self) -> None:
        if not all(0.0 <= f <= 1.0 or np.isnan(f) for f in self.fractions) or not 0.0 <= self.stack <= 1.0:
            raise ValueError("foreground fractions lie in [0, 1] (NaN: a slice without a labelled pixel)")

    @classmethod
    def of(cls, masks: np.ndarray, labelled: np.ndarray | None = None) -> LabelCheck:
        """The check of a (Z, Y, X) bool label stack; with ``labelled`` (partly labelled data) the
        fractions are of the labelled pixels, NaN for a slice without one (not named as empty)."""
        flat = masks.reshape(masks.shape[0], -1)
        if labelled is None:
            counts, foreground = np.full(len(flat), flat.shape[1]), flat.sum(axis=1)
        else:
            known = labelled.reshape(flat.shape)
            counts, foreground = known.sum(axis=1), (flat & known).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_slice = np.where(counts > 0, foreground / np.maximum(counts, 1), np.nan)
        has = per_slice > 0
        stack = float(foreground[has].sum() / counts[has].sum()) if has.any() else 0.0
        return cls(tuple(float(f) for f in per_slice), stack)

    @property
    def empty(self) -> tuple[int, ...]:
        """Slices without a foreground pixel."""
        return tuple(z for z, f in enumerate(self.fractions) if f == 0.0)

    @property
    def typical(self) -> float:
        """The median foreground fraction of the labelled slices (0.0 where none is)."""
        labelled = [f for f in self.fractions if f > 0.0]
        return float(np.median(labelled)) if labelled else 0.0

    @property
    def far(self) -> tuple[int, ...]:
        """Labelled slices whose fraction is off the :attr:`typical` one by more than a factor :data:`FAR`."""
        low, high = self.typical / FAR, self.typical * FAR
        return tuple(z for z, f in enumerate(self.fractions) if f > 0.0 and not low <= f <= high)


def label_lines(check: LabelCheck, splits: Mapping[str, Sequence[int]], *, allow_empty: bool = False) -> list[str]:
    """What the dry run and a sweep's first lines say about the labels; warnings start with ``warning:``.

    ``splits``: slice indices by split name (``train``, ``val``, ``test``), of the stack ``check`` measured.
    """
    fractions = check.fractions
    known = [f for f in fractions if not np.isnan(f)] or [0.0]
    lines = [
        f"labels: {len(fractions)} slices, foreground {_percent(check.stack)} of the labelled slices' pixels "
        f"(per slice {_percent(min(known))} to {_percent(max(known))})"
    ]
    role = {z: name for name, slices in splits.items() for z in slices}
    used = [z for z in check.empty if z in role]
    if used:
        lines.append(f"labels: no foreground in {_named(used, role)}: annotation missing?")
    far = [z for z in check.far if z in role]
    if far:
        lines.append(
            f"labels: more than a factor {FAR:g} from the median slice's {_percent(check.typical)} foreground: "
            + ", ".join(f"slice {z} ({role[z]}) {_percent(fractions[z])}" for z in far)
        )
    held_out = [z for z in check.empty if role.get(z) in ("val", "test")]
    if held_out and not allow_empty:
        lines.append(
            f"warning: {_named(held_out, role)} without any foreground pixel: every foreground the model finds "
            "there counts as a false positive. Fix the labels, move the slice out of its split, or, if it is "
            f"truly empty, accept it with {ACCEPT_KEY}: true (--set {ACCEPT_KEY}=true)"
        )
    elif held_out:
        lines.append(f"labels: {_named(held_out, role)} accepted without foreground ({ACCEPT_KEY})")
    return lines


def _named(slices: Sequence[int], role: Mapping[int, str]) -> str:
    parts = [f"{z} ({role[z]})" for z in slices]
    return ("slice " if len(parts) == 1 else "slices ") + ", ".join(parts)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"
