"""The base of this project's expected errors that are neither a `ValueError` nor an `OSError`.

An expected error is the user's (bad input, options, data, a run that diverged), not a bug: the CLI
turns it into one line on stderr and exit code 2 (`pipeline.cli.errors`). Most of ours already derive
from `ValueError` or `OSError`; the few that must stay `RuntimeError`s for older callers also derive
from this class so the CLI knows them.
"""

from __future__ import annotations


class ExpectedError(Exception):
    """A problem with the user's input or options, reported without a traceback."""
