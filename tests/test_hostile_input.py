"""Hostile input through the CLI: no user file destroyed, no hang, one ``dcn-ray: error:`` line, exit 2.

Each test names the class of issue 13 it covers. Most call ``dcn_ray.cli.main`` in this process;
those about hangs and signals run ``python -m dcn_ray`` with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch
import yaml
from conftest import run_cli, small_job

from dcn_ray.core import checkpoint
from dcn_ray.models.dcn import DCN

RNG = np.random.default_rng(13)


# ----------------------------------------------------------------------------- helpers


def assert_one_error(code, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith("dcn-ray: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def process(args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "dcn_ray", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tif(folder: Path, name: str, data: np.ndarray, **kwargs) -> Path:
    path = folder / name
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kwargs)
    return path


def images(z: int = 6, size: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (z, size, size), dtype=np.uint8)


def labels(z: int = 6, size: int = 32) -> np.ndarray:
    stack = np.full((z, size, size), 255, np.uint8)
    stack[:, ::6] = 0
    return stack


def model_file(folder: Path, *, poison: bool = False) -> Path:
    """An untrained narrow DCN as a dcn-ray checkpoint; ``poison``: one weight is NaN."""
    model = DCN(kernels=(4, 8, 16), width=2, batch_norm=True, in_channels=1)
    weights = model.state_dict()
    if poison:
        first = next(name for name, tensor in weights.items() if tensor.is_floating_point())
        weights[first] = weights[first].clone()
        weights[first].view(-1)[0] = float("nan")
    payload = {
        "format": checkpoint.FORMAT,
        "model_kwargs": dict(model.kwargs),
        "config": {"data": {"foreground": 255}},
        "weights": weights,
        "step": 0,
    }
    path = folder / "model.pt"
    torch.save(payload, path)
    return path


def job_file(folder: Path, text: str | None = None, **sections) -> Path:
    """A valid job on 6 slices of 32 x 32 (train 0:4, val 4:6), or ``text`` as the job file."""
    path = folder / "job.yaml"
    if text is None:
        raw = small_job(tif(folder, "images.tif", images()), tif(folder, "labels.tif", labels()), **sections)
        raw["data"]["split"] = {"train": "0:4", "val": "4:6"}
        text = yaml.safe_dump(raw)
    path.write_text(text)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def unwritable(folder: Path) -> Iterator[Path]:
    """A folder nobody can add files to, root included (chattr +i where mode bits do not stop root)."""
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
                pytest.skip("cannot make a folder unwritable for this user")
            immutable = True
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # a default store or storage would land here
    return tmp_path


# ----------------------------------------------------------------------------- 1. own inputs, outputs


@pytest.mark.parametrize("victim", ["labels", "model", "input"])
def test_predict_never_writes_over_its_own_inputs(work: Path, capsys, victim: str) -> None:
    model = model_file(work)
    stack = tif(work, "in.tif", images(2))
    truth = tif(work, "lab.tif", labels(2))
    before = snapshot(work)
    target = {"labels": truth, "model": model, "input": stack}[victim]
    # the same file under another name too: a hard link is still the input
    alias = work / "alias.tif"
    os.link(target, alias)
    for output in (target, alias):
        code, out, err = run_cli(capsys, ["predict", model, stack, output, "--labels", truth, "--no-tta"])
        assert_one_error(code, err, str(output), "of this command")
        assert out == ""
    alias.unlink()
    assert snapshot(work) == before


def test_predict_refuses_a_folder_or_an_unwritable_folder_before_any_work(work: Path, capsys) -> None:
    model = model_file(work)
    stack = tif(work, "in.tif", images(2))
    (work / "out.tif").mkdir()
    code, _, err = run_cli(capsys, ["predict", model, stack, work / "out.tif"])
    assert_one_error(code, err, "out.tif", "is a folder")
    with unwritable(work / "locked") as locked:
        code, _, err = run_cli(capsys, ["predict", model, stack, locked / "out.tif"])
        assert_one_error(code, err, "cannot write in the folder", "locked")
        assert list(locked.iterdir()) == []


def test_predict_removes_temporary_files_left_by_killed_runs_only(work: Path, capsys) -> None:
    model = model_file(work)
    stack = tif(work, "in.tif", images(2))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [work / f".out.tif.partial-{dead.stdout.strip()}-0badf00d", work / ".out.tif.partial-deadbeef"]
    live = work / f".out.tif.partial-{os.getpid()}-c0ffee00"  # a run still going (this process)
    for path in [*stale, live]:
        path.write_bytes(b"half a TIFF")
    code, _, err = run_cli(capsys, ["predict", model, stack, work / "out.tif", "--no-tta"])
    assert code == 0, err
    assert not any(path.exists() for path in stale) and live.exists()
    assert tifffile.imread(work / "out.tif").shape == (2, 32, 32)


def test_synth_writes_both_files_or_neither(work: Path, capsys) -> None:
    out = work / "data"
    out.mkdir()
    (out / "labels.tif").mkdir()  # labels.tif cannot be written: images.tif must not be either
    code, _, err = run_cli(capsys, ["synth", out, "--slices", "2", "--size", "32"])
    assert_one_error(code, err, "labels.tif", "is a folder")
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif"]
    (work / "file").write_text("x")
    code, _, err = run_cli(capsys, ["synth", work / "file", "--slices", "2", "--size", "32"])
    assert_one_error(code, err, "file", "is a file")
    code, _, err = run_cli(capsys, ["synth", out / "new", "--slices", "2", "--size", "32"])
    assert code == 0, err
    assert sorted(p.name for p in (out / "new").iterdir()) == ["images.tif", "labels.tif"]
    assert [p.name for p in out.iterdir() if ".partial-" in p.name] == []


def test_folder_written_whole_leaves_nothing_when_writing_fails(tmp_path: Path) -> None:
    from dcn_ray.io.paths import folder_written_whole

    with pytest.raises(OSError), folder_written_whole(tmp_path / "out") as partial:
        (partial / "first.png").write_bytes(b"x")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("user's")
    with folder_written_whole(tmp_path / "keep") as partial:
        (partial / "scores.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["mine.txt", "scores.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_inspect_refuses_to_write_over_an_input_in_its_folder(work: Path, capsys) -> None:
    model = model_file(work)
    out = work / "out"
    out.mkdir()
    stack = tif(out, "F1.png", images())  # a TIFF under the name of one of inspect's images
    before = snapshot(work)
    code, _, err = run_cli(capsys, ["inspect", model, stack, out, "--labels", tif(work, "labels.tif", labels())])
    assert_one_error(code, err, "F1.png", "the image stack")
    assert snapshot(work) == {**before, "labels.tif": (work / "labels.tif").read_bytes()}


# ----------------------------------------------------------------------------- 2. sweep names


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "tab\there", ".hidden"])
def test_sweep_names_are_plain_names(work: Path, capsys, name: str) -> None:
    storage = work / "root" / "runs"
    storage.mkdir(parents=True)
    job = job_file(work)
    code, _, err = run_cli(capsys, ["sweep", job, "--name", name, "--storage", storage])
    assert_one_error(code, err, "plain name")
    for command in (["resume", name], ["report", name]):
        code, _, err = run_cli(capsys, [*command, "--storage", storage])
        assert_one_error(code, err, "plain name")
    assert list((work / "root").rglob("*")) == [storage]


# ----------------------------------------------------------------------------- 3. TIFF stacks


def test_planar_stack_is_read_as_the_slices_tifffile_returns(work: Path, capsys) -> None:
    model = model_file(work)
    planar = work / "planar.tif"
    with pytest.warns(DeprecationWarning):  # tifffile: stored as one planar RGBA page
        tifffile.imwrite(planar, images(4))
    assert tifffile.imread(planar).shape == (4, 32, 32)
    code, _, err = run_cli(capsys, ["predict", model, planar, work / "out.tif", "--no-tta"])
    assert code == 0, err
    assert tifffile.imread(work / "out.tif").shape == (4, 32, 32)
    # training decides the same way: 4 image slices match 4 label slices
    job = job_file(work, **{"data": {"split": {"train": "0:3", "val": "3:4"}}})
    raw = yaml.safe_load(job.read_text())
    raw["data"].update(images=str(planar), labels=str(tif(work, "labels4.tif", labels(4))))
    raw["data"]["split"] = {"train": "0:3", "val": "3:4"}
    job.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli(capsys, ["sweep", job, "--dry-run"])
    assert code == 0, err
    assert "3 training and 1 validation slices of 32 x 32" in err


def test_pages_of_different_shapes_are_refused(work: Path, capsys) -> None:
    model = model_file(work)
    mixed = work / "mixed.tif"
    with tifffile.TiffWriter(mixed) as writer:  # ImageJ metadata for one image, then a bigger page
        writer.write(images(1)[0], metadata=None, description="ImageJ=1.11a\nimages=1\n")
        writer.write(images(1, 48)[0], metadata=None)
    code, _, err = run_cli(capsys, ["predict", model, mixed, work / "out.tif"])
    assert_one_error(code, err, "mixed.tif", "pages of different shapes", "32 x 32", "48 x 48")
    assert not (work / "out.tif").exists()


# ----------------------------------------------------------------------------- 4. no hang


def test_a_fifo_is_refused_not_waited_on(work: Path) -> None:
    model = model_file(work)
    fifo = work / "in.tif"
    os.mkfifo(fifo)
    done = process(["predict", model, fifo, work / "out.tif"], work, timeout=60)
    assert_one_error(done.returncode, done.stderr, "in.tif", "named pipe (FIFO)")
    os.mkfifo(work / "job.yaml")
    done = process(["sweep", work / "job.yaml", "--dry-run"], work, timeout=60)
    assert_one_error(done.returncode, done.stderr, "job.yaml", "named pipe (FIFO)")


# ----------------------------------------------------------------------------- 5. job files


ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else '1, 1, 1, 1, 1, 1, 1, 1, 1'}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g"], ["a", "b", "c", "d", "e", "f", "g", "h"])
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: one\nmodel: {width: 4}\nname: two\n", "duplicate key 'name' (line 3)"),
        ("name: x\nmodel: " + "[" * 50 + "]" * 50 + "\n", "nesting deeper than 32 levels"),
        ("name: x\nmodel: " + "[" * 100_000 + "]" * 100_000 + "\n", "nesting deeper than 32 levels"),
        (ALIAS_BOMB + "sweep: {kernels: *h}\n", "aliases expand the document"),
    ],
    ids=["duplicate key", "deep nesting", "nesting beyond recursion", "alias bomb"],
)
def test_job_files_that_yaml_reads_but_no_job_is(work: Path, capsys, text: str, problem: str) -> None:
    code, _, err = run_cli(capsys, ["sweep", job_file(work, text), "--dry-run"])
    assert_one_error(code, err, "job.yaml", problem)


def test_split_given_unquoted_through_set_is_a_split(work: Path, capsys) -> None:
    code, _, err = run_cli(capsys, ["sweep", job_file(work), "--dry-run", "--set", "data.split.val=4:6"])
    assert code == 0, err
    code, _, err = run_cli(capsys, ["sweep", job_file(work), "--dry-run", "--set", "data.split.train=0:3"])
    assert code == 0 and "3 training and 2 validation slices" in err, err
    code, _, err = run_cli(capsys, ["sweep", job_file(work), "--dry-run", "--set", "data.split.val=5"])
    assert code == 0 and "and 1 validation slices" in err, err


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0"),
        ("train.momentum=-1", "train.momentum must be in [0, 1)"),
        ("train.momentum=1", "train.momentum must be in [0, 1)"),
        ("train.seed=18446744073709551616", "train.seed 18446744073709551616 is out of range"),
        ("train.lr=.inf", "train.lr must be a finite number > 0"),
        ("train.lr=.nan", "train.lr must be a finite number > 0"),
        ("data.synthetic={slices: 0, size: 32, seed: 0}", "data.synthetic.slices must be >= 1"),
        ("data.synthetic={slices: 2, size: 8, seed: 0}", "data.synthetic.size must be >= 16"),
        ("data.synthetic={slices: 2, size: 32, seed: -1}", "data.synthetic.seed -1 is out of range"),
    ],
)
def test_dry_run_refuses_what_every_trial_would_fail_on(work: Path, capsys, setting: str, problem: str) -> None:
    code, out, err = run_cli(capsys, ["sweep", job_file(work), "--dry-run", "--set", setting])
    assert_one_error(code, err, problem)
    assert out == ""


def test_symlink_loop_as_data_is_named(work: Path, capsys) -> None:
    job = job_file(work)
    (work / "loop-a.tif").symlink_to(work / "loop-b.tif")
    (work / "loop-b.tif").symlink_to(work / "loop-a.tif")
    code, _, err = run_cli(capsys, ["sweep", job, "--dry-run", "--set", f"data.images={work / 'loop-a.tif'}"])
    assert_one_error(code, err, "loop-a.tif", "loop of symbolic links")


# ----------------------------------------------------------------------------- 6. stores


def _fake_sweep(storage: Path, name: str, tracking_uri: str) -> None:
    """The files a finished sweep leaves in its storage folder (a record and a results table)."""
    folder = storage / name
    folder.mkdir(parents=True)
    job = small_job("images.tif", "labels.tif")
    record = {"name": name, "job": job, "tracking_uri": tracking_uri, "experiment_id": "1", "parent_run_id": "p"}
    record.update(gpu=0.0, max_concurrent=1)
    (folder / "dcn_ray_sweep.json").write_text(json.dumps(record))
    row = {"k1": 4, "k2": 8, "k3": 16, "phase": "grid", "status": "finished", "best_val_iou": 0.5}
    row.update(trial_id="t1", mlflow_run_id="r1", seed=0)
    pq.write_table(pa.Table.from_pylist([row]), folder / "results.parquet")


def test_read_only_commands_never_create_a_store(work: Path, capsys) -> None:
    storage = work / "runs"
    missing = work / "gone" / "mlflow.db"
    missing.parent.mkdir()
    _fake_sweep(storage, "done", f"sqlite:///{missing}")
    stack = tif(work, "in.tif", images(2))
    for args in (
        ["register", "done", "best", "--storage", storage],
        ["predict", "sweep:done", stack, work / "out.tif", "--storage", storage],
        ["predict", "runs:/0123", stack, work / "out.tif"],
        ["inspect", "models:/best/1", stack, work / "inspected"],
    ):
        code, _, err = run_cli(capsys, args)
        assert_one_error(code, err, "no MLflow store")
    assert list(missing.parent.iterdir()) == [] and not (work / "mlflow.db").exists()


def test_a_database_of_another_program_is_not_an_mlflow_store(work: Path, capsys) -> None:
    other = work / "other-app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    before = other.read_bytes()
    stack = tif(work, "in.tif", images(2))
    code, _, err = run_cli(
        capsys, ["predict", "runs:/0123", stack, work / "out.tif", "--tracking-uri", f"sqlite:///{other}"]
    )
    assert_one_error(code, err, "other-app.db", "another program", "customers")
    assert other.read_bytes() == before


def test_storage_that_is_a_file_is_refused(work: Path, capsys) -> None:
    (work / "runs").write_text("not a folder")
    for args in (["sweep", job_file(work), "--storage", "runs"], ["report", "x", "--storage", "runs"]):
        code, _, err = run_cli(capsys, args)
        assert_one_error(code, err, "--storage", "is a file, not a folder")
    assert sorted(p.name for p in work.iterdir()) == ["images.tif", "job.yaml", "labels.tif", "runs"]


@pytest.mark.parametrize("damaged", ["dcn_ray_sweep.json", "results.parquet"])
def test_damaged_sweep_files_are_named(work: Path, capsys, damaged: str) -> None:
    storage = work / "runs"
    _fake_sweep(storage, "done", f"sqlite:///{work / 'mlflow.db'}")
    (storage / "done" / damaged).write_bytes(b"\x00\xffnot what it was")
    code, _, err = run_cli(capsys, ["report", "done", "--storage", storage])
    assert_one_error(code, err, str(storage / "done" / damaged), "damaged")


# ----------------------------------------------------------------------------- 7. one clear line


def test_predict_prints_nothing_before_an_input_error(work: Path, capsys) -> None:
    model = model_file(work)
    (work / "notes.tif").write_text("not a TIFF")
    code, out, err = run_cli(capsys, ["predict", model, work / "notes.tif", work / "out.tif"])
    assert_one_error(code, err, "notes.tif", "not a TIFF file")
    assert out == ""


def test_a_model_with_nan_weights_is_refused(work: Path, capsys) -> None:
    model = model_file(work, poison=True)
    code, _, err = run_cli(capsys, ["predict", model, tif(work, "in.tif", images(2)), work / "out.tif"])
    assert_one_error(code, err, "model.pt", "NaN or infinite")
    assert not (work / "out.tif").exists()


# ----------------------------------------------------------------------------- signals, silent services


def test_sigterm_during_predict_removes_its_temporary_file(work: Path) -> None:
    model = model_file(work)
    stack = tif(work, "in.tif", images(400, 64))
    command = [sys.executable, "-m", "dcn_ray", "predict", model, stack, work / "out.tif"]
    predicting = subprocess.Popen(list(map(str, command)), cwd=work, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob(".out.tif.partial-*")) and time.monotonic() < deadline:
            assert predicting.poll() is None, predicting.stderr.read()
            time.sleep(0.05)
        assert list(work.glob(".out.tif.partial-*")), "prediction never started writing"
        predicting.send_signal(signal.SIGTERM)
        _, err = predicting.communicate(timeout=60)
    finally:
        if predicting.poll() is None:
            predicting.kill()
    assert predicting.returncode == 143, err
    assert err.splitlines()[-1] == "dcn-ray: terminated (SIGTERM)"
    assert sorted(p.name for p in work.iterdir()) == ["in.tif", "model.pt"]


@pytest.mark.integration
def test_silent_ray_and_jobs_api_addresses_fail_within_about_30_s(work: Path) -> None:
    silent = socket.socket()  # connections are accepted (by the kernel) and never answered
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    job = job_file(work)
    started = time.monotonic()
    commands = [
        ["sweep", job, "--dry-run", "--address", f"127.0.0.1:{port}"],
        ["status", "raysubmit_1", "--address", f"http://127.0.0.1:{port}"],
    ]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "dcn_ray", *map(str, args)], cwd=work, env=env, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    try:
        errors = [process.communicate(timeout=120)[1] for process in running]
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
        silent.close()
    assert time.monotonic() - started < 60
    assert_one_error(running[0].returncode, errors[0], f"no Ray cluster answers at 127.0.0.1:{port} within 30 s")
    assert_one_error(running[1].returncode, errors[1], "did not answer within 30 s")


def test_sweep_refuses_a_foreign_database_or_unwritable_storage_before_any_run(work: Path, capsys) -> None:
    job = job_file(work)
    other = work / "other-app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    before = other.read_bytes()
    code, _, err = run_cli(capsys, ["sweep", job, "--tracking-uri", f"sqlite:///{other}", "--storage", work / "runs"])
    assert_one_error(code, err, "other-app.db", "another program")
    assert other.read_bytes() == before and not (work / "runs").exists()
    with unwritable(work / "locked") as locked:
        code, _, err = run_cli(capsys, ["sweep", job, "--storage", locked / "runs"])
        assert_one_error(code, err, "cannot write in the folder", "locked")
    assert not (work / "mlflow.db").exists(), "no store, so no parent run left RUNNING"


# ----------------------------------------------------------------------------- 8. resume finds checkpoints


def test_a_relaunched_trial_finds_its_newest_checkpoint_in_any_storage(tmp_path: Path) -> None:
    from dcn_ray.job.config import job_from_dict
    from dcn_ray.tune.trial import SweepContext, persisted_state

    root = tmp_path / "runs"
    trial = root / "sweep" / "grid-4-8-16-s0_abc12345"
    for step, number in ((30, 0), (60, 1)):
        state = {"format": checkpoint.FORMAT, "step": step, "history": []}
        checkpoint.save(state, trial / f"checkpoint_{number:06d}" / checkpoint.STATE_FILE)
    (trial / "checkpoint_000002").mkdir()
    (trial / "checkpoint_000002" / checkpoint.STATE_FILE).write_bytes(b"cut short by the kill")
    job = job_from_dict(small_job("images.tif", "labels.tif"))
    for storage in (str(root), root.as_uri()):  # a local (or shared) path, and a pyarrow URI
        context = SweepContext(job, "sqlite:///x.db", "1", "p", storage_root=storage.rstrip("/"), sweep="sweep")
        assert persisted_state(context, "abc12345")["step"] == 60, storage
        assert persisted_state(context, "other999") is None


def test_a_sweep_never_writes_over_its_job_file_or_data(work: Path, capsys) -> None:
    folder = work / "runs" / "test"  # the folder the sweep "test" would write
    folder.mkdir(parents=True)
    job = job_file(folder)
    before = snapshot(work)
    code, _, err = run_cli(capsys, ["sweep", job, "--storage", work / "runs"])
    assert_one_error(code, err, "job.yaml", "the job file lies in the folder of sweep 'test'")
    assert snapshot(work) == before


def test_a_model_that_is_a_fifo_is_refused_not_waited_on(work: Path) -> None:
    os.mkfifo(work / "model.pt")
    done = process(["predict", work / "model.pt", tif(work, "in.tif", images(2)), work / "out.tif"], work, timeout=60)
    assert_one_error(done.returncode, done.stderr, "model.pt", "named pipe (FIFO)")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, synthetic_stack, empty_store) -> Path:
    """The storage of a real finished sweep 'done' (one trial), its MLflow store beside it."""
    from conftest import sqlite_copy, sweep_on_local_ray

    folder = tmp_path_factory.mktemp("finished")
    raw = small_job(
        *synthetic_stack,
        name="done",
        sweep={"kernels": [[4, 8, 16]], "resources": {"gpu": 0, "cpu": 1}},
        tracking={"uri": sqlite_copy(empty_store, folder)},
    )
    outcome = sweep_on_local_ray(raw, folder / "runs")
    assert outcome.errored == 0
    return folder / "runs"


@pytest.mark.integration
@pytest.mark.parametrize("damaged", ["experiment_state", "tuner.pkl", "searcher-state", "dcn_ray_sweep.json"])
def test_resume_names_a_damaged_state_file_before_starting_anything(
    finished_sweep: Path, work: Path, capsys, damaged: str
) -> None:
    import ray

    storage = work / "runs"
    shutil.copytree(finished_sweep, storage)
    file = max(p for p in (storage / "done").iterdir() if p.name.startswith(damaged))
    file.write_bytes(b"\x00garbage\xff")
    code, out, err = run_cli(capsys, ["resume", "done", "--storage", storage])
    assert_one_error(code, err, str(file), "damaged")
    assert out == "" and not ray.is_initialized(), "refused before Ray started (Tune would restart the sweep)"
