"""The MLflow UI as a researcher sees it: a real `mlflow server`, a finished sweep, headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, Browser
from conftest import run_cli, small_job, sweep_on_local_ray
from mlflow.tracking import MlflowClient
from PIL import Image

from dcn_ray.core.atlas import HTML_FILE, PNG_FILE, is_atlas_file
from dcn_ray.track.runs import EXPERIMENT_KIND, SHARED_VIEW_PREFIX, runs_view_url

pytestmark = pytest.mark.integration
NO_CHROMIUM = "Debian's chromium is not installed (.ci/run installs it)"

ROWS_JS = """(() => {
  const rows = {};
  document.querySelectorAll('[role="row"][row-index]').forEach((e) => {
    const i = e.getAttribute('row-index');
    rows[i] = (rows[i] || '') + ' ' + e.innerText.replace(/\\n/g, ' ');
  });
  return Object.values(rows);
})()"""


@pytest.fixture(scope="module")
def ui_sweep(synthetic_stack, mlflow_server, tmp_path_factory):
    """One finished sweep for every test here: 2 kernel configurations x 2 seeds, with a test split."""
    storage = tmp_path_factory.mktemp("ui-sweep")
    raw = small_job(
        *synthetic_stack,
        name="ui",
        data={"split": {"train": "0:7", "val": "8:9", "test": "10:12"}},
        train={"steps": 4, "eval_every": 2, "batch_size": 2, "crop": 32},
        sweep={"kernels": [[4, 8, 16], [2, 8, 16]], "seeds": [0, 1], "resources": {"gpu": 0, "cpu": 1}},
        tracking={"uri": mlflow_server.uri, "experiment": "ui"},
    )
    outcome = sweep_on_local_ray(raw, storage)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("ui")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return experiment, parent, children, storage, outcome.runs_view.splitlines()[0]


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_printed_link_lists_every_trial_with_its_kernels_seed_and_scores(ui_sweep, mlflow_server, tmp_path):
    """The runs view the sweep prints opens its shared view: the trials alone, k1-k3, seed and scores shown."""
    experiment, parent, children, _, printed = ui_sweep
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    assert len(children) == 4
    shared = f"runs?workflowType=machine_learning&viewStateShareKey={parent.info.run_id}"
    assert printed == f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}/{shared}"
    assert SHARED_VIEW_PREFIX + parent.info.run_id in experiment.tags

    with Browser() as browser:
        browser.open(printed)
        rows = browser.wait_for(f"(() => {{ const r = {ROWS_JS}; return r.length >= 4 ? r : null; }})()")
        text = browser.evaluate("document.body.innerText")
        browser.screenshot(tmp_path / "runs.png")
    assert f"{len(children)} matching runs" in text, text[-800:]  # the trials, not the sweep's own run
    for child in children:
        params, name = child.data.params, child.info.run_name
        row = next((r for r in rows if name in r), None)
        assert row is not None, f"trial {name} is not listed: {' '.join(rows)[:500]}"
        values = f" {params['k1']} {params['k2']} {params['k3']} {params['phase']} {params['seed']} "  # params A-Z
        assert values in f" {row} ", f"{name} does not show k1-k3, phase and seed {values!r}: {row!r}"
        metrics = child.data.metrics
        assert f" {metrics['best_val_iou']} {metrics['test_iou']} " in row, f"{name}: val and test IoU: {row!r}"
    configs = [next(c.data.tags["config"] for c in children if c.info.run_name in r) for r in rows]
    assert configs == sorted(configs), "rows are ordered by configuration"


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_from_the_ui_s_own_address_two_clicks_reach_the_sweep_s_runs(ui_sweep, mlflow_server):
    """What a newcomer does: open `mlflow ui`'s address, switch the sidebar to model training, click the
    experiment. MLflow 3.17 opens on GenAI whatever the tags say; the README says to switch once."""
    experiment, parent, children, *_ = ui_sweep
    with Browser() as browser:
        browser.open(mlflow_server.uri + "/")
        browser.click("Model training")
        browser.wait_for("document.body.innerText.includes('Model registry')")  # the model-training sidebar
        browser.click(experiment.name)
        text = browser.wait_for(
            "(() => { const t = document.body.innerText; return t.includes('matching runs') ? t : null; })()"
        )
        where = browser.evaluate("location.href")
    assert f"#/experiments/{experiment.experiment_id}/runs" in where and "workflowType=machine_learning" in where
    assert "Evaluation runs" not in text and parent.info.run_name in text, text[:500]


def test_branch_atlas_is_on_the_parent_run_and_shown_by_mlflow(ui_sweep, mlflow_server, tmp_path, capsys):
    """Both atlas files on the parent run, rendered by MLflow's artifact view (where Chromium is installed);
    `report --atlas` writes them too."""
    experiment, parent, children, storage, _ = ui_sweep
    client = MlflowClient(mlflow_server.uri)
    run_id = parent.info.run_id
    assert {PNG_FILE, HTML_FILE} <= {Path(a.path).name for a in client.list_artifacts(run_id, "results")}
    png = Image.open(client.download_artifacts(run_id, f"results/{PNG_FILE}", str(tmp_path)))
    page = Path(client.download_artifacts(run_id, f"results/{HTML_FILE}", str(tmp_path))).read_text()
    # one row per configuration and every seed of the reference, each with its own test IoU
    assert page.count("data:image/png;base64,") == 1 + 4 * 3 and page.count("(reference)") == 2
    shown = [c for c in children if c.data.params["k1"] == "4" or c.data.params["seed"] == "0"]
    for child in shown:
        assert f"test IoU {child.data.metrics['test_iou']:.4f}" in page, child.info.run_name
    assert page.index("2-8-16") < page.index("4-8-16")

    out = tmp_path / "atlas"
    for _ in range(2):  # a second run replaces the atlas it wrote
        code, table, err = run_cli(capsys, ["report", "ui", "--storage", storage, "--atlas", out])
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == sorted([PNG_FILE, HTML_FILE]) and "| 4, 8, 16 |" in table
    assert all(is_atlas_file(out / name) for name in (PNG_FILE, HTML_FILE))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / HTML_FILE).write_text("<p>my notes</p>")
    for target, said in ((storage / "ui", "lies inside the sweep's folder"), (foreign, "not a branch atlas")):
        code, _, err = run_cli(capsys, ["report", "ui", "--storage", storage, "--atlas", target])
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert (foreign / HTML_FILE).read_text() == "<p>my notes</p>" and not (foreign / PNG_FILE).exists()

    if CHROMIUM is None:
        pytest.skip(f"the artifacts and `report --atlas` pass; MLflow's view is not checked: {NO_CHROMIUM}")
    # the link a sweep prints for its own run opens as model training (not GenAI's evaluation runs)
    printed = runs_view_url(mlflow_server.uri, experiment.experiment_id, run_id).splitlines()[1].split(": ", 1)[1]
    with Browser() as browser:
        browser.open(printed)
        text = browser.wait_for(
            "(() => { const t = document.body.innerText; return t.includes('job.yaml') && t.includes('results')"
            " ? t : null; })()"
        )
    assert "Evaluation runs" not in text and "Artifacts" in text, text[:500]
    view = f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}/runs/{run_id}/artifacts/results"
    # DCN_RAY_SCREENSHOTS=docs keeps the screenshot for the documentation
    shot = Path(os.environ.get("DCN_RAY_SCREENSHOTS", tmp_path)) / "mlflow-branch-atlas.png"
    check_atlas_views(view, png.width, page, shot)


def check_atlas_views(view: str, png_width: int, page: str, shot: Path) -> None:
    """MLflow's artifact view (``view``: the parent run's results/) shows the atlas PNG and HTML page."""
    with Browser() as browser:
        browser.open(f"{view}/{PNG_FILE}?workflowType=machine_learning")
        width = browser.wait_for(
            "(() => { const i = [...document.images].find(i => i.src.startsWith('blob:') && i.complete"
            " && i.naturalWidth > 0 && i.clientWidth > 0); return i ? i.naturalWidth : null; })()"
        )
        assert width == png_width
        browser.open("about:blank")  # the artifact view reads its path when it opens
        browser.open(f"{view}/{HTML_FILE}?workflowType=machine_learning")
        served = browser.wait_for(
            "(async () => { const f = document.querySelector('iframe'); "
            "return f && f.src ? await (await fetch(f.src)).text() : null; })()"
        )
        assert served == page  # the page MLflow shows in its sandboxed frame is the atlas, whole
        browser.evaluate("document.querySelector('button[aria-label=\"Close\"]')?.click()")  # the assistant panel
        browser.wait_for(FRAME_BOX_JS)
        painted = 0
        for _ in range(30):  # the frame paints its inlined images: the fused overlays' green and blue
            painted = _overlay_pixels(browser)
            if painted > 3 * 64 * 64:
                break
            time.sleep(0.5)
        assert painted > 3 * 64 * 64, f"the atlas frame shows {painted} pixels of the fused overlays"
        browser.screenshot(shot)


#: The artifact view's frame (x, y, width, height) once it is laid out, else null.
FRAME_BOX_JS = """(() => { const f = document.querySelector('iframe'); if (!f) return null;
  const r = f.getBoundingClientRect(); return r.width > 200 && r.height > 200 ? [r.x, r.y, r.width, r.height] : null; })()"""


def _overlay_pixels(browser: Browser) -> int:
    """Pixels of the artifact view's frame coloured as the fused overlays are (green or blue over red):
    the page's text (black, the weak branch's red, on white or the reference's yellow) has none."""
    x, y, width, height = browser.evaluate(FRAME_BOX_JS)
    clip = {"x": x, "y": y, "width": width, "height": height, "scale": 1}
    data = browser.call("Page.captureScreenshot", format="png", clip=clip)["data"]
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)
    return int(((rgb[..., 1] > rgb[..., 0] + 40) | (rgb[..., 2] > rgb[..., 0] + 40)).sum())
