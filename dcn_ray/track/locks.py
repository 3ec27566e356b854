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

    A folder made here for the lock alone is removed again when the block ends without writing
    anything else into it (a run refused before it started leaves nothing).
    """
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SWEEP_LOCK
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"sweep '{name}' in {folder.parent} is being run by another process ({_holder(path)}); "
                "wait for it to end, or give another --name"
            ) from None
        os.ftruncate(handle, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.write(handle, json.dumps(holder).encode())
        try:
            yield
        finally:
            if made and {entry.name for entry in folder.iterdir()} == {SWEEP_LOCK}:
                path.unlink(missing_ok=True)
                folder.rmdir()
    finally:
        os.close(handle)  # releases the lock


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
