"""``dcn-ray inspect``: the paper's look at F1-F3, for any checkpoint, with the follow-ups it implies."""

from __future__ import annotations

import json
from pathlib import Path

from dcn_ray import models
from dcn_ray.core import context as serial
from dcn_ray.core.analysis import IMAGE_FILES, analyse
from dcn_ray.core.branches import one_seed_tolerance
from dcn_ray.core.dataset import parse_split
from dcn_ray.core.partial import read_truth
from dcn_ray.core.proposals import plan_followups
from dcn_ray.errors import InputError
from dcn_ray.io.paths import folder_written_whole, input_file, output_folder
from dcn_ray.io.tiff import read_stack
from dcn_ray.kernels import BRANCHES, kernels_text
from dcn_ray.track.sources import load_source

SCORES_FILE = "branch_scores.json"
#: Everything inspect writes into its output folder.
OUTPUT_FILES = (*IMAGE_FILES, SCORES_FILE)


def inspect_model(
    source: str,
    stack: Path,
    out_dir: Path,
    *,
    labels: Path | None = None,
    slices: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Score the branches of a model on labelled slices, write the montage and JSON; return a summary.

    ``source`` is any model source of ``predict``: a checkpoint, runs:/, models:/ or sweep:NAME.
    Only a DCN has branches: a model of another family is refused (InputError).
    """
    inputs = {"the model file": source if Path(source).exists() else None, "the image stack": stack, "--labels": labels}
    input_file(stack, "TIFF file")
    if labels is not None:
        input_file(labels, "TIFF file")
    output_folder(out_dir, OUTPUT_FILES, inputs)  # before anything is loaded or written
    loaded = load_source(source, storage=storage, tracking_uri=tracking_uri)
    model, payload = loaded.model, loaded.payload
    family = models.family_of(model)
    if not family.branches:
        raise InputError(
            f"inspect looks at the DCN's branches F1-F3; {loaded.location} is a {family.title} ({family.name}), which has none"
        )
    data = payload.get("config", {}).get("data", {})
    labels = labels or (Path(data["labels"]) if data.get("labels") else None)
    if labels is None:
        raise InputError("inspect needs --labels: the checkpoint names no label stack")
    output_folder(out_dir, OUTPUT_FILES, {**inputs, "the model file": loaded.location, "the labels": labels})
    images = read_stack(stack)
    masks, labelled = read_truth(labels, data)  # partly labelled as the model's data section says
    if images.shape != masks.shape:
        raise InputError(f"image stack {stack} {images.shape} and labels {labels} {masks.shape} differ in shape")
    spec = slices or data.get("split", {}).get("val") or ":"
    chosen = parse_split(spec, images.shape[0], name="--slices")
    kernels = tuple(payload["model_kwargs"]["kernels"])
    with folder_written_whole(out_dir) as partial:  # all of the files, or none
        context = models.context_of(model)  # a model of context N reads each slice with its neighbours
        inputs = serial.gather(images, [serial.neighbours(z, context, len(images)) for z in chosen])
        analysis = analyse(
            model, inputs if context else images[chosen], masks[chosen], partial,
            labelled=None if labelled is None else labelled[chosen],
        )  # fmt: skip
        weak = analysis.weak
        plan = plan_followups(kernels, weak, steps=3, seed=0, exclude=[kernels]) if weak is not None else None
        record = {
            "model": loaded.location,
            "kernels": list(kernels),
            "slices": chosen,
            "scores": [score.__dict__ for score in analysis.scores],
            "weak_branch": analysis.weak_name,
            "guided_followups": [list(k) for k in plan.guided] if plan else [],
            "controls": [list(k) for k in plan.controls] if plan else [],
            "images": [str(out_dir / image.name) for image in analysis.images],
        }
        (partial / SCORES_FILE).write_text(json.dumps(record, indent=2))
    lines = [
        f"{score.name}: calibrated separation {score.calibrated:.4f}  raw {score.separation:.4f}  "
        f"contrast (AUC) {score.contrast:.4f}  "
        f"alone IoU {score.alone_iou:.4f}  drop {score.drop:+.4f}"
        for score in analysis.scores
    ]
    if weak is None:
        lines.append(f"weak branch: none ({cannot_tell(analysis.scores)})")
    else:
        lines.append(f"weak branch: {analysis.weak_name} (kernel k{weak + 1}={kernels[weak]})")
    lines.append("guided follow-ups: " + (", ".join(kernels_text(k) for k in plan.guided) if plan else "") or "none")
    lines.append("matched controls: " + (", ".join(kernels_text(k) for k in plan.controls) if plan else "") or "none")
    lines.append(f"wrote {out_dir / SCORES_FILE} and the F1-F3 montage in {out_dir}")
    return "\n".join(lines)


def cannot_tell(scores) -> str:
    """Why one seed names no branch: the lowest is within the seed spread of another branch."""
    values = [score.calibrated for score in scores]
    if any(value != value for value in values):  # NaN: a branch without a score
        return "a branch's calibrated separation is undefined on these slices"
    lowest = min(range(len(values)), key=lambda b: values[b])
    near = [
        f"{BRANCHES[b]} by {values[b] - values[lowest]:.3f} (seed spread allows {one_seed_tolerance(lowest, b):.3f})"
        for b in range(len(values))
        if b != lowest and values[b] - values[lowest] <= one_seed_tolerance(lowest, b)
    ]
    return (
        f"one seed cannot tell: {BRANCHES[lowest]} is the lowest, but below {', '.join(near)}, within what seeds "
        "vary in the rule's validation; a sweep over seeds decides"
    )
