"""Where sweeps live: a local folder, a shared path, or s3:// / gs:// through pyarrow."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dcn_ray.errors import InputError, first_line
from dcn_ray.io.paths import writable_folder
from dcn_ray.job.config import name_problem

DEFAULT_ROOT = "dcn-ray-runs"
#: The record of a sweep (its settings, MLflow ids) in its folder; what `resume` reads.
SWEEP_FILE = "dcn_ray_sweep.json"


#: How an input stands to a folder a sweep writes, said from the input's side.
_INPUT_RELATION = {"is": "is", "contains": "lies in", "lies inside": "contains"}


@dataclass(frozen=True)
class Storage:
    """The storage root of sweeps; each sweep is the folder ``root/NAME`` that Tune also writes to."""

    root: str

    @classmethod
    def for_sweeps(cls, storage: str | None) -> Storage:
        """``storage`` as given (a URI stays a URI), else ``./dcn-ray-runs``, made absolute."""
        if storage and "://" in storage:
            return cls(storage.rstrip("/"))
        root = Path(storage or DEFAULT_ROOT).absolute()
        if root.exists() and not root.is_dir():  # before any run or folder is made
            raise InputError(f"--storage {root}: is a file, not a folder for sweeps")
        return cls(str(root))

    def check_writable(self) -> None:
        """InputError unless new sweep folders can be made here (local roots; a URI is tried by use)."""
        if not self.is_local:
            return
        root = Path(self.root)
        existing = root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"--storage {root}: {existing} is a file, not a folder")
        writable_folder(existing, root)

    def refuse_inputs_in(self, name: str, inputs: Mapping[str, str | Path | None]) -> None:
        """InputError if the folder of sweep ``name``, which the sweep writes, is, contains or lies inside
        an input (``{what: path}``; a zarr store whole, symlinks followed)."""
        if not self.is_local:
            return
        from dcn_ray.io.guard import overlap

        folder = Path(os.path.realpath(self.folder(name)))
        for what, path in inputs.items():
            relation = None if path is None else overlap(folder, path)
            if relation is not None:
                raise InputError(
                    f"{path}: {what} {_INPUT_RELATION[relation]} the folder of sweep '{name}' ({folder}), which the "
                    "sweep writes; move it, or give another --name or --storage"
                )

    def holding(self, name: str) -> AbstractContextManager[None]:
        """Hold sweep ``name`` for the block: a second sweep or resume of it is refused meanwhile."""
        if not self.is_local:  # object stores have no locks: one driver per name is the user's to keep
            return nullcontext()
        from dcn_ray.track.locks import sweep_lock

        return sweep_lock(Path(self.folder(name)), name)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    def folder(self, name: str) -> str:
        """The folder of sweep ``name``, always strictly inside the root (``name`` is a plain name)."""
        problem = name_problem(name)
        if problem is not None:
            raise InputError(f"sweep {name!r}: {problem}")
        folder = f"{self.root}/{name}"
        assert posixpath.dirname(posixpath.normpath(folder)) == posixpath.normpath(self.root), folder
        return folder

    def refuse_existing(self, name: str) -> None:
        """InputError when sweep ``name`` was already run here (``resume`` finishes it)."""
        if self.exists(name, SWEEP_FILE):
            raise InputError(
                f"sweep '{name}' already exists in {self.root}; use `dcn-ray resume {name}` (or another --name)"
            )

    def exists(self, name: str, file: str) -> bool:
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        return filesystem.get_file_info(path).type == pafs.FileType.File

    def read_text(self, name: str, file: str) -> str:
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode(errors="replace")

    def read_bytes(self, name: str, file: str) -> bytes:
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    def newest_file(self, name: str, prefix: str, suffix: str) -> str | None:
        """The newest ``prefix*suffix`` file of the sweep's folder (Tune's names sort by time), or None."""
        filesystem, path = self._resolve(self.folder(name))
        found = [
            info.base_name
            for info in filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            if info.base_name.startswith(prefix) and info.base_name.endswith(suffix)
        ]
        return max(found, default=None)

    def read_record(self, name: str) -> dict:
        """The sweep's record (SWEEP_FILE): its settings and MLflow ids, as `dcn-ray sweep` wrote them."""
        return self._json(name, SWEEP_FILE, self.read_text(name, SWEEP_FILE))

    def _json(self, name: str, file: str, text: str) -> dict:
        """A JSON object of the sweep's folder; InputError naming the file when it is damaged."""
        try:
            value = json.loads(text)
        except ValueError as error:
            raise InputError(f"{self.folder(name)}/{file}: damaged sweep file ({first_line(error)})") from None
        if not isinstance(value, dict):
            raise InputError(f"{self.folder(name)}/{file}: damaged sweep file (not a JSON object)")
        return value

    def write_text(self, name: str, file: str, text: str) -> None:
        """Write whole or not at all (a temporary name, then a move, where the filesystem allows it)."""
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        temporary = f"{path}.partial"
        with filesystem.open_output_stream(temporary) as stream:
            stream.write(text.encode())
        filesystem.move(temporary, path)

    def upload(self, name: str, files: Sequence[Path]) -> None:
        """Copy local files into the sweep's folder (for remote storage)."""
        filesystem, path = self._resolve(self.folder(name))
        for file in files:
            pafs.copy_files(str(file), f"{path}/{file.name}", destination_filesystem=filesystem)

    def read_table(self, name: str, file: str) -> pa.Table:
        """A Parquet table of the sweep's folder."""
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        try:
            return pq.read_table(path, filesystem=filesystem)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{self.folder(name)}/{file}: damaged table ({first_line(error)})") from None

    def finished_trials(self, name: str) -> set[str]:
        """Trial ids that Tune's saved experiment state marks TERMINATED."""
        latest = self.newest_file(name, "experiment_state", ".json")
        if latest is None:
            return set()
        state = self._json(name, latest, self.read_text(name, latest))
        finished = set()
        try:
            for entry in state.get("trial_data", []):
                trial = json.loads(entry[0]) if isinstance(entry, list) else entry
                if trial.get("status") == "TERMINATED":
                    finished.add(trial.get("trial_id"))
        except (ValueError, TypeError, AttributeError, IndexError) as error:
            raise InputError(f"{self.folder(name)}/{latest}: damaged Tune state ({first_line(error)})") from None
        return finished

    def checkpoints_of(self, name: str, trial_id: str) -> list[str]:
        """The ``checkpoint_NNNNNN`` folders that trial ``trial_id`` persisted in sweep ``name``.

        Paths on the storage's filesystem (see :meth:`local_copy`), oldest first. Tune names a
        trial's folder ``<trial name>_<trial id>`` (dcn_ray.tune.sweep.trial_dirname).
        """
        filesystem, path = self._resolve(self.folder(name))
        selector = pafs.FileSelector(path, allow_not_found=True)
        trials = [
            info.path
            for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory and info.base_name.endswith(f"_{trial_id}")
        ]
        found = [
            info.path
            for trial in trials
            for info in filesystem.get_file_info(pafs.FileSelector(trial))
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
        ]
        return sorted(found, key=lambda folder: folder.rsplit("/", 1)[-1])

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        """A folder of the storage (a path from :meth:`checkpoints_of`) on the local disk for the block."""
        if self.is_local:
            yield Path(path)
            return
        filesystem, _ = self._resolve(self.root)
        with tempfile.TemporaryDirectory(prefix="dcn-storage-") as local:
            pafs.copy_files(path, local, source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
            yield Path(local)

    def _resolve(self, location: str) -> tuple[pafs.FileSystem, str]:
        if self.is_local:
            return pafs.LocalFileSystem(), location
        return pafs.FileSystem.from_uri(location)
