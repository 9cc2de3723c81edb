"""Tests of the Zarr feature store: round trips, resume after SIGKILL, locking, fingerprints,
verification, HDF5 export/import and concurrent shard writers."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

from storage import (
    FeatureStore,
    FingerprintMismatchError,
    IncompleteStoreError,
    LayoutMismatchError,
    NotAStoreError,
    OutputExistsError,
    ShardsPendingError,
    ShardValueError,
    SpecError,
    StoreCompleteError,
    StoreLockedError,
    StoreWriter,
    TableSpec,
    UnknownNameError,
    WriterClosedError,
    export_hdf5,
    fingerprint_id,
    import_hdf5,
    store_info,
    verify_store,
    write_shard,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = {"model": {"name": "m", "dim": 8}, "data": "split-a", "seed": 0}
TIMESTAMP_KEYS = ("created", "completed")

# Helper run in child processes. Modes:
#   hold <shards-json> [partial]: open a writer (taking the lock), write the given shards, optionally
#       leave the next shard's data written without a marker plus a stray temp file (the state a
#       SIGKILL mid-shard leaves), print "ready" and wait to be killed.
#   all: open a writer and write every shard, printing each, then wait to be killed.
#   shards <shards-json>: write the given shards with the module-level write_shard (no lock).
WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import zarr
from storage import StoreWriter, TableSpec, write_shard

mode, store, case_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
layout = json.loads((case_dir / "layout.json").read_text())
arrays = np.load(case_dir / "data.npz")
tables = {name: TableSpec.from_json(spec) for name, spec in layout["tables"].items()}

def rows(table, shard):
    start, stop = tables[table].shard_range(shard)
    return arrays["emb__" + table][start:stop]

def open_writer():
    indices = {name: arrays["index__" + name] for name in layout["index_tables"]}
    return StoreWriter.open(store, layout["fingerprint"], tables, layout["keys"], indices,
                            extra=layout["extra"], index_tables=layout["index_tables"])

if mode == "shards":
    for table, shards in json.loads(sys.argv[4]).items():
        for shard in shards:
            write_shard(store, table, shard, rows(table, shard))
    sys.exit(0)
writer = open_writer()
if mode == "hold":
    for table, shards in json.loads(sys.argv[4]).items():
        for shard in shards:
            writer.write_shard(table, shard, rows(table, shard))
    if sys.argv[5:] == ["partial"]:
        table = "images"
        shard = writer.pending_shards(table)[0]
        start, stop = writer.shard_range(table, shard)
        zarr.open_array(store / table / "emb", mode="r+")[start:stop] = 0.5
        (store / table / "emb" / "c" / "stray.0123.partial").write_bytes(b"half a shard")
else:
    for table in tables:
        for shard in writer.pending_shards(table):
            writer.write_shard(table, shard, rows(table, shard))
            print("wrote", table, shard, flush=True)
print("ready", flush=True)
time.sleep(600)
"""


@dataclass
class Case:
    """A small two-table layout, its data, and a directory holding both for child processes."""

    dir: Path
    tables: dict[str, TableSpec]
    keys: dict[str, list[str]]
    emb: dict[str, np.ndarray]
    indices: dict[str, np.ndarray]
    index_tables: dict[str, str]
    extra: dict[str, Any]

    def open_writer(self, path: Path, **kwargs: Any) -> StoreWriter:
        kwargs.setdefault("fingerprint", FINGERPRINT)
        kwargs.setdefault("keys", self.keys)
        return StoreWriter.open(
            path,
            tables=self.tables,
            indices=self.indices,
            extra=self.extra,
            index_tables=self.index_tables,
            **kwargs,
        )

    def rows(self, table: str, shard: int) -> np.ndarray:
        start, stop = self.tables[table].shard_range(shard)
        return self.emb[table][start:stop]

    def write_pending(self, writer: StoreWriter) -> None:
        for table in self.tables:
            for shard in writer.pending_shards(table):
                writer.write_shard(table, shard, self.rows(table, shard))

    def build(self, path: Path) -> Path:
        """A store written in one go."""
        with self.open_writer(path) as writer:
            self.write_pending(writer)
            writer.finalize()
        return path


@pytest.fixture
def case(tmp_path: Path) -> Case:
    rng = np.random.default_rng(7)
    tables = {
        # 37 rows in shards of 8: a short last shard; two inner chunks per shard.
        "images": TableSpec(rows=37, row_shape=(2, 8), dtype="float16", shard_rows=8, chunk_rows=4),
        "texts": TableSpec(rows=11, row_shape=(8,), dtype="float32", shard_rows=4),
    }
    emb = {name: rng.standard_normal((s.rows, *s.row_shape)).astype(np.float32) for name, s in tables.items()}
    keys = {
        "images": [f"images/{i:03d}.jpg" for i in range(37)],
        "texts": [f"expression {i} – ünïcode" for i in range(11)],
    }
    indices = {
        "val/image_row": np.array([0, 36, -1, 5], dtype=np.int64),
        "val/text_row": np.arange(11),
    }
    index_tables = {"val/image_row": "images", "val/text_row": "texts"}
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    arrays = {f"emb__{n}": a for n, a in emb.items()} | {f"index__{n}": a for n, a in indices.items()}
    np.savez(case_dir / "data.npz", **arrays)
    layout = {
        "fingerprint": FINGERPRINT,
        "tables": {n: s.to_json() for n, s in tables.items()},
        "keys": keys,
        "index_tables": index_tables,
        "extra": {"warnings": ["w1"], "rows": 37},
    }
    (case_dir / "layout.json").write_text(json.dumps(layout))
    return Case(case_dir, tables, keys, emb, indices, index_tables, layout["extra"])


def _worker(case: Case, store: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, args[0], str(store), str(case.dir), *args[1:]],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return
    pytest.fail(f"worker exited with {proc.wait()} before getting ready")


def _sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store except the lock and the root metadata (which holds timestamps)."""
    skip = {".lock", "zarr.json"}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) not in skip
    }


def _manifest_without_times(root: Path) -> dict[str, Any]:
    attrs = FeatureStore.open(root).manifest.to_attrs()
    return {key: value for key, value in attrs.items() if key not in TIMESTAMP_KEYS}


def _assert_same_store(actual: Path, expected: Path) -> None:
    assert verify_store(actual).ok, verify_store(actual).problems
    assert _store_files(actual) == _store_files(expected)
    assert _manifest_without_times(actual) == _manifest_without_times(expected)
    a, e = FeatureStore.open(actual), FeatureStore.open(expected)
    for table in e.tables():
        assert a.load_table(table).tobytes() == e.load_table(table).tobytes()


def test_round_trip_fp16_and_fp32(case: Case, tmp_path: Path) -> None:
    store = FeatureStore.open(case.build(tmp_path / "store"), expected_fingerprint=FINGERPRINT)
    images, texts = store.load_table("images"), store.load_table("texts")
    assert images.dtype == np.float16 and texts.dtype == np.float32
    assert np.array_equal(images, case.emb["images"].astype(np.float16))
    assert np.array_equal(texts, case.emb["texts"])
    assert store.load_table("images", dtype="float32").dtype == np.float32
    assert store.table_keys("texts") == case.keys["texts"]
    assert sorted(store.tables()) == ["images", "texts"]
    assert sorted(store.index_names()) == ["val/image_row", "val/text_row"]
    index = store.load_index("val/image_row")
    assert index.dtype == np.int32 and index.tolist() == [0, 36, -1, 5]
    assert store.fingerprint == FINGERPRINT and store.extra == case.extra
    canonical = json.dumps(FINGERPRINT, sort_keys=True, separators=(",", ":"))
    assert (
        store.fingerprint_id == hashlib.sha256(canonical.encode()).hexdigest() == fingerprint_id(FINGERPRINT)
    )
    manifest = store.manifest
    assert manifest.complete and manifest.tables == case.tables
    assert [len(manifest.shard_checksums[t]) for t in ("images", "texts")] == [5, 3]
    with pytest.raises(UnknownNameError, match="unknown table"):
        store.load_table("audio")


def test_resume_after_sigkill_is_bitwise_identical(case: Case, tmp_path: Path) -> None:
    clean = case.build(tmp_path / "clean")
    store = tmp_path / "resumed"
    proc = _worker(case, store, "hold", json.dumps({"images": [0, 2], "texts": [1]}), "partial")
    try:
        _wait_ready(proc)
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid} on host"):
            case.open_writer(store)
    finally:
        _sigkill(proc)
    with pytest.raises(IncompleteStoreError, match="rerun the cache job"):
        FeatureStore.open(store)
    # The kernel dropped the dead writer's flock: no stale lock.
    with case.open_writer(store) as writer:
        # Shard 1 holds data but no marker (killed mid-shard), so it is still pending.
        assert writer.pending_shards("images") == [1, 3, 4]
        assert writer.pending_shards("texts") == [0, 2]
        case.write_pending(writer)
        writer.finalize()
    _assert_same_store(store, clean)


def test_resume_after_sigkill_at_a_random_point(case: Case, tmp_path: Path) -> None:
    clean = case.build(tmp_path / "clean")
    store = tmp_path / "resumed"
    proc = _worker(case, store, "all")
    try:
        assert proc.stdout is not None
        next(line for line in proc.stdout if line.startswith("wrote images 1"))
    finally:
        _sigkill(proc)
    with case.open_writer(store) as writer:
        assert 0 not in writer.pending_shards("images")
        case.write_pending(writer)
        writer.finalize()
    _assert_same_store(store, clean)


def test_second_writer_refused_while_lock_held(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = case.open_writer(path)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        case.open_writer(path)
    first.close()
    with pytest.raises(WriterClosedError):
        first.pending_shards("images")
    with case.open_writer(path) as second:
        assert second.pending_shards("images") == [0, 1, 2, 3, 4]


def test_concurrent_processes_match_single_process(case: Case, tmp_path: Path) -> None:
    clean = case.build(tmp_path / "clean")
    store = tmp_path / "parallel"
    with case.open_writer(store) as writer:
        halves = [
            {t: list(range(parity, spec.num_shards, 2)) for t, spec in case.tables.items()}
            for parity in (0, 1)
        ]
        procs = [_worker(case, store, "shards", json.dumps(half)) for half in halves]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        assert all(writer.pending_shards(t) == [] for t in case.tables)
        writer.finalize()
    _assert_same_store(store, clean)


def test_fingerprint_mismatch_on_read(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    other = {**FINGERPRINT, "model": {"name": "m2", "dim": 8}, "new": 1}
    with pytest.raises(FingerprintMismatchError, match="model.name.*--force") as err:
        FeatureStore.open(path, expected_fingerprint=other)
    assert err.value.differing_keys == ["model.name", "new"]


def test_fingerprint_mismatch_on_write_and_force(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    other = {**FINGERPRINT, "seed": 1}
    with pytest.raises(FingerprintMismatchError, match=r"differing keys: seed\b.*--force") as err:
        case.open_writer(path, fingerprint=other)
    assert err.value.differing_keys == ["seed"]
    assert FeatureStore.open(path).complete  # the refused open left the store alone
    with case.open_writer(path, fingerprint=other, force=True) as writer:
        assert writer.pending_shards("images") == [0, 1, 2, 3, 4]
    with pytest.raises(IncompleteStoreError):
        FeatureStore.open(path)
    assert FeatureStore.open(path, require_complete=False).fingerprint == other


def test_reopening_a_complete_store_has_nothing_to_do(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    before = FeatureStore.open(path).manifest
    with case.open_writer(path) as writer:
        assert writer.complete and all(writer.pending_shards(t) == [] for t in case.tables)
        assert writer.finalize() == before
        with pytest.raises(StoreCompleteError, match="finalized"):
            writer.write_shard("images", 0, case.rows("images", 0))
    with pytest.raises(StoreCompleteError, match="finalized"):
        write_shard(path, "texts", 0, case.rows("texts", 0))


def test_interrupted_creation_or_wipe_is_rebuilt(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    # The state a writer killed while creating (or force-wiping) the store leaves behind.
    group = zarr.open_group(path, mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k not in ("tables", "indices")})
    assert any("creation was interrupted" in p for p in verify_store(path).problems)
    with case.open_writer(path) as writer:
        assert writer.pending_shards("texts") == [0, 1, 2]
        case.write_pending(writer)
        writer.finalize()
    _assert_same_store(path, case.build(tmp_path / "clean"))


def test_same_fingerprint_different_layout_refused(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    keys = {**case.keys, "texts": list(reversed(case.keys["texts"]))}
    with pytest.raises(LayoutMismatchError, match="keys of table 'texts' differ"):
        case.open_writer(path, keys=keys)


def test_verify_detects_corrupted_shard_file(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    shard_file = path / "images" / "emb" / "c" / "1" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    report = verify_store(path)
    assert not report.ok
    assert len(report.problems) == 1 and "'images' shard 1" in report.problems[0]


def test_verify_detects_changed_values(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    # Rewritten through zarr, so the shard decodes fine: only the checksum can tell.
    zarr.open_array(path / "texts" / "emb", mode="r+")[4:8] = 1.0
    report = verify_store(path)
    assert report.problems == [
        "table 'texts' shard 1 (rows 4:8): checksum mismatch (data changed or corrupted since it was written)"
    ]


def test_verify_detects_bad_index_and_keys(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path / "store")
    zarr.open_array(path / "index" / "val" / "text_row", mode="r+")[3] = 11
    keys_file = path / "images" / "keys" / "c" / "0"
    keys_file.write_bytes(keys_file.read_bytes()[:-4])
    problems = verify_store(path).problems
    assert len(problems) == 2
    assert problems[0].startswith("table 'images': keys unreadable")
    assert problems[1] == "index 'val/text_row': values in [0, 11] outside [-1, 11) of table 'texts'"


def test_incomplete_store(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "store"
    with case.open_writer(path) as writer:
        writer.write_shard("images", 0, case.rows("images", 0))
        writer.set_extra({"warnings": ["late"], "rows": np.int64(37)})
        with pytest.raises(ShardsPendingError, match="images: 4 of 5"):
            writer.finalize()
    report = verify_store(path)
    assert not report.ok and report.shards_checked == 1
    assert any("incomplete" in p for p in report.problems)
    assert any("'images': 4 of 5 shards pending" in p for p in report.problems)
    with pytest.raises(IncompleteStoreError, match="resume"):
        FeatureStore.open(path)
    partial = FeatureStore.open(path, require_complete=False).load_table("images")
    assert np.isnan(partial[8:]).all() and not np.isnan(partial[:8]).any()
    info = store_info(path)
    assert info["tables"]["images"]["shards_done"] == 1 and info["tables"]["images"]["shards_total"] == 5
    assert info["complete"] is False and info["extra"] == {"warnings": ["late"], "rows": 37}


def test_bad_values_refused(case: Case, tmp_path: Path) -> None:
    with case.open_writer(tmp_path / "store") as writer:
        rows = case.rows("images", 0).copy()
        rows[3, 1, 2] = np.nan
        with pytest.raises(ShardValueError, match="NaN/inf in the input.*first at row 3"):
            writer.write_shard("images", 0, rows)
        with pytest.raises(ShardValueError, match="overflow when casting to float16"):
            writer.write_shard("images", 0, np.full((8, 2, 8), 1e6, dtype=np.float32))
        with pytest.raises(ShardValueError, match=r"shape \(5, 2, 8\)"):
            writer.write_shard("images", 4, case.rows("images", 0))
        with pytest.raises(ShardValueError, match="floating-point"):
            writer.write_shard("texts", 0, np.ones((4, 8), dtype=np.int64))
        with pytest.raises(UnknownNameError, match="shard 5 out of range"):
            writer.write_shard("images", 5, case.rows("images", 0))
        with pytest.raises(UnknownNameError, match="unknown table 'audio'"):
            writer.write_shard("audio", 0, case.rows("images", 0))
        assert writer.pending_shards("images") == [0, 1, 2, 3, 4]


def test_invalid_specs_refused(case: Case, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="divisor of shard_rows=10"):
        TableSpec(rows=5, row_shape=(4,), shard_rows=10, chunk_rows=3)
    with pytest.raises(SpecError, match="dtype"):
        TableSpec(rows=5, row_shape=(4,), dtype="int8")
    assert TableSpec(rows=5, row_shape=[4], shard_rows=1000).chunk_rows == 250
    with pytest.raises(SpecError, match="37 rows but 2 keys"):
        case.open_writer(tmp_path / "a", keys={**case.keys, "images": ["a", "b"]})
    bad_index = {"val/image_row": np.array([37]), "val/text_row": np.arange(3)}
    with pytest.raises(SpecError, match="past the end of table 'images'"):
        StoreWriter.open(
            tmp_path / "b", FINGERPRINT, case.tables, case.keys, bad_index, index_tables=case.index_tables
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_not_a_store(case: Case, tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError):
        FeatureStore.open(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(NotAStoreError, match="not a feature store"):
        verify_store(foreign)
    with pytest.raises(NotAStoreError, match="even with --force"):
        case.open_writer(foreign, force=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_hdf5_round_trip(case: Case, tmp_path: Path) -> None:
    original = case.build(tmp_path / "store")
    h5_path = export_hdf5(original, tmp_path / "store.h5")
    with h5py.File(h5_path, "r") as h5:
        assert h5["texts/keys"].asstr()[()].tolist() == case.keys["texts"]
        assert h5["images/emb"].dtype == np.float16 and h5["index/val/image_row"].dtype == np.int32
        assert json.loads(h5.attrs["manifest"])["fingerprint"] == FINGERPRINT
    with pytest.raises(OutputExistsError):
        export_hdf5(original, h5_path)
    restored = tmp_path / "restored"
    manifest = import_hdf5(h5_path, restored)
    assert manifest == FeatureStore.open(original).manifest  # timestamps included
    _assert_same_store(restored, original)
    a, b = FeatureStore.open(restored), FeatureStore.open(original)
    assert all(a.table_keys(t) == b.table_keys(t) for t in b.tables())
    assert all(np.array_equal(a.load_index(n), b.load_index(n)) for n in b.index_names())


def test_store_info_is_json(case: Case, tmp_path: Path) -> None:
    info = json.loads(json.dumps(store_info(case.build(tmp_path / "store"))))
    assert info["complete"] is True and info["fingerprint_id"] == fingerprint_id(FINGERPRINT)
    assert info["tables"]["images"] == {
        "rows": 37,
        "row_shape": [2, 8],
        "dtype": "float16",
        "shard_rows": 8,
        "shards_done": 5,
        "shards_total": 5,
    }
    assert info["indices"]["val/image_row"] == {"length": 4, "table": "images"}
    assert info["size_bytes"] > 0 and info["extra"] == case.extra


def test_storage_imports_no_project_package() -> None:
    imported = set()
    for source in (REPO_ROOT / "storage").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "fcntl",
        "hashlib",
        "h5py",
        "json",
        "numpy",
        "os",
        "pathlib",
        "shutil",
        "socket",
        "types",
        "typing",
        "uuid",
        "zarr",
    }
