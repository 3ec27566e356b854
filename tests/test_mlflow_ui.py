"""The MLflow UI as a researcher sees it: a real `mlflow server`, a finished sweep, headless Chromium."""

from __future__ import annotations

import json

import pytest
from browser import CHROMIUM, Browser
from conftest import small_job, sweep_on_local_ray
from mlflow.tracking import MlflowClient

from dcn_ray.track.runs import EXPERIMENT_KIND, runs_view_url

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"),
]

ROWS_JS = """(() => {
  const rows = {};
  document.querySelectorAll('[role="row"][row-index]').forEach((e) => {
    const i = e.getAttribute('row-index');
    rows[i] = (rows[i] || '') + ' ' + e.innerText.replace(/\\n/g, ' ');
  });
  return Object.values(rows);
})()"""


def test_runs_view_shows_every_child_run_with_its_kernels_and_seed(synthetic_stack, mlflow_server, tmp_path):
    raw = small_job(
        *synthetic_stack,
        name="ui",
        train={"steps": 4, "eval_every": 2, "batch_size": 2, "crop": 32},
        sweep={"kernels": [[4, 8, 16], [2, 8, 16]], "seeds": [0, 1], "resources": {"gpu": 0, "cpu": 1}},
        tracking={"uri": mlflow_server.uri, "experiment": "ui"},
    )
    sweep_on_local_ray(raw, tmp_path)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("ui")
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]  # opens on the runs view, not GenAI
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    url = runs_view_url(mlflow_server.uri, experiment.experiment_id)
    assert url.endswith(f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")

    with Browser() as browser:
        browser.open(url)
        browser.wait_for("document.body.innerText.includes('matching runs')")
        assert "Runs" in browser.evaluate("document.body.innerText")
        # What a user does: expand the sweep's parent run, show the k1-k3 and seed columns.
        key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment.experiment_id}"]-ReactComponentState'
        browser.wait_for(f"localStorage.getItem({json.dumps(key)}) !== null")
        browser.evaluate(
            f"""(() => {{
              const key = {json.dumps(key)};
              const state = JSON.parse(localStorage.getItem(key));
              state.runsExpanded = {{{json.dumps(parent.info.run_id)}: true}};
              state.selectedColumns = ['params.`k1`', 'params.`k2`', 'params.`k3`', 'params.`seed`'];
              localStorage.setItem(key, JSON.stringify(state));
            }})()"""
        )
        browser.reload()
        rows = browser.wait_for(f"(() => {{ const r = {ROWS_JS}; return r.length >= 5 ? r : null; }})()")
        browser.screenshot(tmp_path / "runs.png")
    header = browser_text = " ".join(rows)
    for child in children:
        params = child.data.params
        name = child.info.run_name
        row = next((r for r in rows if name in r), None)
        assert row is not None, f"child run {name} is not shown: {browser_text[:500]}"
        values = f" {params['k1']} {params['k2']} {params['k3']} {params['seed']} "
        assert values in f" {row} ", f"{name} does not show k1-k3 and seed {values!r}: {row!r}"
    assert parent.info.run_name in header
