"""The errors the data layer raises for bad input: one home, so callers can catch `DataError`.

Every message names the file (and record or line) at fault and, where there is one, the way out.
"""

from __future__ import annotations

import pickle

from pipeline.errors import ExpectedError


class DataError(Exception):
    """Base class: an expected problem with the user's data or arguments, not a bug."""


class UnknownDatasetError(DataError, ValueError):
    """A dataset name that is neither registered nor a `.jsonl` file."""


class SplitNotFoundError(DataError, FileNotFoundError):
    """No source on disk provides the requested split."""


class SplitFormatError(DataError, ValueError):
    """A split source that parses but does not have the expected record layout."""


class ImagePathOutsideRootError(SplitFormatError):
    """Records whose image path leaves the image directory (`..`, or a symlink that points out of it)."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle that asks for a global outside the allow-list (or for tensor storages)."""


class DataProblemsError(DataError, ValueError):
    """Samples with problems that training cannot use (unreadable image, empty expression, ...)."""


class MissingImagesError(DataProblemsError, FileNotFoundError):
    """Samples whose image file does not exist."""


class MissingSupervisionError(DataProblemsError, ExpectedError):
    """Records that lack what a training mode needs (a box, for fully supervised training)."""
