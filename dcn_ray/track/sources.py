"""Where a trained model comes from, and registering a sweep's best model in MLflow.

A MODEL source is one of:

- a checkpoint file (``model.pt``) or folder (holding ``model.pt``, or Tune's
  ``checkpoint_NNNNNN`` folders: the latest is taken);
- ``runs:/<run_id>``: the artifact ``checkpoint/model.pt`` of an MLflow run
  (``runs:/<run_id>/<path>`` names another artifact file or folder);
- ``models:/<name>/<version>`` or ``models:/<name>@<alias>``: a version in the MLflow model registry
  (``dcn-ray register`` sets the alias ``champion`` by default);
- ``sweep:<name>``: the best finished trial (highest ``best_val_iou``) of a sweep in the storage.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dcn_ray import models
from dcn_ray.core import checkpoint
from dcn_ray.core.scores import BEST_VAL_HEADLINE, TEST_COLUMNS
from dcn_ray.errors import InputError, first_line
from dcn_ray.io.paths import input_file
from dcn_ray.kernels import kernels_text
from dcn_ray.track import uris

log = logging.getLogger(__name__)

SOURCES = (
    "a checkpoint file or folder, runs:/<run_id>, models:/<name>/<version>, models:/<name>@<alias> or sweep:<name>"
)
DEFAULT_ALIAS = "champion"  # the alias `dcn-ray register` moves to the version it creates
#: The trial scores a registered version is tagged with (where the sweep has them).
VERSION_SCORES = (BEST_VAL_HEADLINE, *TEST_COLUMNS)
RUN_ARTIFACT = "checkpoint"  # the folder of a trial's MLflow run holding model.pt


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to predict, with its checkpoint payload and where it came from."""

    model: nn.Module  # of any family (dcn_ray.models)
    payload: dict[str, Any]
    source: str  # as the user gave it
    location: str  # the file or URI it was read from
    mlflow_run_id: str | None = None  # the trial's MLflow run, where the source leads to one


@dataclass(frozen=True)
class BestTrial:
    """The best finished trial of a sweep (its row of results.parquet)."""

    sweep: str
    kernels: tuple[int, int, int]
    best_val_iou: float
    trial_id: str
    mlflow_run_id: str | None
    tracking_uri: str
    seed: int | None = None
    scores: dict[str, float] = field(default_factory=dict)  # VERSION_SCORES the trial has
    #: The full configuration (``4-8-16``, ``unet_train.lr=0.001``); "" in tables from before model families.
    config: str = ""

    @property
    def label(self) -> str:
        """``kernels 4-8-16`` for a configuration of kernels alone, else ``configuration unet_train.lr=0.001``."""
        if self.config and self.config != kernels_text(self.kernels):
            return f"configuration {self.config}"
        return f"kernels {kernels_text(self.kernels)}"


def load_source(source: str, *, storage: str | None = None, tracking_uri: str | None = None) -> LoadedModel:
    """Load the model of ``source`` (see the module docstring) on the CPU."""
    if source.startswith("runs:/"):
        run_id, _, artifact = source[len("runs:/") :].strip("/").partition("/")
        if not run_id:
            raise InputError(f"model {source!r}: give the run id, as runs:/<run_id>")
        return _from_mlflow(source, f"runs:/{run_id}/{artifact or RUN_ARTIFACT}", mlflow_uri(tracking_uri), run_id)
    if source.startswith("models:/"):
        uri = mlflow_uri(tracking_uri)
        location, run_id = _model_version_location(source, uri)
        return _from_mlflow(source, location, uri, run_id)
    if source.startswith("sweep:"):
        return _from_sweep(source, source[len("sweep:") :], storage)
    path = Path(source)
    if not path.exists():
        raise InputError(f"model {source!r} not found: give {SOURCES}")
    file = latest_checkpoint(path)
    model, payload = checkpoint.load_model(file)
    return LoadedModel(model, payload, source, str(file))


def latest_checkpoint(path: Path) -> Path:
    """The ``model.pt`` of a file or folder: its own, else that of its latest checkpoint_NNNNNN."""
    if not path.is_dir():
        return input_file(path, "checkpoint file")  # a FIFO or device: named, never opened
    if (path / checkpoint.MODEL_FILE).is_file():
        return path / checkpoint.MODEL_FILE
    numbered = {
        p: p.parent.name.removeprefix("checkpoint_") for p in path.glob(f"checkpoint_*/{checkpoint.MODEL_FILE}")
    }
    saved = {p: int(number) for p, number in numbered.items() if number.isdigit()}
    if not saved:
        raise InputError(f"{path}: no {checkpoint.MODEL_FILE} in this folder or its checkpoint_* folders")
    return max(saved, key=saved.__getitem__)


def mlflow_uri(uri: str | None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here; the store must exist."""
    resolved = uris.resolve_uri(uri or os.environ.get("MLFLOW_TRACKING_URI"))
    uris.check_store(resolved, must_exist=True)  # reading never creates a store
    return resolved


def best_trial(name: str, storage: str | None = None) -> BestTrial:
    """The finished trial of sweep ``name`` with the highest best_val_iou."""
    from dcn_ray.results.report import TABLE_FILE  # pyarrow: only for sweep sources
    from dcn_ray.track.storage import SWEEP_FILE, Storage

    store = Storage.for_sweeps(storage)
    if not name or not store.exists(name, SWEEP_FILE):
        raise InputError(f"no sweep '{name}' in {store.root} (give --storage where it was run)")
    if not store.exists(name, TABLE_FILE):
        raise InputError(f"sweep '{name}' in {store.root} has no results yet")
    rows = [
        row
        for row in store.read_table(name, TABLE_FILE).to_pylist()
        if row["status"] == "finished"
        and isinstance(row[BEST_VAL_HEADLINE], float)
        and not math.isnan(row[BEST_VAL_HEADLINE])
    ]
    if not rows:
        raise InputError(f"sweep '{name}' in {store.root} has no finished trial")
    best = max(rows, key=lambda row: row[BEST_VAL_HEADLINE])  # the first of equals, in table order
    record = store.read_record(name)
    scores = {key: float(best[key]) for key in VERSION_SCORES if _finite(best.get(key))}
    return BestTrial(
        name,
        (best["k1"], best["k2"], best["k3"]),
        best[BEST_VAL_HEADLINE],
        best["trial_id"],
        best["mlflow_run_id"],
        record["tracking_uri"],
        seed=best.get("seed"),
        scores=scores,
        config=best.get("config") or "",
    )


def version_tags(best: BestTrial, family: str) -> dict[str, str]:
    """The tags of a registered version: where it comes from, its kernels, family, seed and scores."""
    kernels = kernels_text(best.kernels) if best.kernels[0] is not None else ""
    tags = {"sweep": best.sweep, "trial_id": best.trial_id, "kernels": kernels, "family": family}
    tags["config"] = best.config or kernels
    tags["best_val_iou"] = f"{best.best_val_iou:.6f}"
    if kernels:
        tags.update({name: str(value) for name, value in zip(("k1", "k2", "k3"), best.kernels)})
    if best.seed is not None:
        tags["seed"] = str(best.seed)
    tags.update({key: f"{value:.6f}" for key, value in best.scores.items()})
    return tags


def register_best(
    name: str, model_name: str, *, storage: str | None = None, alias: str = DEFAULT_ALIAS
) -> tuple[int, BestTrial]:
    """Register the ``checkpoint`` artifact folder of sweep ``name``'s best trial as a new version
    of ``model_name`` in the sweep's MLflow registry, tagged (:func:`version_tags`) and given
    ``alias`` (moved from any older version). Returns (version, trial)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    best = best_trial(name, storage)
    if not best.mlflow_run_id:
        raise InputError(f"the best trial {best.trial_id} of sweep '{name}' has no MLflow run")
    uris.check_store(best.tracking_uri, must_exist=True)
    client = MlflowClient(best.tracking_uri, registry_uri=best.tracking_uri)
    try:
        files = [item.path for item in client.list_artifacts(best.mlflow_run_id, RUN_ARTIFACT)]
        if f"{RUN_ARTIFACT}/{checkpoint.MODEL_FILE}" not in files:
            raise InputError(
                f"MLflow run {best.mlflow_run_id} of sweep '{name}' has no {RUN_ARTIFACT}/{checkpoint.MODEL_FILE}"
            )
        _refuse_non_finite(client, best, name)
        run = client.get_run(best.mlflow_run_id)
        try:
            client.create_registered_model(model_name, description="DCN models registered by dcn-ray")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        family = run.data.params.get("model.family", models.DEFAULT_FAMILY)  # runs before families: a DCN
        test = f", test IoU {best.scores['test_iou']:.4f}" if "test_iou" in best.scores else ""
        version = client.create_model_version(
            model_name,
            f"{run.info.artifact_uri}/{RUN_ARTIFACT}",
            run_id=best.mlflow_run_id,
            tags=version_tags(best, family),
            description=f"best trial of sweep {name}: {best.label}, val IoU {best.best_val_iou:.4f}{test}",
        )
        if alias:
            client.set_registered_model_alias(model_name, alias, version.version)
    except MlflowException as error:
        raise InputError(
            f"cannot register sweep '{name}' as {model_name!r} in {best.tracking_uri}: {first_line(error)}"
        ) from None
    return int(version.version), best


# ----------------------------------------------------------------------------- helpers


def _refuse_non_finite(client: Any, best: BestTrial, name: str) -> None:
    """InputError if the best trial diverged (its run says so) or its model's weights are not finite."""
    import torch

    tags = client.get_run(best.mlflow_run_id).data.tags
    if "diverged" in tags:
        raise InputError(
            f"the best trial {best.label} of sweep '{name}' diverged ({tags['diverged']}); nothing registered"
        )
    with tempfile.TemporaryDirectory(prefix="dcn-register-") as folder:
        with _quiet_downloads():
            local = client.download_artifacts(best.mlflow_run_id, f"{RUN_ARTIFACT}/{checkpoint.MODEL_FILE}", folder)
        weights = torch.load(local, map_location="cpu", weights_only=True).get("weights") or {}
    broken = checkpoint.first_non_finite(weights)
    if broken is not None:
        raise InputError(
            f"the best trial {best.label} of sweep '{name}' has NaN or infinite weights ({broken}: training "
            "diverged); nothing registered"
        )


def _from_sweep(source: str, name: str, storage: str | None) -> LoadedModel:
    """The best trial's latest local checkpoint; its MLflow run's artifact where there is none."""
    from dcn_ray.track.storage import Storage

    best = best_trial(name, storage)
    store = Storage.for_sweeps(storage)
    folder = Path(store.folder(name))
    if store.is_local and folder.is_dir():
        # Tune's trial folders carry the trial id as one "_"-separated part of their name
        trials = [d for d in folder.iterdir() if d.is_dir() and best.trial_id in (d.name, *d.name.split("_"))]
        for trial in trials:
            try:
                file = latest_checkpoint(trial)
            except InputError:
                continue
            model, payload = checkpoint.load_model(file)
            log.info("%s: trial %s (%s, val IoU %.4f)", source, best.trial_id, best.label, best.best_val_iou)
            return LoadedModel(model, payload, source, str(file), best.mlflow_run_id)
    if not best.mlflow_run_id:
        raise InputError(
            f"{source}: the best trial {best.trial_id} has neither a checkpoint in {folder} nor an MLflow run"
        )
    uris.check_store(best.tracking_uri, must_exist=True)
    location = f"runs:/{best.mlflow_run_id}/{RUN_ARTIFACT}"
    return _from_mlflow(source, location, best.tracking_uri, best.mlflow_run_id)


def _model_version_location(source: str, uri: str) -> tuple[str, str | None]:
    """Where the files of ``models:/<name>/<version>`` (or ``models:/<name>@<alias>``) are, and its run.

    Resolved here because MLflow's own ``models:/`` download ignores the registry URI it is given.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    spec = source[len("models:/") :].strip("/")
    name, alias = spec.split("@", 1) if "@" in spec else (spec, "")
    name, _, version = name.partition("/")
    if not name or not (version or alias) or "/" in version:
        raise InputError(
            f"model {source!r}: give a registered model as models:/<name>/<version> or models:/<name>@<alias>"
        )
    client = MlflowClient(uri, registry_uri=uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        return client.get_model_version_download_uri(name, found.version), found.run_id or None
    except MlflowException as error:
        raise InputError(f"model {source!r} not found in the registry at {uri}: {first_line(error)}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _from_mlflow(source: str, artifact_uri: str, uri: str, run_id: str | None) -> LoadedModel:
    with _downloaded(source, artifact_uri, uri) as path:
        model, payload = checkpoint.load_model(latest_checkpoint(path))
    return LoadedModel(model, payload, source, f"{artifact_uri} in {uri}", run_id)


@contextmanager
def _downloaded(source: str, artifact_uri: str, uri: str) -> Iterator[Path]:
    """Download an MLflow artifact (file or folder) into a temporary folder, removed afterwards."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="dcn-model-") as folder, _quiet_downloads():
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=folder, tracking_uri=uri, registry_uri=uri
            )
        except Exception as error:  # MlflowException, OSError, and the stores' own errors
            raise InputError(
                f"model {source!r}: cannot download {artifact_uri} from {uri}: {first_line(error)}"
            ) from None
        yield Path(local)


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow "Downloading artifacts" bar on stderr (unless the user asked for it): the error
    or result line stays the only one."""
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(variable)
    os.environ[variable] = before if before is not None else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
