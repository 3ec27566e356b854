"""The ``dcn-ray`` command: parse, call one function, turn known errors into one line.

Exit codes: 0 done, 2 bad input (one line on stderr naming the problem), 1 a failure while running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings

import click

from dcn_ray import __version__
from dcn_ray.cli.cluster import logs, status, submit
from dcn_ray.cli.common import echo as _echo
from dcn_ray.cli.data import synth
from dcn_ray.cli.export import export
from dcn_ray.cli.predict import inspect, predict
from dcn_ray.cli.score import score
from dcn_ray.cli.suggest import suggest
from dcn_ray.cli.sweep import register, report, resume, sweep
from dcn_ray.errors import InputError, first_line

log = logging.getLogger("dcn_ray")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcn-ray")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
def cli(verbose: bool) -> None:
    """Tune the Deep Contextual Network for EM segmentation on Ray, tracked in MLflow."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    for noisy in ("ray", "mlflow", "alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Library warnings (torch, tifffile, numpy, Ray) only with -v: dcn-ray says what matters itself.
    # tifffile logs damage at ERROR, which io/tiff.py turns into the one error line.
    logging.getLogger("tifffile").setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        warnings.simplefilter("ignore")
    logging.captureWarnings(True)
    quiet = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "DEBUG" if verbose else "WARNING",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout holds the results table alone
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no "Downloading artifacts" bar before a result line
        # A failed trial: one line from dcn_ray.tune.progress; Tune's traceback only with -v
        "TUNE_PRINT_ALL_TRIAL_ERRORS": "1" if verbose else "0",
        # Ray's Python log lines (its own handler): errors only, everything with -v (see ray_session)
        "RAY_LOGGER_LEVEL": "debug" if verbose else "error",
    }
    for name, value in quiet.items():
        os.environ.setdefault(name, value)


for command in (sweep, resume, report, register, predict, inspect, suggest, export, score, synth, submit, status, logs):
    cli.add_command(command)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: temporary files removed, child runs marked, then exit."""


_signals: list[int] = []  # SIGTERM received in this run (a sweep ends "interrupted" whichever stopped it)


def _terminate(signum: int, _frame: object) -> None:
    _signals.append(signum)
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 2 with one line for bad input, 1 with one line for a failure.

    SIGTERM (from ``kill``, a job scheduler, a container stop) is handled as Ctrl-C: it raises
    KeyboardInterrupt, so every ``with`` block cleans up on the way out; exit code 143 (Ctrl-C: 130).
    """
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    _signals.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # runtime.ray_session keeps it over Ray's own
    try:
        cli.main(args=argv, prog_name="dcn-ray", standalone_mode=False)
    except SystemExit as done:  # a sweep stopped by SIGTERM exits as interrupted: say which
        sys.exit(143 if done.code == 130 and _signals else done.code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except (click.UsageError, click.BadParameter) as error:
        _echo(f"dcn-ray: error: {error.format_message()}")
        sys.exit(2)
    except InputError as error:
        _echo(f"dcn-ray: error: {error}")
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort) as stop:  # click turns KeyboardInterrupt into Abort
        if isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated):
            _echo("dcn-ray: terminated (SIGTERM)")
            sys.exit(143)
        _echo("dcn-ray: interrupted")
        sys.exit(130)
    except Exception as error:
        if verbose:
            raise
        first = first_line(error) if str(error).strip() else ""
        _echo(f"dcn-ray: failed: {type(error).__name__}: {first} (run with -v for details)")
        sys.exit(1)
