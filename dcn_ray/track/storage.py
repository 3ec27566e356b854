"""Where sweeps live: a local folder, a shared path, or s3:// / gs:// through pyarrow."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dcn_ray.track import report

DEFAULT_ROOT = "dcn-ray-runs"
#: The record of a sweep (its settings, MLflow ids) in its folder; what `resume` reads.
SWEEP_FILE = "dcn_ray_sweep.json"


@dataclass(frozen=True)
class Storage:
    """The storage root of sweeps; each sweep is the folder ``root/NAME`` that Tune also writes to."""

    root: str

    @classmethod
    def for_sweeps(cls, storage: str | None) -> Storage:
        """``storage`` as given (a URI stays a URI), else ``./dcn-ray-runs``, made absolute."""
        if storage and "://" in storage:
            return cls(storage.rstrip("/"))
        return cls(str(Path(storage or DEFAULT_ROOT).absolute()))

    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    def folder(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str, file: str) -> bool:
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        return filesystem.get_file_info(path).type == pafs.FileType.File

    def read_text(self, name: str, file: str) -> str:
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode()

    def read_record(self, name: str) -> dict:
        """The sweep's record (SWEEP_FILE): its settings and MLflow ids, as `dcn-ray sweep` wrote them."""
        return json.loads(self.read_text(name, SWEEP_FILE))

    def write_text(self, name: str, file: str, text: str) -> None:
        """Write whole or not at all (a temporary name, then a move, where the filesystem allows it)."""
        filesystem, path = self._resolve(f"{self.folder(name)}/{file}")
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        temporary = f"{path}.partial"
        with filesystem.open_output_stream(temporary) as stream:
            stream.write(text.encode())
        filesystem.move(temporary, path)

    def write_results(self, name: str, table: pa.Table, reference: Sequence[int]) -> Path:
        """The results table (Parquet, Markdown, chart) in the sweep folder; returns a local copy's folder."""
        if self.is_local:
            report.write(table, Path(self.folder(name)), reference)
            return Path(self.folder(name))
        local = Path(tempfile.mkdtemp(prefix="dcn-results-"))
        files = report.write(table, local, reference)
        filesystem, path = self._resolve(self.folder(name))
        for file in files:
            pafs.copy_files(str(file), f"{path}/{file.name}", destination_filesystem=filesystem)
        return local

    def read_results(self, name: str) -> pa.Table:
        filesystem, path = self._resolve(f"{self.folder(name)}/{report.TABLE_FILE}")
        return pq.read_table(path, filesystem=filesystem)

    def finished_trials(self, name: str) -> set[str]:
        """Trial ids that Tune's saved experiment state marks TERMINATED."""
        filesystem, path = self._resolve(self.folder(name))
        states = [
            info
            for info in filesystem.get_file_info(pafs.FileSelector(path))
            if info.base_name.startswith("experiment_state") and info.base_name.endswith(".json")
        ]
        if not states:
            return set()
        latest = max(states, key=lambda info: info.base_name)
        with filesystem.open_input_stream(latest.path) as stream:
            state = json.loads(stream.read().decode())
        finished = set()
        for entry in state.get("trial_data", []):
            trial = json.loads(entry[0]) if isinstance(entry, list) else entry
            if trial.get("status") == "TERMINATED":
                finished.add(trial.get("trial_id"))
        return finished

    def _resolve(self, location: str) -> tuple[pafs.FileSystem, str]:
        if self.is_local:
            return pafs.LocalFileSystem(), location
        return pafs.FileSystem.from_uri(location)
