"""Errors that the CLI turns into one clear line and exit code 2."""


class InputError(Exception):
    """Bad user input: a job file, a ``--set`` value, a data or model file, an argument.

    The message is shown to the user as one line, so it must name the problem
    (the file, the key, the value) on its own.
    """


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its type name when the message is empty), cut to ``limit``."""
    text = str(getattr(error, "message", "") or error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
