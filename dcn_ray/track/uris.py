"""MLflow tracking URIs: the default store, resolving, and checking a server answers (no MLflow import)."""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

from dcn_ray.errors import InputError, first_line

#: Tables every MLflow SQLite store has; a database without them belongs to another program.
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs"})


def fail_fast_http() -> None:
    """Make MLflow's HTTP client fail in seconds, not minutes, when the server is down.

    Its default (7 retries with exponential backoff) blocks a trial for about four minutes
    per call; dcn-ray buffers and retries on its own instead (TrialRun, _retry).
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def default_tracking_uri() -> str:
    """The embedded store: ``sqlite:///<working dir>/mlflow.db`` (what ``mlflow ui`` opens there)."""
    return f"sqlite:///{Path('mlflow.db').absolute()}"


def resolve_uri(uri: str | None) -> str:
    """An explicit URI, else the embedded store. Relative sqlite paths are made absolute."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).absolute()}"
    if "://" not in uri:
        raise InputError(f"tracking URI {uri!r} is not a URI (e.g. http://host:5000 or sqlite:///mlflow.db)")
    return uri


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """A clear error before any trial runs when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError, ValueError):
        pass
    raise InputError(f"MLflow tracking server {uri} is not reachable (no answer from {uri.rstrip('/')}/health)")


def check_store(uri: str, *, must_exist: bool = False) -> None:
    """Before MLflow opens ``uri``: an SQLite file must be an MLflow store, an HTTP server must answer.

    MLflow adds its tables to any SQLite database it is pointed at, and creates a missing one:
    a database of another program is refused, and with ``must_exist`` (commands that only read)
    a missing or empty one too.
    """
    fail_fast_http()  # every later MLflow request then waits 30 s at most
    if uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri[len("sqlite:///") :]), must_exist)
    check_reachable(uri)


def _check_sqlite(path: Path, must_exist: bool) -> None:
    missing = InputError(f"no MLflow store at {path} (give --tracking-uri or set MLFLOW_TRACKING_URI)")
    if not path.exists():
        if must_exist:
            raise missing
        return
    if not path.is_file():
        raise InputError(f"{path}: is not a file, so not an SQLite MLflow store")
    if path.stat().st_size == 0:
        if must_exist:
            raise missing
        return
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise InputError(f"{path}: is not an SQLite database ({first_line(error)}), so not an MLflow store") from None
    if not MLFLOW_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) or "none"
        raise InputError(
            f"{path}: is an SQLite database of another program (tables: {shown}), not an MLflow store; "
            "give another --tracking-uri"
        )
