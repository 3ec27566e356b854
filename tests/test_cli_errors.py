"""Every kind of bad input through the CLI: one ``dcn-ray: error:`` line, exit 2, no traceback,
no output file.

Most cases call ``dcn_ray.cli.main`` in this process (fast); a few run ``python -m dcn_ray`` to show
that nothing else (a traceback, a log line, a library warning) reaches the user's terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from conftest import REPO, free_port, run_cli, small_job

from dcn_ray.core import checkpoint
from dcn_ray.models.dcn import DCN
from dcn_ray.tune.sweep import SWEEP_FILE

RNG = np.random.default_rng(3)


@dataclass(frozen=True)
class Place:
    """Inputs live in ``inputs``; ``work`` is the working directory, which must stay empty."""

    inputs: Path
    work: Path

    def tif(self, name: str, data: np.ndarray) -> str:
        path = self.inputs / name
        tifffile.imwrite(path, data, photometric="minisblack")
        return str(path)

    def job(self, images: str | None = None, labels: str | None = None, **sections) -> str:
        """A valid job on 6 slices of 32 x 32 (train 0:4, val 4:6), its data replaced if given."""
        images = images or self.tif("images.tif", _images())
        labels = labels or self.tif("labels.tif", _labels())
        raw = small_job(images, labels, **sections)
        raw["data"]["split"] = {"train": "0:4", "val": "4:6"}
        path = self.inputs / "job.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def sweep(self, *options: str, **job) -> list[str]:
        return ["sweep", self.job(**job), "--dry-run", *options]

    def new_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.work)) for p in self.work.rglob("*"))


def _images(shape: tuple[int, ...] = (6, 32, 32)) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _labels(z: int = 6) -> np.ndarray:
    labels = np.full((z, 32, 32), 255, np.uint8)
    labels[:, ::6] = 0  # membranes: every 6th row
    return labels


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Place:
    inputs, work = tmp_path / "inputs", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)  # default storage and MLflow store would land here
    return Place(inputs, work)


def assert_one_error(code: int | str | None, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("dcn-ray: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


# ----------------------------------------------------------------------------- bad files


def _truncated(place: Place) -> str:
    whole = Path(place.tif("whole.tif", _images()))
    cut = place.inputs / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return str(cut)


def _text_file(place: Place) -> str:
    path = place.inputs / "notes.tif"
    path.write_text("no pixels here\n")
    return str(path)


def _no_train_foreground(place: Place) -> str:
    labels = _labels()
    labels[:4] = 0  # the training slices 0:4 are all membrane; val 4:6 has cells
    return place.tif("labels.tif", labels)


Case = Callable[[Place], list[str]]

CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "missing job file": (
        lambda p: ["sweep", str(p.inputs / "nope.yaml"), "--dry-run"],
        ("job file not found", "nope.yaml"),
    ),
    "job file is a folder": (lambda p: ["sweep", str(p.inputs), "--dry-run"], ("JOB_FILE", "is a directory")),
    "job file not YAML": (
        lambda p: ["sweep", _write(p.inputs / "bad.yaml", "name: [unclosed\n"), "--dry-run"],
        ("bad.yaml", "not readable YAML"),
    ),
    "missing image file": (lambda p: p.sweep(images=str(p.inputs / "missing.tif")), ("missing.tif", "no such file")),
    "not a TIFF": (lambda p: p.sweep(images=_text_file(p)), ("notes.tif", "not a TIFF file")),
    "truncated TIFF": (lambda p: p.sweep(images=_truncated(p)), ("cut.tif", "truncated")),
    "4-D stack": (lambda p: p.sweep(images=p.tif("4d.tif", _images((2, 6, 32, 32)))), ("4d.tif", "4-D")),
    "image/label shape mismatch": (
        lambda p: p.sweep(labels=p.tif("labels5.tif", _labels(5))),
        ("(6, 32, 32)", "labels5.tif", "(5, 32, 32)"),
    ),
    "no foreground in the training split": (
        lambda p: p.sweep(labels=_no_train_foreground(p)),
        ("data.split.train: no foreground pixel", "labels.tif"),
    ),
    "split past the stack": (
        lambda p: p.sweep("--set", "data.split.train=0:40"),
        ("data.split.train", "'0:40'", "6 slices"),
    ),
    "unknown job key": (lambda p: p.sweep("--set", "train.stepz=5"), ("unknown job key 'train.stepz'",)),
    "--set without =": (lambda p: p.sweep("--set", "train.steps"), ("--set expects key=value",)),
    "wrong value type": (lambda p: p.sweep("--set", "train.steps=abc"), ("train.steps must be an integer", "'abc'")),
    "invalid kernel triple": (
        lambda p: p.sweep("--set", "sweep.kernels=[[4, 8, 3]]"),
        ("sweep.kernels[0]", "k3=3", "stride 8"),
    ),
    "crop larger than the slices": (lambda p: p.sweep("--set", "train.crop=64"), ("train.crop=64", "32 x 32")),
    "resources no node has": (
        lambda p: p.sweep("--set", "sweep.resources.cpu=512"),
        ("no node can provide sweep.resources", "cpu 512"),
    ),
    "resume of no sweep": (lambda p: ["resume", "nope", "--storage", str(p.inputs / "runs")], ("no sweep 'nope'",)),
    "report of no sweep": (
        lambda p: ["report", "nope", "--storage", str(p.inputs / "runs")],
        ("no results for sweep 'nope'",),
    ),
    "synth with 0 slices": (lambda p: ["synth", str(p.work / "synthetic"), "--slices", "0"], ("--slices", "0")),
    "unknown command": (lambda p: ["nope"], ("No such command 'nope'",)),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_line_and_exit_2(name: str, place: Place, capsys) -> None:
    build, fragments = CASES[name]
    args = build(place)
    code, out, err = run_cli(capsys, args)
    assert_one_error(code, err, *fragments)
    assert out == ""
    assert place.new_files() == []


def test_the_valid_job_passes_the_dry_run(place: Place, capsys) -> None:
    """The control of every case above: the same job, unchanged, is accepted."""
    code, out, err = run_cli(capsys, place.sweep())
    assert code == 0, err
    assert "k1=4 k2=8 k3=16" in out and "data: 4 training and 2 validation slices of 32 x 32" in err
    assert place.new_files() == []


def test_unreadable_job_file(place: Place, capsys) -> None:
    path = Path(place.job())
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user (root) reads a file whatever its mode; see 'job file is a folder'")
    code, _, err = run_cli(capsys, ["sweep", str(path), "--dry-run"])
    assert_one_error(code, err, str(path), "Permission denied")


# ----------------------------------------------------------------------------- sweeps


def test_existing_sweep_name_is_refused(place: Place, capsys) -> None:
    storage = place.inputs / "runs"
    (storage / "test").mkdir(parents=True)
    (storage / "test" / SWEEP_FILE).write_text("{}")
    code, out, err = run_cli(capsys, ["sweep", place.job(), "--storage", str(storage)])
    assert_one_error(code, err, "sweep 'test' already exists", "dcn-ray resume test")
    assert sorted(p.name for p in storage.rglob("*")) == [SWEEP_FILE, "test"]
    assert place.new_files() == []
    # Refused before Ray, MLflow or torch is imported (it took 24 s when the check came after them)
    probe = (
        "import sys\nfrom dcn_ray.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, *sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))"
    )
    args = [sys.executable, "-c", probe, "sweep", place.job(), "--storage", str(storage)]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.stdout.split() == ["2"] and "already exists" in done.stderr


def test_unreachable_tracking_server_stops_before_ray(place: Place, capsys) -> None:
    import ray

    uri = f"http://127.0.0.1:{free_port()}"
    storage = place.inputs / "runs"
    code, _, err = run_cli(capsys, ["sweep", place.job(), "--tracking-uri", uri, "--storage", str(storage)])
    assert_one_error(code, err, f"MLflow tracking server {uri} is not reachable")
    assert not ray.is_initialized()
    assert not storage.exists() and place.new_files() == []


# ----------------------------------------------------------------------------- inspect


def _checkpoint_payload(width: int = 2) -> dict:
    model = DCN(kernels=(4, 8, 16), width=width, batch_norm=True, in_channels=1)
    return {
        "format": checkpoint.FORMAT,
        "model_kwargs": dict(model.kwargs),
        "config": {},
        "weights": model.state_dict(),
    }


def _corrupted(path: Path) -> None:
    torch.save(_checkpoint_payload(), path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3 : len(raw) // 3 + 64] = b"\x00" * 64
    path.write_bytes(bytes(raw[: len(raw) * 2 // 3]))


def _mismatched(path: Path) -> None:
    payload = _checkpoint_payload()
    payload["model_kwargs"] = {**payload["model_kwargs"], "width": 3}
    torch.save(payload, path)


MODELS: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupted": (_corrupted, "is not a readable dcn-ray checkpoint"),
    "foreign torch file": (
        lambda p: torch.save({"state_dict": {"w": torch.zeros(3)}}, p),
        "no 'dcn-ray-checkpoint/1' format tag",
    ),
    "pickled module": (lambda p: torch.save(torch.nn.Linear(2, 2), p), "is not a readable dcn-ray checkpoint"),
    "weights of another model": (_mismatched, "checkpoint does not match the DCN"),
    "not a file": (lambda p: None, "not found: give a checkpoint file or folder"),
}


@pytest.mark.parametrize("kind", MODELS)
def test_inspect_bad_checkpoint(kind: str, place: Place, capsys) -> None:
    make, message = MODELS[kind]
    model = place.inputs / "model.pt"
    make(model)
    out_dir = place.work / "inspect"
    stack = place.tif("images.tif", _images())
    code, out, err = run_cli(
        capsys, ["inspect", str(model), stack, str(out_dir), "--labels", place.tif("labels.tif", _labels())]
    )
    assert_one_error(code, err, str(model), message)
    assert out == "" and place.new_files() == []


def test_inspect_good_checkpoint_on_a_bad_stack(place: Place, capsys) -> None:
    model = place.inputs / "model.pt"
    torch.save(_checkpoint_payload(), model)
    out_dir = place.work / "inspect"
    code, _, err = run_cli(
        capsys, ["inspect", str(model), _text_file(place), str(out_dir), "--labels", place.tif("labels.tif", _labels())]
    )
    assert_one_error(code, err, "notes.tif", "not a TIFF file")
    assert place.new_files() == []


# ----------------------------------------------------------------------------- a real process


def _process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # a library warning would show up too
    return subprocess.run(
        [sys.executable, "-m", "dcn_ray", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_process_bad_data_shows_only_the_error(place: Place) -> None:
    labels = _labels()
    labels[:] = 0  # no pixel has the foreground value 255 anywhere
    args = place.sweep(labels=place.tif("labels.tif", labels))
    done = _process(args, place.work)
    assert_one_error(done.returncode, done.stderr, "labels.tif", "255")
    assert done.stdout == "" and place.new_files() == []


def test_process_corrupted_checkpoint(place: Place) -> None:
    model = place.inputs / "model.pt"
    _corrupted(model)
    done = _process(["inspect", str(model), place.tif("images.tif", _images()), "out"], place.work)
    assert_one_error(done.returncode, done.stderr, "is not a readable dcn-ray checkpoint")
    assert place.new_files() == []


def test_process_usage_error(tmp_path: Path) -> None:
    done = _process(["synth", str(tmp_path / "out"), "--slices", "0"], REPO)
    assert_one_error(done.returncode, done.stderr, "--slices")
    assert not (tmp_path / "out").exists()
