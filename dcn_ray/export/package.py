"""``dcn-ray export``: a trained model as a BioImage.IO model package (bioimageio.spec 0.5).

The package holds the PyTorch state dict, the architecture as standalone source with the
checkpoint's keyword arguments (:mod:`dcn_ray.export.architecture`), the input as training
read it (unsigned integers divided by their maximum: uint8 by 255), axes ``b, c, y, x`` (``c``:
one slice, or the 2N + 1 slices z-N..z+N of a model of serial-section context N) with
the output's halo set to the model's receptive radius, a test input cut from the first slice of
the job's test split with its expected output, a cover (:mod:`dcn_ray.export.cover`), a README
and, under ``config.dcn_ray``, the training provenance: source, sweep, trial, kernels, the
checkpoint's step and validation scores, and the test scores recomputed here on the test split
as trials score it. ilastik, deepImageJ, QuPath and napari plugins read such packages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from dcn_ray import __version__, models
from dcn_ray.errors import InputError
from dcn_ray.export.architecture import architecture_source, family_of
from dcn_ray.export.cover import render_cover
from dcn_ray.export.description import check_fields, model_description, parse_authors, parse_citations, save_package
from dcn_ray.io.paths import output_file
from dcn_ray.kernels import kernels_text

log = logging.getLogger(__name__)

DEFAULT_LICENSE = "CC-BY-4.0"
TEST_SIDE = 256  # the test input's largest side


@dataclass(frozen=True)
class ExportOptions:
    """What a person adds to a package: who made it, under which licence, what to cite."""

    authors: tuple[str, ...] = ()  # "Name" or "Name;affiliation;ORCID"
    license: str = DEFAULT_LICENSE  # an SPDX identifier
    cite: tuple[str, ...] = ()  # "text;DOI-or-URL", beside the family's paper
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class ExportResult:
    output: Path
    kernels: tuple[int, ...]
    halo: int
    test_scores: dict[str, float]


def export_package(
    source: str,
    output: Path,
    options: ExportOptions = ExportOptions(),
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> ExportResult:
    """Write the BioImage.IO package (a .zip) of the model ``source`` (any source ``predict`` takes)."""
    from dcn_ray.track.sources import load_source

    if output.suffix != ".zip":
        raise InputError(f"{output}: a BioImage.IO package is a .zip file; give OUT.zip")
    # The model file first (a checkpoint named OUT.zip), then, once loaded, everything it names
    output_file(output, {"the model file": source if Path(source).exists() else None})
    authors = parse_authors(options.authors)
    check_fields(authors, options.license)
    extra_citations = parse_citations(options.cite)
    loaded = load_source(source, storage=storage, tracking_uri=tracking_uri)
    payload = loaded.payload
    data = payload.get("config", {}).get("data", {})
    inputs = {"the model file": loaded.location, "data.images": data.get("images"), "data.labels": data.get("labels")}
    output_file(output, {what: str(path) for what, path in inputs.items() if path})
    family, source_code = family_of(payload)
    kwargs = payload["model_kwargs"]
    multiple = family.multiple(kwargs)
    paper, address = family.paper
    cite = [{"text": paper, "url": address}, *extra_citations] if paper else list(extra_citations)
    if not (data.get("split") or {}).get("test"):
        raise InputError(
            f"model {source!r}: its job has no test split (data.split.test); a package needs a held-out test input"
        )
    context = models.context_of(loaded.model)
    dataset = _test_data(data, source, context)
    halo = family.radius(kwargs)
    least = -(-(2 * halo + 1) // multiple) * multiple  # the smallest input that outlives the halo
    image, truth = dataset.test_images[0], dataset.test_masks[0]
    crop = _centre_crop(image.shape, multiple, least, source)
    # the first test slice as the model reads it: (C, Y, X), its 2N + 1 slices z-N..z+N as channels
    channels = dataset.test_inputs[0] if context else image[None]
    channels, truth = channels[(slice(None), *crop)], truth[crop]
    scaling = _input_scaling(data["images"])
    raw, scaled = _as_stored(channels, scaling)
    from dcn_ray.core.train import score_test_split

    test_scores = score_test_split(loaded.model, dataset, torch.device("cpu"))
    with torch.inference_mode():
        out = loaded.model(torch.from_numpy(scaled)[None])
    logits = out[0] if isinstance(out, tuple) else out
    probability = torch.softmax(logits, dim=1)[:, 1:2].numpy()
    branches = [b[0].numpy() for b in out.branches] if hasattr(out, "branches") else None
    kernels = tuple(payload.get("kernels") or payload["model_kwargs"].get("kernels") or ())
    provenance = _provenance(loaded, family.name, family.title, kernels, test_scores, dataset.test_slices)
    with tempfile.TemporaryDirectory(prefix="dcn-export-") as folder:
        work = Path(folder)
        files = _write_files(work, loaded, source_code, raw, scaled, probability, truth, branches, provenance, halo)
        title = f"{family.title} {provenance['kernels']}".strip()
        descr = model_description(
            files,
            name=options.name or f"dcn-ray {title}"[:128],
            description=options.description
            or f"{title} trained with dcn-ray on {provenance['sweep'] or 'an EM stack'}: foreground probability of EM slices",
            authors=authors,
            cite=cite,
            license=options.license,
            provenance=provenance,
            scaling=scaling,
            halo=halo,
            least=least,
            multiple=multiple,
            context=context,
        )
        save_package(descr, output)
    log.debug("wrote %s (kernels %s, halo %d)", output, kernels_text(kernels) if kernels else "-", halo)
    return ExportResult(output, kernels, halo, test_scores)


# ----------------------------------------------------------------------------- data


def _test_data(data: dict[str, Any], source: str, context: int):
    from dcn_ray.core.dataset import load_dataset

    for key in ("images", "labels"):
        if not data.get(key) or not Path(str(data[key]).partition(":/")[0]).exists():
            raise InputError(
                f"model {source!r}: its job's data.{key} {data.get(key)!r} is not here; a package needs its test split"
            )
    split = data["split"]
    return load_dataset(
        data["images"], data["labels"], foreground=data.get("foreground", 255), train=split["train"],
        val=split["val"], test=split["test"], roi=data.get("roi"), context=context,
    )  # fmt: skip


def _centre_crop(shape: Sequence[int], multiple: int, least: int, source: str) -> tuple[slice, slice]:
    sides = [min(side // multiple * multiple, TEST_SIDE // multiple * multiple) for side in shape]
    if min(sides) < least:
        raise InputError(
            f"model {source!r}: its test slices ({shape[0]} x {shape[1]}) are smaller than {least} pixels, "
            "twice its receptive radius: no valid test input"
        )
    return tuple(slice((full - side) // 2, (full - side) // 2 + side) for full, side in zip(shape, sides))  # type: ignore[return-value]


def _input_scaling(images: str) -> tuple[np.dtype, float, float]:
    """(stored dtype, offset, factor): training read ``clip((value - offset) * factor, 0, 1)``.

    TIFF volumes do not say their dtype here; an unsigned one is known by its factor (1 / max).
    """
    from dcn_ray.io.volumes import open_volume

    volume = open_volume(images)
    offset, factor = volume.scaling
    if volume.dtype:
        dtype = np.dtype(volume.dtype)
    else:
        by_factor = {1.0 / np.iinfo(t).max: np.dtype(t) for t in (np.uint8, np.uint16, np.uint32)}
        dtype = by_factor.get(factor, np.dtype(np.float32)) if offset == 0 else np.dtype(np.float32)
    if dtype.kind not in "uf":
        dtype = np.dtype(np.float32)
    return dtype, float(offset), float(factor)


def _as_stored(image: np.ndarray, scaling: tuple[np.dtype, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(the (C, Y, X) test input as a user's file holds it, (1, C, Y, X); what the model sees after
    preprocessing, (C, Y, X))."""
    dtype, offset, factor = scaling
    raw = image / factor + offset if factor else np.full_like(image, offset)
    raw = np.rint(raw).astype(dtype) if dtype.kind == "u" else raw.astype(np.float32)
    scaled = np.clip((raw.astype(np.float32) - np.float32(offset)) * np.float32(factor), 0.0, 1.0)
    return raw[None], scaled


# ----------------------------------------------------------------------------- files and description


def _write_files(
    work: Path, loaded, family, raw, scaled, probability, truth, branches, provenance, halo
) -> dict[str, Path]:
    files = {
        "weights": work / "weights.pt",
        "architecture": work / f"{provenance['family']}_architecture.py",
        "test_input": work / "test_input.npy",
        "test_output": work / "test_output.npy",
        "sample_input": work / "sample_input.tif",
        "sample_output": work / "sample_output.tif",
        "cover": work / "cover.png",
        "readme": work / "README.md",
    }
    torch.save(loaded.payload["weights"], files["weights"])
    files["architecture"].write_text(architecture_source(family))
    np.save(files["test_input"], raw)
    np.save(files["test_output"], probability.astype(np.float32))
    # what a viewer shows: one (Y, X) image each, or the (C, Y, X) slices a model of context N reads
    tifffile.imwrite(files["sample_input"], raw[0, 0] if raw.shape[1] == 1 else raw[0], photometric="minisblack")
    tifffile.imwrite(files["sample_output"], probability[0, 0].astype(np.float32))
    scores = provenance["test_scores"]
    lines = [provenance["model"], f"halo {halo} px"]
    lines += [
        f"test {key[5:]} {value:.3f}"
        for key, value in scores.items()
        if key in ("test_iou", "test_vrand", "test_object_f1")
    ]
    render_cover(scaled[len(scaled) // 2], probability[0, 0], truth, branches, files["cover"], lines=lines)
    files["readme"].write_text(_readme(provenance, halo))
    return files


def _readme(provenance: dict[str, Any], halo: int) -> str:
    scores = "\n".join(f"| {key} | {value:.4f} |" for key, value in provenance["test_scores"].items())
    return f"""# {provenance["family_title"]}, {provenance["model"]}

Trained with dcn-ray {provenance["dcn_ray_version"]} (source `{provenance["source"]}`, sweep `{provenance["sweep"]}`).
Input: {_input_text(provenance["context"])} (axes b, c, y, x); unsigned integers are divided by their maximum, as in training.
Output: the foreground probability (the class the training labels marked, data.foreground {provenance["foreground"]}).
Tile with a halo of {halo} pixels.

## Validation

Scored on the job's held-out test split (slices {provenance["test_slices"]}), argmax prediction:

| score | value |
|---|---|
{scores}
"""


def _input_text(context: int) -> str:
    if not context:
        return "one EM slice"
    return (
        f"{2 * context + 1} consecutive EM slices z-{context}..z+{context} as channels, to predict slice z "
        f"(serial-section context {context}; at a stack's ends the missing slices are reflected: z-1 of the "
        "first slice is slice 1)"
    )


def _provenance(loaded, family: str, title: str, kernels, test_scores, test_slices) -> dict[str, Any]:
    payload = loaded.payload
    config = payload.get("config", {})
    weights = hashlib.sha256(json.dumps(sorted(payload["weights"])).encode()).hexdigest()[:12]
    return {
        "source": loaded.source,
        "location": os.path.basename(str(loaded.location)) if Path(str(loaded.location)).exists() else loaded.location,
        "sweep": config.get("name", ""),
        "trial": _trial_of(loaded),
        "mlflow_run_id": loaded.mlflow_run_id,
        "family": family,
        "family_title": title,
        "kernels": kernels_text(kernels) if kernels else "",
        "model": models.get(family).describe(payload["model_kwargs"]),
        "foreground": (config.get("data") or {}).get("foreground"),
        "model_kwargs": dict(payload["model_kwargs"]),
        "context": models.context_of(loaded.model),
        "seed": (config.get("train") or {}).get("seed"),
        "step": payload.get("step"),
        "validation": {k: float(v) for k, v in (payload.get("metrics") or {}).items() if isinstance(v, (int, float))},
        "test_scores": {k: float(v) for k, v in test_scores.items()},
        "test_slices": [int(z) for z in test_slices],
        "weights_keys": weights,
        "dcn_ray_version": __version__,
    }


def _trial_of(loaded) -> str:
    """The Tune trial folder a local checkpoint lies in (``""`` for files elsewhere and MLflow sources)."""
    path = Path(str(loaded.location))
    if not path.exists():
        return ""
    return next((part for part in reversed(path.parts[:-1]) if "_" in part and not part.startswith("checkpoint_")), "")
