"""Read (and write) the legacy torch pickles that hold split files, without executing their code.

`pickle.load` calls whatever global a file names, so a split file downloaded from the internet could
run arbitrary code. `load_pickle` resolves globals only from an explicit allow-list (builtins
containers, numpy arrays) and refuses everything else before it is imported or called.

File formats understood:

- legacy torch (`torch.save(..., _use_new_zipfile_serialization=False)`, the ReSC/TransVG split files):
  magic number, protocol version and sys_info pickles, then the payload, then the list of tensor
  storage keys (must be empty: split files hold no tensors);
- zip torch (`torch.save` default since 1.6) whose `data.pkl` references no tensor storage;
- a plain single pickle (refer's `refs(*).p`).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import contextlib
import gc
import importlib
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import numpy as np

from pipeline.data.errors import SplitFormatError, SplitNotFoundError, UnsafePickleError

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001
_PICKLE_PROTOCOL = 2  # what torch's legacy writer used; readable by Python 2 era tools too
_LATIN1_NAMES = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


def _numpy_submodule(name: str) -> Any:
    """`numpy._core.<name>` (numpy 2) or `numpy.core.<name>` (numpy 1), without deprecation noise."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _allowed_globals() -> MappingProxyType[tuple[str, str], Any]:
    multiarray = _numpy_submodule("multiarray")
    numeric = _numpy_submodule("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # Pickles name numpy's helpers by the module path of the numpy that wrote them.
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return MappingProxyType(allowed)


_ALLOWED_GLOBALS = _allowed_globals()


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global written by Python 2 (or by protocol < 3, which uses those names).

    The stock `find_class` applies the same `_compat_pickle` tables; an override must do it itself.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals and refuses persistent ids (tensors).

    `_codecs.encode` is allowed because protocol-2 pickles store bytes (e.g. numpy buffers) as
    `_codecs.encode(text, "latin1")`; it is replaced by a function that accepts only latin-1.
    """

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        if (module, name) == ("_codecs", "encode"):
            return self._encode_latin1
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to load global '{module}.{name}': only builtin containers and "
                "numpy arrays are allowed in data files (the file may be malicious or not a split file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: the pickle references a tensor storage ({pid!r}); split files hold only "
            "builtins and numpy arrays"
        )

    def _encode_latin1(self, text: str, encoding: str = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding.lower() not in _LATIN1_NAMES:
            raise UnsafePickleError(f"{self.source}: refused _codecs.encode with encoding {encoding!r}")
        return codecs.encode(text, "latin1")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: it rescans the growing record list many times during a load,
    which makes loading a split file about 8x slower. Pickles of builtins create no cycles to collect."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_one(file: IO[bytes], source: str) -> Any:
    """One pickle from `file`; format problems become `SplitFormatError`, refusals stay as they are."""
    try:
        with _gc_paused():
            return RestrictedUnpickler(file, source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise SplitFormatError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    except MemoryError as exc:  # belt and braces: `load_pickle` reads from memory, which prevents it
        raise SplitFormatError(f"{source}: not a readable pickle (declares more data than fits)") from exc


def _load_torch_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkls = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(data_pkls) != 1:
            raise SplitFormatError(f"{path}: a zip file but not a torch checkpoint (no single data.pkl)")
        prefix = data_pkls[0][: -len("data.pkl")]
        if any(name.startswith(f"{prefix}data/") for name in names):
            raise UnsafePickleError(
                f"{path}: holds tensor storages; split files hold only builtins and numpy"
            )
        with archive.open(data_pkls[0]) as member:
            return _load_one(io.BytesIO(member.read()), str(path))


def _load_legacy_after_magic(file: io.BytesIO, source: str) -> Any:
    protocol = _load_one(file, source)
    if protocol != TORCH_LEGACY_PROTOCOL:
        raise SplitFormatError(f"{source}: unsupported legacy torch protocol version {protocol!r}")
    _load_one(file, source)  # sys_info: endianness and C type sizes, irrelevant without storages
    payload = _load_one(file, source)
    at_end = file.tell() >= file.getbuffer().nbytes
    storage_keys = [] if at_end else _load_one(file, source)
    if storage_keys:
        raise UnsafePickleError(f"{source}: holds tensor storages; split files hold only builtins and numpy")
    return payload


def load_pickle(path: Path | str) -> Any:
    """Load a legacy torch file, a tensor-free zip torch file or a plain pickle, allow-listed.

    Raises `UnsafePickleError` (naming the file and the refused global) when the pickle asks for
    anything outside the allow-list; nothing from the file is imported or executed first.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return _load_torch_zip(path)
    # From memory, not from the open file: a pickle may declare a 2^62-byte string, and the unpickler
    # asks a file for that many bytes at once (MemoryError); a BytesIO returns what there is (truncated).
    with io.BytesIO(path.read_bytes()) as file:
        first = _load_one(file, str(path))
        is_legacy_torch = type(first) is int and first == TORCH_LEGACY_MAGIC
        return _load_legacy_after_magic(file, str(path)) if is_legacy_torch else first


_PLAIN_TYPES = (str, int, float, bool, type(None))


def _check_builtins_only(value: Any, where: str) -> None:
    """Raise TypeError unless `value` is built from builtins scalars, lists, tuples and dicts."""
    if isinstance(value, _PLAIN_TYPES):
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_builtins_only(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_builtins_only(key, where)
            _check_builtins_only(item, where)
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a builtin type; convert it before writing")


def write_split_file(path: Path | str, records: Sequence[tuple[Any, ...]]) -> None:
    """Write `records` in the legacy torch format of the ReSC/TransVG split files (atomically).

    Only builtins are accepted, so the file is readable by `load_pickle`, `torch.load` and the
    original TransVG code alike.
    """
    path = Path(path)
    payload = list(records)
    for index, record in enumerate(payload):
        _check_builtins_only(record, f"record {index}")
    sys_info = {
        "protocol_version": TORCH_LEGACY_PROTOCOL,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        for part in (TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL, sys_info, payload, []):
            pickle.dump(part, tmp, protocol=_PICKLE_PROTOCOL)
    os.replace(tmp.name, path)
