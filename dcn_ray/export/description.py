"""The bioimageio.spec 0.5 model description of an export, and writing it as a package."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcn_ray.errors import InputError, first_line
from dcn_ray.export.architecture import EXPORTED_CLASS
from dcn_ray.io.paths import partial_prefix


def parse_authors(given: Sequence[str]) -> list[dict[str, str]]:
    """``"Name"`` or ``"Name;affiliation;ORCID"`` -> author fields; the name is required."""
    authors = []
    for text in given:
        name, affiliation, orcid = ([part.strip() for part in text.split(";")] + ["", ""])[:3]
        if not name or text.count(";") > 2:
            raise InputError(f"--author {text!r}: give NAME or NAME;AFFILIATION;ORCID")
        authors.append({"name": name, **({"affiliation": affiliation} if affiliation else {})})
        if orcid:
            authors[-1]["orcid"] = orcid
    return authors


def check_fields(authors: list[dict[str, str]], license: str) -> None:
    """Authors and licence as bioimage.io takes them, before any model is loaded."""
    from bioimageio.spec.model import v0_5 as m
    from pydantic import TypeAdapter, ValidationError

    for author in authors:
        try:
            m.Author(**author)
        except ValidationError as error:
            raise InputError(f"--author {author['name']!r}: {first_line(error.errors()[0]['msg'], 200)}") from None
    try:
        TypeAdapter(m.LicenseId).validate_python(license)
    except ValidationError:
        raise InputError(f"--license {license!r}: not an SPDX licence identifier (e.g. CC-BY-4.0, MIT)") from None


def parse_citations(given: Sequence[str]) -> list[dict[str, str]]:
    """``"text;10.xxxx/yyy"`` (a DOI) or ``"text;https://..."`` -> citation fields."""
    entries = []
    for text in given:
        words, _, where = (part.strip() for part in text.rpartition(";"))
        if not words or not where:
            raise InputError(f"--cite {text!r}: give TEXT;DOI or TEXT;URL")
        entries.append({"text": words, ("url" if where.startswith(("http://", "https://")) else "doi"): where})
    return entries


def model_description(
    files: Mapping[str, Path],
    *,
    name: str,
    description: str,
    authors: list[dict[str, str]],
    cite: list[dict[str, str]],
    license: str,
    provenance: dict[str, Any],
    scaling: tuple[np.dtype, float, float],
    halo: int,
    least: int,
    multiple: int,
    context: int = 0,
):
    """The ModelDescr: one input ``raw`` (b, c, y, x), one output ``foreground`` of the same size with a halo.

    A model of serial-section context N takes 2N + 1 channels, the slices z-N..z+N (``z_m2`` ..
    ``z`` .. ``z_p2``), and predicts slice z: the channel axis is what bioimageio.core and deepImageJ
    feed as they are, where a ``z`` axis of 2N + 1 would be read as a 3-D input with a 3-D output."""
    from bioimageio.spec.model import v0_5 as m
    from pydantic import ValidationError

    dtype, offset, factor = scaling  # as training read the stack: clip((value - offset) * factor, 0, 1)
    data = m.IntervalOrRatioDataDescr(type=str(dtype))
    steps = [
        m.EnsureDtypeDescr(kwargs=m.EnsureDtypeKwargs(dtype="float32")),
        m.ScaleLinearDescr(kwargs=m.ScaleLinearKwargs(gain=factor, offset=-offset * factor or 0.0)),
        m.ClipDescr(kwargs=m.ClipKwargs(min=0.0, max=1.0)),
        m.EnsureDtypeDescr(kwargs=m.EnsureDtypeKwargs(dtype="float32")),  # else the input's dtype is restored
    ]
    raw, out = m.TensorId("raw"), m.TensorId("foreground")
    size = m.ParameterizedSize(min=least, step=multiple)
    try:
        inputs = m.InputTensorDescr(
            id=raw,
            description=_input_description(context, dtype),
            axes=[
                m.BatchAxis(),
                m.ChannelAxis(channel_names=channel_names(context)),
                m.SpaceInputAxis(id=m.AxisId("y"), size=size),
                m.SpaceInputAxis(id=m.AxisId("x"), size=size),
            ],
            test_tensor=m.FileDescr(source=files["test_input"]),
            sample_tensor=m.FileDescr(source=files["sample_input"]),
            data=data,
            preprocessing=steps,
        )
        outputs = m.OutputTensorDescr(
            id=out,
            description="foreground probability (the class the training labels marked as foreground)",
            axes=[
                m.BatchAxis(),
                m.ChannelAxis(channel_names=[m.Identifier("foreground")]),
                *(
                    m.SpaceOutputAxisWithHalo(
                        id=m.AxisId(axis), size=m.SizeReference(tensor_id=raw, axis_id=m.AxisId(axis)), halo=halo
                    )
                    for axis in ("y", "x")
                ),
            ],
            test_tensor=m.FileDescr(source=files["test_output"]),
            sample_tensor=m.FileDescr(source=files["sample_output"]),
            data=m.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )
        weights = m.WeightsDescr(
            pytorch_state_dict=m.PytorchStateDictWeightsDescr(
                source=files["weights"],
                architecture=m.ArchitectureFromFileDescr(
                    source=files["architecture"],
                    callable=m.Identifier(EXPORTED_CLASS),
                    kwargs=dict(provenance["model_kwargs"]),
                ),
                pytorch_version=m.Version(torch.__version__.split("+")[0]),
            )
        )
        return m.ModelDescr(
            name=name,
            description=description,
            authors=[m.Author(**author) for author in authors],
            cite=[m.CiteEntry(**entry) for entry in cite],
            license=m.LicenseId(license),
            documentation=m.FileDescr(source=files["readme"]),
            covers=[m.FileDescr(source=files["cover"])],
            tags=["electron-microscopy", "segmentation", "2d", "pytorch", provenance["family"], "dcn-ray"],
            inputs=[inputs],
            outputs=[outputs],
            weights=weights,
            config=m.Config(dcn_ray=provenance),  # type: ignore[call-arg]
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {first_line(e['msg'], 200)}" for e in error.errors()[:3]
        )
        raise InputError(f"the package description is invalid: {problems}") from None


def channel_names(context: int) -> list:
    """The input's channels: ``em`` for one slice; ``z_m2, z_m1, z, z_p1, z_p2`` for context 2."""
    from bioimageio.spec.model import v0_5 as m

    if not context:
        return [m.Identifier("em")]
    names = [f"z_m{-d}" if d < 0 else f"z_p{d}" if d > 0 else "z" for d in range(-context, context + 1)]
    return [m.Identifier(name) for name in names]


def _input_description(context: int, dtype: np.dtype) -> str:
    if not context:
        return f"an EM slice as stored ({dtype}); scaled to [0, 1] as in training"
    return f"EM slices z-{context}..z+{context} as channels ({dtype}), to predict slice z; reflect at stack ends"


def save_package(descr, output: Path) -> Path:
    """Write the package under a temporary name in ``output``'s folder, then rename."""
    from bioimageio.spec import save_bioimageio_package

    partial = output.with_name(partial_prefix(output) + "package.zip")
    try:
        save_bioimageio_package(descr, output_path=partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output
