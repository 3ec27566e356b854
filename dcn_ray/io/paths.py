"""The files a command reads and writes, checked before any work and written whole.

- An input is a regular file: a FIFO or a device would block or never end, a symlink loop is named.
- An output never is, contains or lies inside one of the command's own inputs
  (:mod:`dcn_ray.io.guard`), is not a folder (or, for a folder of outputs, not a file), and its
  folder exists and can be written.
- Temporary files and folders are named ``.NAME.partial-PID-RANDOM`` beside their target; a later
  run removes those whose process has ended (on this machine), so a killed run leaves nothing
  behind for long.
- A folder of outputs (``inspect``, ``synth``) is written into a temporary sibling folder, then
  renamed into place: it appears complete or not at all.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Union

from dcn_ray.errors import InputError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: What marks a temporary file or folder: ``.NAME.partial-PID-RANDOM``.
PARTIAL = ".partial-"


def input_file(path: PathLike, kind: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); InputError naming what it is otherwise."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"{path}: is a loop of symbolic links, not a {kind}") from None
        raise InputError(f"{path}: cannot open ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder, not a {kind}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is a {_kind_of(mode)}, not a regular file; dcn-ray reads only regular files")
    return path


def output_file(path: PathLike, inputs: Mapping[str, PathLike | None] | None = None) -> Path:
    """Check an output file before any work: not a folder or special file, a writable folder, no input.

    ``inputs`` maps what each input is (``"the input stack"``, ``"the --labels file"``) to its path.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the name of the output file")
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: is a {_kind_of(path.stat().st_mode)}; give the name of a regular output file")
    writable_folder(path.parent, path)
    _not_an_input(path, inputs or {})
    return path


def output_folder(path: PathLike, names: Iterable[str], inputs: Mapping[str, PathLike | None] | None = None) -> Path:
    """Check a folder of outputs before any work: a folder (or nothing yet) whose files ``names``
    replace no input and no folder, inside a folder that can be written."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder for the outputs")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    writable_folder(ancestor, path)
    for name in names:
        target = path / name
        if target.is_dir():
            raise InputError(f"{target}: is a folder, where this command writes a file")
        _not_an_input(target, inputs or {})
    return path


def writable_folder(folder: Path, target: Path) -> None:
    """InputError unless ``folder`` (where ``target`` goes) exists, is a folder and takes new files."""
    if not folder.exists():
        raise InputError(f"{target}: the output folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{target}: {folder} is not a folder")
    try:  # permissions, read-only or immutable filesystems, root: only trying tells
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".dcn-ray-probe-")
    except OSError as error:
        raise InputError(f"{target}: cannot write in the folder {folder} ({error.strerror})") from None
    os.close(handle)
    os.unlink(probe)


def _not_an_input(target: Path, inputs: Mapping[str, PathLike | None]) -> None:
    from dcn_ray.io.guard import refuse_overlaps

    refuse_overlaps(target, inputs)


def _kind_of(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "named pipe (FIFO)",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
        stat.S_ISSOCK: "socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "special file")


# ----------------------------------------------------------------------------- temporary files


#: Longest NAME kept whole in a temporary name: with ``.partial-PID-RANDOM`` it stays within 255 bytes.
_LONGEST_STEM = 180


def temporary_stem(target: Path) -> str:
    """``NAME`` of ``target``, or for a name near the file-name limit its start and a hash of it."""
    name = target.name
    if len(name.encode()) <= _LONGEST_STEM:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[:160].decode(errors="ignore") + "~" + digest


def partial_prefix(target: Path) -> str:
    """The name start of this process's temporary files for ``target``: ``.NAME.partial-PID-``."""
    return f".{temporary_stem(target)}{PARTIAL}{os.getpid()}-"


def remove_stale_partials(target: Path) -> None:
    """Remove the temporary files and folders of ``target`` left by runs that have ended."""
    prefix = f".{temporary_stem(target)}{PARTIAL}"
    for entry in target.parent.glob(glob.escape(prefix) + "*"):
        pid = _pid_of(entry.name[len(prefix) :])
        if pid is not None and _running(pid):
            continue
        log.debug("removing %s, left by a run that ended", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _pid_of(tail: str) -> int | None:
    """The pid in ``PID-RANDOM``; None for names without one (written by an older dcn-ray)."""
    head, dash, _ = tail.partition("-")
    return int(head) if dash and head.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_written_whole(folder: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success its files appear in ``folder``.

    A new or empty ``folder`` is replaced by the temporary one in one rename. Into a folder that
    holds other files, the new files are moved one by one with Ctrl-C and SIGTERM held back, so
    only a hard kill in between could leave some of them old. On failure nothing of it remains.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=partial_prefix(folder)))
    try:
        yield temporary
        try:
            os.rename(temporary, folder)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            with signals_held():
                for item in sorted(temporary.iterdir()):
                    _replace(item, folder / item.name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _replace(item: Path, target: Path) -> None:
    """Move ``item`` onto ``target``; a folder (an OME-Zarr store) replaces the folder there whole."""
    if not (item.is_dir() and target.is_dir() and not target.is_symlink()):
        os.replace(item, target)
        return
    old = target.parent / f"{partial_prefix(target)}{secrets.token_hex(4)}"
    os.rename(target, old)
    os.rename(item, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM during the block; one that came is acted on afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, _frame: received.append(number)) for number in watched}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])
