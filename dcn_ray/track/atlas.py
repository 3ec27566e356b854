"""A sweep's branch atlas from MLflow: each chosen trial's logged ``feature_maps/`` images, rendered.

Every DCN trial logs F1-F3 and its fused prediction against the truth for the first validation
slice (:func:`dcn_ray.core.analysis.analyse`), so the atlas reads those images: no model is loaded
or run again, the slice is the same for every trial, and a row costs four small downloads, scaled
down on arrival (:class:`~dcn_ray.core.atlas.AtlasStyle`). Families without branches log no maps
and are left out, and the atlas says so.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from dcn_ray.core import atlas as render
from dcn_ray.core.atlas import HTML_FILE, PNG_FILE, Atlas, AtlasRow, AtlasStyle
from dcn_ray.core.scores import TEST_HEADLINE
from dcn_ray.errors import InputError, first_line
from dcn_ray.kernels import BRANCHES, kernels_text
from dcn_ray.results import report
from dcn_ray.track import uris

log = logging.getLogger(__name__)

#: The artifact folder of a trial's images and the files the atlas reads (core.analysis.IMAGE_FILES).
FEATURE_MAPS = "feature_maps"
MAP_FILES = tuple(f"{name}.png" for name in BRANCHES)
FUSED_FILE, MONTAGE_FILE = "prediction_overlay.png", "F1-F3_montage.png"
DEFAULT_STYLE = AtlasStyle()
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
#: Trials in a row without images after which the rest are not asked for (none found yet).
GIVE_UP = 3


def build(
    table: pa.Table, uri: str, reference: Sequence[int], style: AtlasStyle = DEFAULT_STYLE, *, sweep: str = ""
) -> Atlas:
    """The atlas of a results table, its images read from each chosen trial's MLflow run."""
    from mlflow.tracking import MlflowClient

    key, label = report.headline(table)
    chosen, notes = render.choose_rows(table.to_pylist(), reference, style.max_rows)
    client = MlflowClient(uri)
    rows: list[AtlasRow] = []
    missing: list[str] = []
    source = None
    with tempfile.TemporaryDirectory(prefix="dcn-atlas-") as folder:
        for index, row in enumerate(chosen):
            if len(missing) >= GIVE_UP and not rows:  # the store is down, or no run has maps: do not wait on each
                missing += [_name(r) for r in chosen[index:]]
                break
            here = Path(folder) / str(index)
            try:
                images = [_download(client, row["mlflow_run_id"], name, here) for name in (*MAP_FILES, FUSED_FILE)]
                if source is None:
                    with Image.open(images[0]) as first:
                        size = first.size
                    source = _input_of(_download(client, row["mlflow_run_id"], MONTAGE_FILE, here), size, style.panel)
            except Exception as error:  # no feature maps in that run (an old sweep, a removed artifact)
                log.debug("atlas: no feature maps for %s: %s", row.get("trial_id"), first_line(error))
                missing.append(_name(row))
                continue
            rows.append(_row(row, images, key, reference, style.panel))
    if missing:
        notes.append(f"{len(missing)} trial(s) without logged feature maps are left out: {', '.join(missing[:8])}")
    if key != TEST_HEADLINE:
        notes.append(f"no test split: the score is the {label}, from the slices that chose the checkpoint")
    named = f" of sweep '{sweep}'" if sweep else ""
    title = f"Branch atlas{named}: F1-F3 and fused output on the first validation slice, rows by (k1, k2, k3)"
    return Atlas(title=title, score_label=label, rows=tuple(rows), input=source, notes=tuple(notes))


def for_sweep(table: pa.Table, uri: str, folder: Path, reference: Sequence[int]) -> list[Path]:
    """Write the atlas PNG and HTML into a sweep's results ``folder``; [] (and a warning) if it cannot be made.

    A picture never fails a sweep whose trials are done.
    """
    try:
        atlas = build(table, uri, reference)
        if not atlas.rows:
            log.info("no branch atlas: no trial with logged feature maps")
            return []
        return [render.render_png(atlas, folder / PNG_FILE), render.render_html(atlas, folder / HTML_FILE)]
    except Exception as error:  # matplotlib, PIL, MLflow: the results table matters more
        log.warning("no branch atlas: %s", first_line(error))
        return []


def write_from_sweep(name: str, storage: str | None, out_dir: Path, style: AtlasStyle = DEFAULT_STYLE) -> list[Path]:
    """``dcn-ray report NAME --atlas DIR``: the atlas of a finished sweep, written whole into ``out_dir``.

    Refused (InputError) when ``out_dir`` would touch an input (the sweep's folder, the MLflow
    store, the job's data) or replace a file that is not a branch atlas.
    """
    from mlflow.tracking import MlflowClient

    from dcn_ray.io.paths import folder_written_whole, output_folder

    store, record, job, uri = check_folder(name, storage, out_dir)
    uris.check_store(uri, must_exist=True)
    artifacts = _local_artifacts(MlflowClient(uri), str(record.get("experiment_id", "")))
    if artifacts is not None:
        output_folder(out_dir, (PNG_FILE, HTML_FILE), {"the MLflow artifact store": artifacts})
    reference = tuple(job.sweep.followup.reference)
    atlas = build(store.read_table(name, report.TABLE_FILE), uri, reference, style, sweep=name)
    if not atlas.rows:
        raise InputError(f"sweep '{name}' has no finished trial with logged feature maps (a DCN's F1-F3)")
    with folder_written_whole(out_dir) as partial:  # both files, or neither
        render.render_png(atlas, partial / PNG_FILE)
        render.render_html(atlas, partial / HTML_FILE)
    return [out_dir / PNG_FILE, out_dir / HTML_FILE]


def _download(client: Any, run_id: str, name: str, folder: Path) -> Path:
    """One file of a run's ``feature_maps/``, without MLflow's progress bar (a line per file otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_downloads():
        return Path(client.download_artifacts(run_id, f"{FEATURE_MAPS}/{name}", str(folder)))


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    before = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = before


def _input_of(montage: Path, size: tuple[int, int], side: int) -> np.ndarray:
    """The input slice: the first panel (``size`` = width, height) of a trial's F1-F3 montage."""
    with Image.open(montage) as picture:
        return render.panel(picture.crop((0, 0, *size)), side)


def _row(row: Mapping[str, Any], images: list[Path], key: str, reference: Sequence[int], side: int) -> AtlasRow:
    """The atlas row of a results-table row: its F1, F2, F3 and fused images (``images``), scaled."""

    def scaled(path: Path):
        with Image.open(path) as picture:
            return render.panel(picture, side)

    scores = tuple(_number(row.get(f"calibrated_{name}")) for name in BRANCHES)
    return AtlasRow(
        config=_name(row),
        kernels=(row["k1"], row["k2"], row["k3"]),
        seed=row.get("seed"),
        phase=str(row.get("phase") or ""),
        reference=render.is_reference(row, reference),
        maps=(scaled(images[0]), scaled(images[1]), scaled(images[2])),
        fused=scaled(images[3]),
        branch_scores=scores,  # type: ignore[arg-type]
        weak=row.get("weak_branch"),
        score=_number(row.get(key)),
    )


def _local_artifacts(client: Any, experiment_id: str) -> str | None:
    """The experiment's artifact folder when it is on this machine (file:), else None."""
    from urllib.parse import unquote, urlparse

    try:
        location = client.get_experiment(experiment_id).artifact_location
    except Exception as error:  # an experiment removed since: the atlas then finds no run either
        log.debug("atlas: no experiment %s: %s", experiment_id, first_line(error))
        return None
    if location.startswith("file:"):
        return unquote(urlparse(location).path)
    return location if location.startswith("/") else None


def _name(row: Mapping[str, Any]) -> str:
    return row.get("config") or kernels_text((row["k1"], row["k2"], row["k3"]))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None


def check_folder(name: str, storage: str | None, out_dir: Path) -> tuple[Any, Mapping, Any, str]:
    """Before any work: sweep ``name`` has results and ``out_dir`` touches none of its inputs (the
    sweep's folder, the MLflow store, the job's data) nor replaces a file that is not an atlas."""
    from dcn_ray.io.paths import output_folder
    from dcn_ray.job.config import job_from_record
    from dcn_ray.track.storage import SWEEP_FILE, Storage

    store = Storage.for_sweeps(storage)
    if not name or not store.exists(name, SWEEP_FILE):
        raise InputError(f"no sweep '{name}' in {store.root} (give --storage where it was run)")
    if not store.exists(name, report.TABLE_FILE):
        raise InputError(f"sweep '{name}' in {store.root} has no results yet")
    record = store.read_record(name)
    if not isinstance(record.get("job"), Mapping) or not isinstance(record.get("tracking_uri"), str):
        raise InputError(f"{store.folder(name)}/{SWEEP_FILE}: damaged sweep record (no job or tracking_uri)")
    job, uri = job_from_record(dict(record["job"])), record["tracking_uri"]
    inputs: dict[str, Any] = {"data.images": job.data.images, "data.labels": job.data.labels}
    if store.is_local:
        inputs["the sweep's folder"] = store.folder(name)
    if uri.startswith("sqlite:///"):
        inputs["the MLflow store"] = uri[len("sqlite:///") :]
    output_folder(out_dir, (PNG_FILE, HTML_FILE), inputs)  # before MLflow is asked anything
    for file in (PNG_FILE, HTML_FILE):
        if (out_dir / file).exists() and not render.is_atlas_file(out_dir / file):
            raise InputError(f"{out_dir / file}: exists and is not a branch atlas dcn-ray wrote; choose another folder")
    return store, record, job, uri
