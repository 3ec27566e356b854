"""MODEL sources of `dcn-ray predict` and `dcn-ray register`, against a real sweep and MLflow server."""

from __future__ import annotations

import shutil
import zipfile

import pyarrow.parquet as pq
import pytest
import tifffile
import torch
from conftest import small_job, sweep_on_local_ray
from mlflow.tracking import MlflowClient

from dcn_ray.cli import main
from dcn_ray.core import checkpoint
from dcn_ray.errors import InputError
from dcn_ray.track.sources import best_trial, latest_checkpoint, load_source, register_best

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sweep(synthetic_stack, mlflow_server, tmp_path_factory) -> dict:
    """A finished two-trial sweep 'pick' tracked on the MLflow server; its storage and results."""
    storage = tmp_path_factory.mktemp("sweeps") / "runs"
    raw = small_job(
        *synthetic_stack,
        name="pick",
        data={"split": {"train": "0:7", "val": "8:9", "test": "10:12"}},  # a test split: its scores tag versions
        train={"steps": 6, "eval_every": 3},
        sweep={"kernels": [[4, 8, 16], [2, 8, 16]], "resources": {"gpu": 0, "cpu": 1}},
        tracking={"uri": mlflow_server.uri, "experiment": "pick"},
    )
    outcome = sweep_on_local_ray(raw, storage)
    assert outcome.errored == 0
    rows = pq.read_table(storage / "pick" / "results.parquet").to_pylist()
    best = max(rows, key=lambda row: row["best_val_iou"])
    trial = next(d for d in (storage / "pick").iterdir() if best["trial_id"] in d.name.split("_"))
    return {"storage": storage, "rows": rows, "best": best, "trial": trial, "uri": mlflow_server.uri}


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_file_folder_and_trial_folder(sweep):
    trial = sweep["trial"]
    newest = max(trial.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(list(trial.glob("checkpoint_*"))) >= 2  # so that "the latest" is a real choice
    assert latest_checkpoint(trial) == newest / checkpoint.MODEL_FILE
    from_file = load_source(str(newest / checkpoint.MODEL_FILE))
    for source in (str(newest), str(trial)):
        loaded = load_source(source)
        assert loaded.source == source and loaded.location == str(newest / checkpoint.MODEL_FILE)
        assert same_weights(loaded.model, from_file.model)
    assert from_file.payload["step"] == 6


def test_sweep_source_is_the_best_finished_trial(sweep):
    best = best_trial("pick", str(sweep["storage"]))
    assert best.best_val_iou == max(row["best_val_iou"] for row in sweep["rows"])
    assert best.trial_id == sweep["best"]["trial_id"] and best.tracking_uri == sweep["uri"]
    loaded = load_source("sweep:pick", storage=str(sweep["storage"]))
    assert list(loaded.model.kernels) == [sweep["best"][k] for k in ("k1", "k2", "k3")]
    assert loaded.location.startswith(str(sweep["trial"]))
    assert same_weights(loaded.model, load_source(str(sweep["trial"])).model)


def test_sweep_without_local_checkpoints_loads_from_mlflow(sweep, tmp_path):
    """Only the sweep's record and results (as on object storage after a clean-up): the MLflow run serves."""
    copy = tmp_path / "runs" / "pick"
    copy.mkdir(parents=True)
    for name in ("dcn_ray_sweep.json", "results.parquet"):
        shutil.copy(sweep["storage"] / "pick" / name, copy / name)
    loaded = load_source("sweep:pick", storage=str(tmp_path / "runs"))
    assert loaded.location.startswith(f"runs:/{sweep['best']['mlflow_run_id']}/checkpoint")
    assert same_weights(loaded.model, load_source(str(sweep["trial"])).model)


def test_mlflow_run_source(sweep, monkeypatch):
    run_id = sweep["best"]["mlflow_run_id"]
    loaded = load_source(f"runs:/{run_id}", tracking_uri=sweep["uri"])
    assert same_weights(loaded.model, load_source(str(sweep["trial"])).model)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep["uri"])  # the environment is the fallback
    assert same_weights(load_source(f"runs:/{run_id}/checkpoint/model.pt").model, loaded.model)
    with pytest.raises(InputError, match="runs:/0123456789abcdef"):
        load_source("runs:/0123456789abcdef")


def test_register_then_predict_from_the_registry(sweep, tmp_path, capsys, synthetic_stack):
    code = _cli(["register", "pick", "dcn-pick", "--storage", sweep["storage"]])
    out = capsys.readouterr().out
    assert code == 0 and out.strip() == "registered dcn-pick version 1 as models:/dcn-pick@champion"
    version, best = register_best("pick", "dcn-pick", storage=str(sweep["storage"]), alias="staging")
    assert version == 2 and best.mlflow_run_id == sweep["best"]["mlflow_run_id"]
    client = MlflowClient(sweep["uri"])
    registered = client.get_model_version("dcn-pick", "2")
    row = sweep["best"]
    assert registered.run_id == best.mlflow_run_id and registered.tags["sweep"] == "pick"
    assert registered.tags["kernels"] == f"{row['k1']}-{row['k2']}-{row['k3']}" and registered.tags["family"] == "dcn"
    assert registered.tags["seed"] == str(row["seed"]) and registered.tags["trial_id"] == row["trial_id"]
    assert float(registered.tags["test_iou"]) == pytest.approx(row["test_iou"], abs=1e-6)
    assert float(registered.tags["best_val_iou"]) == pytest.approx(row["best_val_iou"], abs=1e-6)
    assert client.get_model_version_by_alias("dcn-pick", "champion").version == "1"
    assert client.get_model_version_by_alias("dcn-pick", "staging").version == "2"
    assert _cli(["register", "pick", "dcn-pick", "--storage", sweep["storage"]]) == 0  # version 3 takes champion
    assert client.get_model_version_by_alias("dcn-pick", "champion").version == "3"
    capsys.readouterr()
    assert _cli(["register", "pick", "dcn-pick", "--alias", "v2"]) == 2
    assert "--alias 'v2'" in capsys.readouterr().err

    loaded = load_source("models:/dcn-pick@champion", tracking_uri=sweep["uri"])
    assert same_weights(loaded.model, load_source(str(sweep["trial"])).model)
    assert same_weights(load_source("models:/dcn-pick/1", tracking_uri=sweep["uri"]).model, loaded.model)
    with pytest.raises(InputError, match="models:/dcn-pick/9"):
        load_source("models:/dcn-pick/9", tracking_uri=sweep["uri"])
    with pytest.raises(InputError, match="models:/dcn-pick@nobody"):
        load_source("models:/dcn-pick@nobody", tracking_uri=sweep["uri"])

    out_file = tmp_path / "seg.tif"
    code = _cli(
        [
            "predict",
            "models:/dcn-pick@champion",
            synthetic_stack[0],
            out_file,
            "--tracking-uri",
            sweep["uri"],
            "--no-tta",
            "--output",
            "mask",
        ]
    )
    assert code == 0 and tifffile.imread(out_file).shape == (12, 128, 128)


def test_export_from_the_registry_and_the_sweep(sweep, tmp_path):
    """`export` takes the sources predict takes, and its provenance names the trial's MLflow run."""
    pytest.importorskip("bioimageio.spec", reason="bioimageio.core is not installed: pip install -e '.[export]'")
    import yaml

    register_best("pick", "dcn-export", storage=str(sweep["storage"]))
    for source in ("models:/dcn-export@champion", "sweep:pick"):
        out = tmp_path / f"{source.split(':')[0]}.zip"
        args = ["export", source, out, "--tracking-uri", sweep["uri"], "--storage", sweep["storage"]]
        assert _cli(args) == 0
        with zipfile.ZipFile(out) as package:
            provenance = yaml.safe_load(package.read("rdf.yaml"))["config"]["dcn_ray"]
        assert provenance["source"] == source and provenance["sweep"] == "pick"
        assert provenance["mlflow_run_id"] == sweep["best"]["mlflow_run_id"]
        assert provenance["kernels"] == "-".join(str(sweep["best"][k]) for k in ("k1", "k2", "k3"))
        assert provenance["test_scores"]["test_iou"] == pytest.approx(sweep["best"]["test_iou"], abs=1e-6)


def test_unknown_sources_are_named(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match="no MLflow store at .*mlflow.db"):
        load_source("runs:/abc")
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create a store
    with pytest.raises(InputError, match="no sweep 'nosuch'"):
        load_source("sweep:nosuch", storage=str(sweep["storage"]))
    with pytest.raises(InputError, match="no sweep 'pick' in .*dcn-ray-runs"):
        load_source("sweep:pick")
    with pytest.raises(InputError, match="'gone.pt' not found"):
        load_source("gone.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model.pt"):
        load_source(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no sweep 'nosuch'"):
        register_best("nosuch", "x", storage=str(sweep["storage"]))


def _cli(args: list) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as done:
        return done.code
    return 0
