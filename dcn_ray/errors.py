"""Errors that the CLI turns into one clear line and exit code 2."""


class InputError(Exception):
    """Bad user input: a job file, a ``--set`` value, a data or model file, an argument.

    The message is shown to the user as one line, so it must name the problem
    (the file, the key, the value) on its own.
    """
