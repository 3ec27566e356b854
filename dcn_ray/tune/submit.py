"""Submit a sweep to a Ray cluster through the Ray Jobs API, and follow it.

The cluster runs this checkout's code: the job ships the ``dcn_ray`` package (``py_modules``)
and a copy of the job file (``working_dir``), then runs ``python -m dcn_ray sweep`` on the head
node, connected to its own cluster (``--address auto``). ``address`` is the Jobs API (dashboard)
address, e.g. ``http://127.0.0.1:8265``.

Token authentication (Ray 2.60's default): set ``RAY_AUTH_MODE=token`` and the cluster's token
in ``RAY_AUTH_TOKEN`` (or a file named by ``RAY_AUTH_TOKEN_PATH``) before calling these functions.

Example::

    job_id = submit_sweep(Path("jobs/table1.yaml"), address="http://head:8265",
                          storage="s3://bucket/dcn-ray-runs", tracking_uri="http://mlflow:5000")
    final = follow_logs("http://head:8265", job_id, print)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

import dcn_ray
from dcn_ray.errors import InputError, first_line
from dcn_ray.job.job_file import load_job, read_job_file
from dcn_ray.runtime import ray_log_level

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: Longest wait for one answer of the Jobs API: a silent server is an error, not a hang.
REQUEST_TIMEOUT_S = 30.0
#: While following logs: after this long without a line, the job's status is asked (bounded).
QUIET_CHECK_S = 60.0
PACKAGE_DIR = Path(dcn_ray.__file__).resolve().parent
#: Loggers of the Jobs SDK that set their own level.
SDK_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")


def sweep_entrypoint(
    job_name: str,
    *,
    overrides: Sequence[str] = (),
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """The shell command that runs the sweep of ``job_name`` inside a Ray job, each part quoted."""
    command = ["python", "-m", "dcn_ray", "sweep", job_name, "--address", "auto"]
    if name:
        command += ["--name", name]
    if storage:
        command += ["--storage", storage]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    for override in overrides:
        command += ["--set", override]
    return shlex.join(command)


def write_job_copy(job_file: Path, folder: Path) -> Path:
    """Copy ``job_file`` into ``folder`` with relative data paths made absolute.

    Data paths in a job file are relative to the file; the copy travels to the cluster, so they
    are resolved here. The cluster must see the data at that path (or override it with
    ``--set data.images=PATH``, a path on the cluster).
    """
    raw = read_job_file(job_file)
    copy = folder / job_file.name
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


def submit_sweep(
    job_file: Path,
    *,
    address: str,
    overrides: Sequence[str] = (),
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Check ``job_file`` here, submit its sweep to the cluster at ``address``; return the job's id."""
    job_file = Path(job_file)
    load_job(job_file, overrides)  # bad keys and values fail here, not after queueing on the cluster
    entrypoint = sweep_entrypoint(
        job_file.name, overrides=overrides, name=name, storage=storage, tracking_uri=tracking_uri
    )
    with tempfile.TemporaryDirectory(prefix="dcn-ray-submit-") as folder:
        write_job_copy(job_file, Path(folder))
        runtime_env = {"working_dir": folder, "py_modules": [str(PACKAGE_DIR)]}
        # The Jobs API uploads working_dir and py_modules during submit_job: the folder can go after.
        return submit_entrypoint(address, entrypoint, runtime_env)


def submit_entrypoint(address: str, entrypoint: str, runtime_env: Mapping[str, Any] | None = None) -> str:
    """Submit any shell ``entrypoint`` as a Ray job at ``address``; return its submission id."""
    client = _client(address)
    submission_id = _call(address, client.submit_job, entrypoint=entrypoint, runtime_env=dict(runtime_env or {}))
    log.info("submitted job %s to %s: %s", submission_id, address, entrypoint)
    return submission_id


def job_status(address: str, submission_id: str) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    client = _client(address)
    return str(_call(address, client.get_job_status, submission_id).value)


def job_logs(address: str, submission_id: str) -> str:
    """Everything the job has printed so far."""
    client = _client(address)
    return _call(address, client.get_job_logs, submission_id)


def follow_logs(address: str, submission_id: str, write: Callable[[str], None], *, settle_s: float = 30.0) -> str:
    """Pass each line the job prints (without its newline) to ``write`` until it ends; return its final status.

    ``settle_s`` bounds the wait, after the log stream closes, for the status to become final.
    """
    client = _client(address)
    _call(address, client.get_job_status, submission_id)  # an unknown id fails here, with its name

    async def stream() -> None:
        pending = ""
        chunks = client.tail_job_logs(submission_id).__aiter__()
        waiting: asyncio.Future | None = None
        while True:
            waiting = waiting or asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait({waiting}, timeout=QUIET_CHECK_S)
            if not done:  # a quiet job, or a lost connection: the status request is bounded
                if await asyncio.to_thread(job_status, address, submission_id) in FINAL_STATES:
                    waiting.cancel()
                    break
                continue
            try:
                chunk = waiting.result()
            except StopAsyncIteration:
                break
            waiting = None
            *lines, pending = (pending + chunk).split("\n")
            for line in lines:
                write(line)
        if pending:
            write(pending)

    asyncio.run(stream())
    deadline = time.monotonic() + settle_s
    status = job_status(address, submission_id)
    while status not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        status = job_status(address, submission_id)
    return status


def _client(address: str):
    """A JobSubmissionClient for ``address``; an unreachable or refusing cluster is an InputError."""
    from ray.job_submission import JobSubmissionClient

    # Ray sets its loggers to INFO as it loads ("Uploading package ...", "Creating a file package"):
    # they take Ray's level in dcn-ray instead (the CLI: errors only; everything with -v).
    for name in ("ray", *SDK_LOGGERS):
        logging.getLogger(name).setLevel(ray_log_level())
    if address.startswith("ray://"):
        raise InputError(
            f"{address} is a Ray Client address; submit needs the dashboard address, e.g. http://HOST:8265"
        )
    for variable in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(variable) and os.environ[variable] != address:
            log.warning("%s=%s is set: Ray uses it instead of %s", variable, os.environ[variable], address)
            break

    class BoundedClient(JobSubmissionClient):
        """Ray's client with a timeout on every request (it waits forever without one)."""

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    return _call(address, BoundedClient, address)


def _call(address: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a Jobs API function; turn connection, authentication and unknown-job errors into InputError."""
    from ray.exceptions import AuthenticationError, RpcError

    try:
        return function(*args, **kwargs)
    except AuthenticationError:
        raise InputError(
            f"the Ray cluster at {address} refused the request: set RAY_AUTH_MODE=token and its token "
            "in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        ) from None
    except (ConnectionError, RpcError):
        raise InputError(
            f"cannot reach the Ray Jobs API at {address} (is the cluster's dashboard running there?)"
        ) from None
    except OSError as error:  # requests' timeouts and connection errors
        raise InputError(
            f"the Ray Jobs API at {address} did not answer within {REQUEST_TIMEOUT_S:.0f} s ({first_line(error)})"
        ) from None
    except RuntimeError as error:
        message = first_line(error)
        if "status code 404" in message:
            raise InputError(f"the Ray cluster at {address} does not know this job: {message[:200]}") from None
        raise
