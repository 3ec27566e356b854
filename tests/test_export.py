"""`dcn-ray export`: a BioImage.IO package that bioimageio.core's own test accepts."""

from __future__ import annotations

import ast
import zipfile

import pytest
import torch
import yaml
from conftest import run_cli, small_job, train_job
from PIL import Image

from dcn_ray import models
from dcn_ray.core import checkpoint
from dcn_ray.core.dataset import load_data
from dcn_ray.core.train import score_test_split
from dcn_ray.job.config import job_from_dict
from dcn_ray.models import dcn_receptive_radius as receptive_radius

bioimageio_core = pytest.importorskip(
    "bioimageio.core", reason="bioimageio.core is not installed: pip install -e '.[export]'"
)
pytestmark = pytest.mark.usefixtures("two_threads")

SPLIT = {"train": "0:7", "val": "8:9", "test": "10:12"}


@pytest.fixture(scope="module")
def trained(synthetic_stack, tmp_path_factory):
    """A narrow DCN (kernels 4-8-12) trained briefly on a job with a test split; its model.pt."""
    job = job_from_dict(
        small_job(*synthetic_stack, name="tiny", data={"split": SPLIT}, train={"steps": 12, "eval_every": 6})
    )
    dataset = load_data(job.data)
    result = train_job(job, (4, 8, 12), dataset)
    path = tmp_path_factory.mktemp("trained") / "model.pt"
    checkpoint.save(result.model, path)
    model, _ = checkpoint.load_model(path)
    return {"path": path, "scores": score_test_split(model, dataset, torch.device("cpu")), "model": model}


def test_export_passes_bioimageio_core_test(trained, tmp_path, capsys):
    out = tmp_path / "dcn.zip"
    args = ["export", trained["path"], out, "--author", "Ada Lovelace;Analytical Engines Ltd;0000-0002-1825-0097"]
    code, stdout, err = run_cli(capsys, [*args, "--cite", "Cardona et al. 2010;10.1371/journal.pbio.1000502"])
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: halo {receptive_radius((4, 8, 12))} px")

    summary = bioimageio_core.test_model(out)
    assert summary.status == "passed", summary.format()

    with zipfile.ZipFile(out) as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        cover = Image.open(package.open(rdf["covers"][0]["source"]))
        arch = package.read(rdf["weights"]["pytorch_state_dict"]["architecture"]["source"]).decode()
        weights = package.extract("weights.pt", tmp_path)
    assert rdf["format_version"].startswith("0.5.") and rdf["license"] == "CC-BY-4.0"
    assert rdf["authors"][0] == {
        "name": "Ada Lovelace",
        "affiliation": "Analytical Engines Ltd",
        "orcid": "0000-0002-1825-0097",
    }
    assert {"text": "Cardona et al. 2010", "doi": "10.1371/journal.pbio.1000502"} in rdf["cite"]
    (raw,), (fg,) = rdf["inputs"], rdf["outputs"]
    assert [a.get("id", a["type"]) for a in raw["axes"]] == ["batch", "channel", "y", "x"]
    assert raw["data"]["type"] == "uint8"  # the synthetic stack is 8-bit: training divided by 255
    assert raw["preprocessing"][1]["kwargs"]["gain"] == pytest.approx(1 / 255)
    halo = receptive_radius((4, 8, 12))
    assert [a.get("halo") for a in fg["axes"][2:]] == [halo, halo]
    assert raw["axes"][2]["size"]["min"] > 2 * halo and raw["axes"][2]["size"]["step"] == 8
    architecture = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert architecture["kwargs"] == dict(trained["model"].kwargs)
    provenance = rdf["config"]["dcn_ray"]
    assert provenance["sweep"] == "tiny" and provenance["kernels"] == "4-8-12" and provenance["family"] == "dcn"
    assert provenance["test_slices"] == [10, 11]
    assert provenance["test_scores"] == pytest.approx(trained["scores"])
    assert cover.width == 2 * cover.height
    # the architecture stands alone (no dcn_ray import) and takes the checkpoint's weights unchanged
    tree = ast.parse(arch)
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names]
    assert not [name for name in imported if name and name.startswith("dcn_ray")]
    namespace: dict = {}
    exec(compile(arch, "dcn_architecture.py", "exec"), namespace)
    network = namespace[architecture["callable"]](**architecture["kwargs"]).eval()
    network.load_state_dict(torch.load(weights, weights_only=True))
    image = torch.rand(1, 1, 128, 120)
    with torch.inference_mode():
        expected = torch.softmax(trained["model"](image).fused, dim=1)[:, 1:2]
        assert torch.allclose(network(image), expected, atol=1e-6)


def test_refusals_are_one_line(trained, synthetic_stack, tmp_path, capsys):
    job = job_from_dict(small_job(*synthetic_stack, train={"steps": 2, "eval_every": 2}))  # no test split
    no_test = tmp_path / "no-test.pt"
    checkpoint.save(train_job(job, (4, 8, 16), load_data(job.data)).model, no_test)
    payload = checkpoint.load(trained["path"])
    other_family = tmp_path / "vit.pt"
    checkpoint.save({**payload, "model_family": "vit"}, other_family)
    for args, message in (
        ([no_test, tmp_path / "a.zip"], "no test split (data.split.test)"),
        ([tmp_path / "gone.pt", tmp_path / "a.zip"], "gone.pt' not found"),
        ([other_family, tmp_path / "a.zip"], "model family 'vit'"),
        (["sweep:nosuch", tmp_path / "a.zip"], "no sweep 'nosuch'"),
        ([trained["path"], tmp_path / "a.tar"], "give OUT.zip"),
        ([trained["path"], tmp_path / "a.zip", "--license", "NOPE"], "--license 'NOPE'"),
        ([trained["path"], tmp_path / "a.zip", "--cite", "no place"], "--cite 'no place'"),
    ):
        code, _, err = run_cli(capsys, ["export", *args])
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.glob("*.zip")) == []  # nothing left behind


def test_a_unet_exports_and_passes_bioimageio_core_test(synthetic_stack, tmp_path, capsys):
    """Every family exports: a U-Net with its own halo, size step, citation and standalone source."""
    raw = small_job(*synthetic_stack, name="tiny-unet", data={"split": SPLIT}, train={"steps": 6, "eval_every": 6})
    raw["model"] = {"family": "unet", "depth": 2, "width": 4}
    job = job_from_dict(raw)
    dataset = load_data(job.data)
    path = tmp_path / "unet.pt"
    checkpoint.save(train_job(job, None, dataset).model, path)
    model, _ = checkpoint.load_model(path)
    out = tmp_path / "unet.zip"
    code, stdout, err = run_cli(capsys, ["export", path, out])
    halo = models.get("unet").radius({"depth": 2})
    assert code == 0 and stdout.startswith(f"wrote {out}: halo {halo} px"), err
    summary = bioimageio_core.test_model(out)
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(out) as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        architecture = rdf["weights"]["pytorch_state_dict"]["architecture"]
        source = package.read(architecture["source"]).decode()
        weights = package.extract("weights.pt", tmp_path)
    (raw_input,), (fg,) = rdf["inputs"], rdf["outputs"]
    assert raw_input["axes"][2]["size"]["step"] == 4 and [a.get("halo") for a in fg["axes"][2:]] == [halo, halo]
    assert rdf["config"]["dcn_ray"]["family"] == "unet" and "unet" in rdf["tags"]
    assert any("U-Net" in entry["text"] for entry in rdf["cite"])
    namespace: dict = {}
    exec(compile(source, architecture["source"], "exec"), namespace)
    network = namespace[architecture["callable"]](**architecture["kwargs"]).eval()
    network.load_state_dict(torch.load(weights, weights_only=True))
    image = torch.rand(1, 1, 64, 68)
    with torch.inference_mode():
        expected = torch.softmax(model(image).fused, dim=1)[:, 1:2]
        assert torch.allclose(network(image), expected, atol=1e-6)
