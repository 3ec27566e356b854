"""Locks that a dead holder does not keep: one sweep per folder, one creator of an MLflow store.

POSIX record locks (``fcntl.lockf``) belong to the process: the kernel (or the NFS lock
manager, on shared storage) drops them when it ends, however it ends, so a killed sweep never
leaves its name locked. The lock file says who holds it, for the refusal's one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dcn_ray.errors import InputError

#: The lock file in a sweep's folder.
SWEEP_LOCK = ".dcn-ray.lock"


@contextmanager
def sweep_lock(folder: Path, name: str) -> Iterator[None]:
    """Hold sweep ``name``'s ``folder`` for the block; InputError naming the live holder if another has it.

    The lock file is removed when the block ends (and the folders made for it, while empty), so a refused
    run leaves nothing; a holder checks that the file it locked is still the one in the folder.
    """
    made = [folder, *folder.parents]
    made = made[: next(index for index, path in enumerate(made) if path.exists())]  # the folders made here
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SWEEP_LOCK
    handle = _locked(path, name, folder)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(handle, 0)  # a file a killed holder left
        os.write(handle, json.dumps(holder).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a later run makes and locks a new file
        os.close(handle)
        for made_here in made:  # innermost first; only while empty
            if any(made_here.iterdir()):
                break
            made_here.rmdir()


def _locked(path: Path, name: str, folder: Path) -> int:
    """An open, locked handle on the lock file at ``path`` (the file still there, not one removed meanwhile)."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            raise InputError(
                f"sweep '{name}' in {folder.parent} is being run by another process ({_holder(path)}); "
                "wait for it to end, or give another --name"
            ) from None
        try:
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)  # its holder removed it as we locked it: lock the new one


@contextmanager
def creation_lock(target: Path, timeout: float = 120.0) -> Iterator[None]:
    """Wait for, then hold, the lock beside ``target`` (``.NAME.dcn-ray.lock``): one creator at a time."""
    path = target.parent / f".{target.name}.dcn-ray.lock"
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target}: another process held {path} for over {timeout:.0f} s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(handle)


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
        return f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid unknown"
