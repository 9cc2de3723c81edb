"""The CLI's one home for user errors: every command reports them as one line on stderr, exit code 2.

A traceback tells a user that the program is broken; for a bad file or option it should say what is
wrong and stop. Commands do not catch errors themselves: `one_line_errors` wraps each of them. Set
`EPMVG_TRACEBACK=1` to see the traceback anyway (a bug can raise a `ValueError` too).
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

import storage
from pipeline.data.errors import DataError
from pipeline.errors import ExpectedError

P = ParamSpec("P")
R = TypeVar("R")

TRACEBACK_ENV = "EPMVG_TRACEBACK"
USER_ERROR_EXIT = 2
# ValueError / OSError: bad values and files (missing, unreadable, not an image, exists already);
# MemoryError: a file that declares more data than can exist (a pickle's 2^62-byte string);
# EOFError / UnpicklingError: empty or corrupt pickles and checkpoints.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    storage.StoreError,
    ExpectedError,
    ValueError,
    OSError,
    MemoryError,
    EOFError,
    pickle.UnpicklingError,
)


def one_line(error: BaseException) -> str:
    """The error's first line (torch's messages run on for paragraphs), or its type when it has none.

    An error re-raised from a DataLoader worker starts "Caught X in DataLoader worker process 0." and
    ends with the original "module.X: message" line: that last line is the one that names the file.
    """
    text = str(error).strip()
    if isinstance(error, MemoryError):
        return f"out of memory{': ' + text if text else ''} (an input declares more data than fits)"
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Original Traceback" in text:
        return lines[-1].partition(": ")[2] or lines[-1]
    return lines[0] if len(lines) == 1 else f"{lines[0]} …"


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a typer command: its expected errors become `error: <one line>` on stderr and exit 2."""

    @functools.wraps(command)  # typer reads the wrapped signature through __wrapped__
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as error:
            if os.environ.get(TRACEBACK_ENV):
                raise
            typer.secho(f"error: {one_line(error)}", fg="red", err=True)
            raise typer.Exit(USER_ERROR_EXIT) from error

    return wrapper
