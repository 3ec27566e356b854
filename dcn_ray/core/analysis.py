"""Look at a trained DCN the way the paper did: branch maps F1-F3, their scores, the weak branch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcn_ray.core.branches import BranchScore, score_branches, weak_branch
from dcn_ray.core.context import centre
from dcn_ray.core.render import branch_image, render_montage, render_overlay, save_png
from dcn_ray.kernels import BRANCHES
from dcn_ray.models.dcn import DCN, MULTIPLE
from dcn_ray.models.outputs import pad_forward

#: The images analyse writes: the F1-F3 maps, their montage, the prediction overlay.
IMAGE_FILES = (*(f"{name}.png" for name in BRANCHES), "F1-F3_montage.png", "prediction_overlay.png")


@dataclass(frozen=True)
class Analysis:
    scores: tuple[BranchScore, BranchScore, BranchScore]
    #: The weak branch's index, or None when no branch is clearly the weakest.
    weak: int | None
    #: The images written: F1-F3 maps, montage, overlay.
    images: tuple[Path, ...]

    @property
    def weak_name(self) -> str:
        """``F3``, or ``none`` when no branch is clearly the weakest."""
        return BRANCHES[self.weak] if self.weak is not None else "none"

    def metrics(self) -> dict[str, float]:
        """The branch scores as MLflow metrics, and ``weak_branch`` as MLflow holds it: the index (-1 for
        none; :func:`dcn_ray.kernels.branch_name` reads it back). Everywhere else the branch goes by name."""
        merged: dict[str, float] = {"weak_branch": float(self.weak if self.weak is not None else -1)}
        for score in self.scores:
            merged.update(score.as_metrics())
        return merged


def branch_logits(model: DCN, images: np.ndarray, device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The three branch logit maps of every slice: 3 arrays (Z, 2, Y, X), F1..F3.

    ``images`` (Z, Y, X), or (Z, 2N + 1, Y, X) inputs of a model of context N."""
    model = model.to(device).eval()
    maps: list[list[np.ndarray]] = [[], [], []]
    with torch.no_grad():
        for image in images:
            batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            batch = batch[None, None] if batch.ndim == 2 else batch[None]
            output = pad_forward(model, batch.to(device), MULTIPLE)
            for index, branch in enumerate(output.branches):
                maps[index].append(branch[0].float().cpu().numpy())
    return [np.stack(branch) for branch in maps]


def analyse(
    model: DCN,
    images: np.ndarray,
    masks: np.ndarray,
    out_dir: Path,
    *,
    device: torch.device | str = "cpu",
    labelled: np.ndarray | None = None,
) -> Analysis:
    """Score F1-F3 on (Z, Y, X) validation slices (or their (Z, 2N + 1, Y, X) inputs for a model of
    context N) and write their images for the first slice.

    Partly labelled truth: the branches are scored on the ``labelled`` pixels alone (every branch
    score is a score of pixels)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    branches = branch_logits(model, images, device)
    images = centre(images)  # the slices themselves, for the pictures
    if labelled is None:
        scores = score_branches(branches, masks)
    else:  # the labelled pixels as one (1, 1, N) slice
        picked = [np.moveaxis(branch, 1, -1)[labelled].T[None, :, None, :] for branch in branches]
        scores = score_branches(picked, masks[labelled][None, None, :])
    weak = weak_branch(scores)
    written = []
    for name, branch in zip(IMAGE_FILES, branches):
        written.append(save_png(branch_image(branch[0]), out_dir / name))
    written.append(render_montage(images[0], [b[0] for b in branches], out_dir / IMAGE_FILES[3], scores=scores))
    fused = sum(branches)
    prediction = fused[0].argmax(0) == 1
    written.append(render_overlay(images[0], prediction, masks[0], out_dir / IMAGE_FILES[4]))
    return Analysis(scores=scores, weak=weak, images=tuple(Path(p) for p in written))
