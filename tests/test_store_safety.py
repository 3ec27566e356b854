"""Stores and scores that never lose or misread data (issue 26), each class through the CLI.

Outputs never touch the files and trees behind inputs; temporary names stay short; a refused run
leaves nothing; ``--resume`` refuses changed input data; ``score`` reads masks as masks; damaged
volumes and malformed NGFF metadata give one line; one sweep per name at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from conftest import run_cli
from test_hostile_input import assert_one_error, model_file
from test_volumes import write_ome

RNG = np.random.default_rng(26)
SHAPE = (2, 40, 40)


def volume_data() -> np.ndarray:
    return RNG.integers(0, 256, SHAPE, dtype=np.uint8)


def truth_data() -> np.ndarray:
    truth = np.full(SHAPE, 255, np.uint8)
    truth[:, ::5] = 0
    return truth


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path: what a run may not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(capsys, model: Path, source, output, *extra) -> tuple:
    return run_cli(capsys, ["predict", model, source, output, "--no-tta", "--tile", "64", "--overlap", "16", *extra])


# ----------------------------------------------------------------------------- 1. inputs as files and trees


def test_no_output_is_contains_or_lies_inside_an_input(work: Path, capsys) -> None:
    model = model_file(work)
    with h5py.File(work / "d.h5", "w") as handle:
        handle.create_dataset("volumes/raw", data=volume_data())
        handle.create_dataset("volumes/labels", data=truth_data())
    tifffile.imwrite(work / "in.tif", volume_data(), photometric="minisblack")
    assert predict(capsys, model, work / "in.tif", work / "prev.ome.zarr")[0] == 0  # an earlier output
    (work / "store.ome.zarr").mkdir()
    os.link(model, work / "model-link.pt")
    (work / "link.ome.zarr").symlink_to(work / "prev.ome.zarr")
    before = tree(work)
    h5, ome = f"{work / 'd.h5'}:/volumes/raw", work / "prev.ome.zarr"
    cases = [
        ([h5, work / "d.h5"], "is the input"),  # a TIFF output over the HDF5 file behind the input
        ([work / "in.tif", work / "d.h5", "--labels", f"{work / 'd.h5'}:/volumes/labels"], "the --labels file"),
        ([f"{ome}/0", ome], "contains the input"),  # the input array lies in the output store
        ([work / "in.tif", ome, "--labels", f"{ome}/0"], "contains the --labels volume"),
        ([ome, ome / "pred.ome.zarr"], "lies inside the input"),  # written into the input store
        ([work / "in.tif", work / "link.ome.zarr", "--labels", f"{ome}/0"], "the --labels volume"),  # a symlink
        ([h5, work / "model-link.pt"], "the model file"),  # a hard link of the model
    ]
    for args, problem in cases:
        code, out, err = predict(capsys, model, *args)
        assert_one_error(code, err, problem)
        assert out == ""
    # the model file inside an earlier output store
    (work / "inner").mkdir()
    write_ome(work / "inner" / "out.ome.zarr", volume_data(), "0.4")
    inside = work / "inner" / "out.ome.zarr" / "m.pt"
    inside.write_bytes(model.read_bytes())
    code, _, err = predict(capsys, inside, work / "in.tif", work / "inner" / "out.ome.zarr")
    assert_one_error(code, err, "contains the model file")
    assert inside.exists()
    (work / "inner" / "out.ome.zarr" / "m.pt").unlink()
    after = tree(work)
    assert {name: after.get(name) for name in before} == before


def test_long_names_symlinked_outputs_and_refused_runs_leave_nothing(work: Path, capsys) -> None:
    model = model_file(work)
    source = work / "in.tif"
    tifffile.imwrite(source, volume_data(), photometric="minisblack")
    long = "p" * 241 + ".ome.zarr"  # 250 characters: a valid name; its temporary names must fit too
    code, _, err = predict(capsys, model, source, work / long)
    assert code == 0, err
    assert zarr.open_array(store=str(work / long), path="0", mode="r").shape == SHAPE
    code, _, err = predict(capsys, model, source, work / ("t" * 246 + ".tif"))
    assert code == 0, err
    # an output that is a symbolic link to an earlier store: the link is replaced, its target kept
    (work / "link.ome.zarr").symlink_to(work / long)
    code, _, err = predict(capsys, model, source, work / "link.ome.zarr")
    assert code == 0, err
    assert not (work / "link.ome.zarr").is_symlink() and (work / long).is_dir()
    assert not [p for p in work.iterdir() if ".replaced-" in p.name or ".partial-" in p.name]
    # a run refused once it starts (a dead --address) leaves no store behind
    names = set(os.listdir(work))
    code, _, err = predict(capsys, model, source, work / "new.ome.zarr", "--address", "127.0.0.1:9")
    assert code in (1, 2), err
    assert set(os.listdir(work)) == names


# ----------------------------------------------------------------------------- 4. score reads what it is given


def test_score_reads_masks_as_masks_and_refuses_what_is_neither(work: Path, capsys) -> None:
    truth = truth_data()
    tifffile.imwrite(work / "truth.tif", truth, photometric="minisblack")
    fg = truth == 255
    masks = {
        "m01.tif": fg.astype(np.uint8),
        "m255.tif": fg.astype(np.uint16) * 255,
        "m01_32.tif": fg.astype(np.int32),
    }
    for name, mask in masks.items():
        tifffile.imwrite(work / name, mask, photometric="minisblack")
        code, out, err = run_cli(capsys, ["score", work / name, work / "truth.tif"])
        assert code == 0, err
        assert "IoU 1.0000" in out and "mask" in err, (name, out, err)
    zarr.create_array(str(work / "m.zarr"), data=fg.astype(np.uint8), chunks=(1, 40, 40))
    code, out, _ = run_cli(capsys, ["score", work / "m.zarr", work / "truth.tif", "--json"])
    scores = json.loads(out)
    assert scores["iou"] == 1.0 and "0/1 mask" in scores["prediction_read_as"]
    refused = {
        "low16.tif": (fg.astype(np.uint16) * 200, "neither a 0/1 or 0/255 mask"),
        "neg.tif": (fg.astype(np.int16) - 1, "negative"),
        "wide.tif": (fg.astype(np.float32) * 2, "must lie in [0, 1]"),
    }
    for name, (values, problem) in refused.items():
        tifffile.imwrite(work / name, values, photometric="minisblack")
        code, out, err = run_cli(capsys, ["score", work / name, work / "truth.tif"])
        assert_one_error(code, err, name, problem)
    tifffile.imwrite(work / "full.tif", np.full(SHAPE, 255, np.uint8), photometric="minisblack")
    code, _, err = run_cli(capsys, ["score", work / "m01.tif", work / "full.tif"])
    assert_one_error(code, err, "full.tif", "no background")
    grey = np.zeros((*SHAPE, 3), np.uint8)  # colour labels without one coloured pixel: no foreground
    tifffile.imwrite(work / "grey.tif", grey, photometric="rgb")
    code, _, err = run_cli(capsys, ["score", work / "m01.tif", work / "grey.tif", "--foreground", "color"])
    assert_one_error(code, err, "grey.tif", "no foreground")
    code, _, err = run_cli(capsys, ["score", work / "m01.tif", work / "truth.tif", "--foreground", "0"])
    assert code == 0, err
    for bad in ("nan", "1", "-0.1"):
        code, out, err = run_cli(capsys, ["score", work / "m01.tif", work / "truth.tif", "--threshold", bad])
        assert_one_error(code, err, "--threshold")


# ----------------------------------------------------------------------------- 3. resume fingerprints its input


def interrupted(monkeypatch, capsys, model: Path, source, output: Path, after: int = 3) -> None:
    """Run ``predict`` into ``output`` and stop it (as Ctrl-C would) after ``after`` blocks."""
    from dcn_ray.predict.engine import BlockPredictor

    original, calls = BlockPredictor.__call__, []

    def stop_after(self, block):
        if len(calls) == after:
            raise KeyboardInterrupt
        calls.append(block.index)
        return original(self, block)

    with monkeypatch.context() as patch:
        patch.setattr(BlockPredictor, "__call__", stop_after)
        code, _, err = predict(capsys, model, source, output, "--chunk", "1,16,16", "--block", "16")
    assert code == 130, err


def test_resume_refuses_an_input_whose_values_changed(work: Path, capsys, monkeypatch) -> None:
    model = model_file(work)
    source, output = work / "in.zarr", work / "out.ome.zarr"
    incomplete = work / ".out.ome.zarr.incomplete"
    first = volume_data()
    zarr.create_array(str(source), data=first, chunks=(1, 16, 16), zarr_format=2)
    interrupted(monkeypatch, capsys, model, source, output)
    written = tree(incomplete)
    resume = ["--chunk", "1,16,16", "--block", "16", "--resume"]
    # the same path and shape, other values in one chunk a written block read
    zarr.open_array(str(source), mode="r+")[0, :16, :16] = 255 - first[0, :16, :16]
    code, out, err = predict(capsys, model, source, output, *resume)
    assert_one_error(code, err, str(source), "other values", "--resume")
    assert out == "" and tree(incomplete) == written and not output.exists()
    # other metadata at the same path (a float copy of the values): named too
    zarr.create_array(str(source), data=first.astype(np.float32) / 255, chunks=(1, 16, 16), overwrite=True)
    code, _, err = predict(capsys, model, source, output, *resume)
    assert_one_error(code, err, str(source), "metadata")
    # the values it read back in place: the run continues and equals an uninterrupted one
    zarr.create_array(str(source), data=first, chunks=(1, 16, 16), zarr_format=2, overwrite=True)
    code, _, err = predict(capsys, model, source, output, *resume)
    assert code == 0 and "3 written before" in err, err
    code, _, err = predict(capsys, model, source, work / "fresh.ome.zarr", "--chunk", "1,16,16", "--block", "16")
    assert code == 0, err
    read = [zarr.open_array(store=str(p), path="0", mode="r")[...] for p in (output, work / "fresh.ome.zarr")]
    np.testing.assert_array_equal(*read)


def test_nan_volumes_and_resume_with_other_settings_are_refused_in_one_line(work: Path, capsys, monkeypatch) -> None:
    model = model_file(work)
    values = volume_data().astype(np.float32)
    values[1, 3, 4] = np.nan
    zarr.create_array(str(work / "nan.zarr"), data=values, chunks=(1, 40, 40))
    tifffile.imwrite(work / "nan.tif", values, photometric="minisblack")
    for source, output in (("nan.zarr", "o.ome.zarr"), ("nan.tif", "o.tif")):
        code, out, err = predict(capsys, model, work / source, work / output)
        assert_one_error(code, err, source, "NaN")
    source = work / "in.zarr"
    zarr.create_array(str(source), data=volume_data(), chunks=(1, 16, 16))
    interrupted(monkeypatch, capsys, model, source, work / "out.ome.zarr")
    code, _, err = run_cli(
        capsys, ["predict", model, source, work / "out.ome.zarr", "--tile", "64", "--overlap", "16", "--resume"]
    )
    assert_one_error(code, err, "other settings")


# ----------------------------------------------------------------------------- 5. damaged volumes: one line


def test_damaged_volumes_are_named_in_one_line(work: Path, capsys) -> None:
    tifffile.imwrite(work / "truth.tif", truth_data(), photometric="minisblack")
    values = (truth_data() == 255).astype(np.uint8)
    zarr.create_array(str(work / "z.zarr"), data=values, chunks=(1, 20, 20), zarr_format=2)
    (work / "z.zarr" / "1.0.1").write_bytes(b"garbage" * 8)
    with h5py.File(work / "d.h5", "w") as handle:
        handle.create_dataset("raw", data=values, chunks=(1, 40, 40), compression="gzip")
        offset = handle["raw"].id.get_chunk_info(1).byte_offset
    data = bytearray((work / "d.h5").read_bytes())
    data[offset + 2 : offset + 40] = b"\0" * 38
    (work / "d.h5").write_bytes(bytes(data))
    (work / "cut.h5").write_bytes(bytes(data[: len(data) // 2]))
    cases = [
        (work / "z.zarr", "chunk (1, 0, 1)"),
        (f"{work / 'd.h5'}:/raw", "chunk (1, 0, 0)"),
        (f"{work / 'cut.h5'}:/raw", "cut.h5"),
    ]
    for source, problem in cases:
        code, out, err = run_cli(capsys, ["score", source, work / "truth.tif"])
        assert_one_error(code, err, str(source).split(":/")[0], problem)


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda ms: [], "multiscales is an empty list"),
        (lambda ms: ms[0], "multiscales must be a list"),
        (lambda ms: [{**ms[0], "datasets": []}], "multiscales[0].datasets"),
        (lambda ms: [{**ms[0], "axes": "zyx"}], "multiscales[0].axes"),
        (lambda ms: [_scale(ms[0], [1.0, 1.0])], "datasets[0].coordinateTransformations[0].scale"),
        (lambda ms: [_scale(ms[0], ["1", "1", "1"])], "must hold numbers"),
    ],
)
def test_malformed_ngff_metadata_names_the_field(work: Path, capsys, change, field: str) -> None:
    image = write_ome(work / "in.ome.zarr", volume_data(), "0.4")
    attrs = json.loads((image / ".zattrs").read_text())
    attrs["multiscales"] = change(attrs["multiscales"])
    (image / ".zattrs").write_text(json.dumps(attrs))
    code, out, err = run_cli(capsys, ["score", image, image])
    assert_one_error(code, err, "in.ome.zarr", "invalid OME-Zarr metadata", field)


def _scale(image: dict, scale: list) -> dict:
    first = {**image["datasets"][0], "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    return {**image, "datasets": [first, *image["datasets"][1:]]}


# ----------------------------------------------------------------------------- 2. one sweep per name


def test_a_sweep_held_by_a_live_process_is_refused_and_a_dead_one_holds_nothing(work: Path, capsys) -> None:
    import subprocess
    import sys
    import time

    from test_hostile_input import job_file

    storage = work / "runs"
    hold = (
        "import sys, time; from pathlib import Path; from dcn_ray.track.locks import sweep_lock\n"
        "with sweep_lock(Path(sys.argv[1]), 'test'):\n    print('held', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(storage / "test")], stdout=subprocess.PIPE, text=True, cwd=work
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        job = job_file(work)
        for args in (["sweep", job, "--storage", storage], ["resume", "test", "--storage", storage]):
            code, out, err = run_cli(capsys, args)
            assert_one_error(code, err, "sweep 'test'", f"pid {holder.pid}", "another process")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    code, _, err = run_cli(capsys, ["resume", "test", "--storage", storage])
    while "another process" in err and time.monotonic() < deadline:  # the kernel drops a dead holder's lock
        time.sleep(0.2)
        code, _, err = run_cli(capsys, ["resume", "test", "--storage", storage])
    assert_one_error(code, err, "no sweep 'test'")


def test_dry_run_refuses_batch_norm_with_one_value_per_channel(work: Path, capsys) -> None:
    from test_hostile_input import job_file

    job = job_file(work)
    args = ["sweep", job, "--dry-run", "--set", "train.batch_size=1", "--set", "train.crop=8"]
    code, out, err = run_cli(capsys, args)
    assert_one_error(code, err, "batch norm needs more than one value per channel")
    code, _, err = run_cli(capsys, [*args, "--set", "model.batch_norm=false"])
    assert code == 0, err


def test_ray_agents_of_an_ended_session_are_ended_and_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from dcn_ray.runtime import end_orphaned_agents

    sleep = "import time; time.sleep(60)"
    ended_session, live_session = tmp_path / "session_ended", tmp_path / "session_live"
    started = [
        subprocess.Popen([sys.executable, "-c", sleep, "dashboard/agent.py", f"--session-dir={ended_session}"]),
        subprocess.Popen([sys.executable, "-c", sleep, "runtime_env/agent/main.py", f"--session-dir={live_session}"]),
        subprocess.Popen([sys.executable, "-c", sleep, "raylet", f"--log_dir={live_session}/logs"]),
    ]
    try:
        import time

        time.sleep(0.5)
        ended = end_orphaned_agents()  # other users' orphans may be ended too; never a live session's
        assert started[0].pid in ended and started[1].pid not in ended
        assert started[0].wait(timeout=10) != 0
        assert started[1].poll() is None and started[2].poll() is None
    finally:
        for process in started:  # ended by their handles
            process.kill()
            process.wait(timeout=10)
