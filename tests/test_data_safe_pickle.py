"""The allow-listed unpickler refuses code execution; the writer produces torch-compatible files."""

from __future__ import annotations

import codecs
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.data import SplitFormatError, UnsafePickleError, load_pickle, write_split_file
from pipeline.data.safe_pickle import TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL


class _Reducing:
    """Pickles as a call of `function(*args)`, the way a malicious file would."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def _legacy_torch_file(path: Path, payload: Any) -> Path:
    with open(path, "wb") as file:
        for part in (TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL, {"protocol_version": 1001}, payload, []):
            pickle.dump(part, file, protocol=2)
    return path


def _plain_pickle(path: Path, payload: Any) -> Path:
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


@pytest.mark.parametrize("container", [_legacy_torch_file, _plain_pickle])
@pytest.mark.parametrize(
    ("make_payload", "refused"),
    [
        (lambda sentinel: _Reducing(os.system, f"touch {sentinel}"), "system"),
        (lambda sentinel: _Reducing(eval, f"open({str(sentinel)!r}, 'w')"), "builtins.eval"),
        (lambda sentinel: _Reducing(subprocess.Popen, ["touch", str(sentinel)]), "subprocess.Popen"),
        (
            lambda sentinel: [
                ("a.jpg", "1.pth", [1, 2, 3, 4], "x", _Reducing(os.system, f"touch {sentinel}"))
            ],
            "system",
        ),
    ],
)
def test_malicious_pickles_are_refused_and_execute_nothing(
    tmp_path: Path, container: Any, make_payload: Any, refused: str
) -> None:
    sentinel = tmp_path / "SENTINEL"
    path = container(tmp_path / "evil.pth", make_payload(sentinel))
    with pytest.raises(UnsafePickleError, match=refused) as caught:
        load_pickle(path)
    assert str(path) in str(caught.value)
    assert not sentinel.exists()


def test_a_foreign_class_is_refused(tmp_path: Path) -> None:
    path = _plain_pickle(tmp_path / "foreign.p", [_Reducing(print, "hi")])
    with pytest.raises(UnsafePickleError, match="builtins.print"):
        load_pickle(path)


def test_codecs_encode_is_allowed_for_latin1_only(tmp_path: Path) -> None:
    path = _plain_pickle(tmp_path / "codec.p", _Reducing(codecs.encode, "abc", "rot13"))
    with pytest.raises(UnsafePickleError, match="rot13"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_numpy_arrays_and_builtins_load(tmp_path: Path, protocol: int) -> None:
    payload = [
        ("a.jpg", np.array([1, 2, 3, 4], dtype=np.float32), "x"),
        {"set": {1, 2}, "bytes": b"\x00\xff"},
    ]
    path = tmp_path / "ok.p"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded[0][1], payload[0][1])
    assert loaded[0][1].dtype == np.float32
    assert loaded[1] == payload[1]


def test_written_split_file_reads_back_with_both_loaders(tmp_path: Path) -> None:
    records = [("1.jpg", "1_0.pth", [1, 2, 30, 40], "the red circle", [("r1", ["circle"])])]
    path = tmp_path / "splits" / "x" / "x_val.pth"
    write_split_file(path, records)
    assert load_pickle(path) == records
    assert torch.load(path, weights_only=False) == records  # the format TransVG reads
    assert list(tmp_path.rglob(".*")) == []  # no temporary file left behind


def test_writer_refuses_non_builtins(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="record 1: float32"):
        write_split_file(tmp_path / "x.pth", [("a", 1.0), ("b", np.float32(1.0))])


def test_zip_torch_files_without_tensors_load_and_with_tensors_are_refused(tmp_path: Path) -> None:
    records = [("a.jpg", np.array([1.0, 2.0, 3.0, 4.0]), "x")]
    torch.save(records, tmp_path / "new.pth")
    loaded = load_pickle(tmp_path / "new.pth")
    np.testing.assert_array_equal(loaded[0][1], records[0][1])
    torch.save([torch.zeros(2)], tmp_path / "tensor.pth")
    with pytest.raises(UnsafePickleError, match="tensor"):
        load_pickle(tmp_path / "tensor.pth")


def test_truncated_and_garbage_files_are_format_errors(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pth"
    write_split_file(whole, [("a.jpg", "1.pth", [1, 2, 3, 4], "x", [])] * 50)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:-200])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a pickle")
    for path in (truncated, garbage):
        with pytest.raises(SplitFormatError, match=path.name):
            load_pickle(path)


def test_real_flickr_file_loads_numpy_boxes(shared_data: Path) -> None:
    records = load_pickle(shared_data / "splits/flickr/flickr_val.pth")
    assert isinstance(records[0][1], np.ndarray) and records[0][1].dtype == np.float32
