"""Hostile inputs to the data layer (issue 23): each row of CASES is one input that once
crashed, read out of bounds, loaded silently wrong or gave a cryptic error, with the
exception it must raise now and fragments its message must contain (file, line, field,
argument). Add a row for every new finding.

A case is ``case(id, run, exc, *fragments)``: ``run(tmp_path)`` builds the input (files
go under tmp_path) and feeds it to the loader or engine function under test.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from seqrec._C import data as engine
from seqrec.data import DataError, SequenceDataset, load_dataset
from seqrec.data.prepared import open_prepared

from helpers import add_stray_file, edit_manifest, flip_last_bytes, prepared_folder


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Path], object]
    exc: type[BaseException]
    fragments: tuple[str, ...]


def case(id: str, run: Callable[[Path], object], exc: type[BaseException], *fragments: str) -> Case:
    return Case(id, run, exc, fragments)


def write(tmp: Path, name: str, content: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def atomic(tmp: Path, inter: bytes | str, item: bytes | str | None = None, **kwargs):
    write(tmp, "d.inter", inter)
    if item is not None:
        write(tmp, "d.item", item)
    return SequenceDataset.from_atomic(tmp / "d.inter", **kwargs)


def s3rec(tmp: Path, text: bytes | str, attributes: bytes | str | None = None):
    path = write(tmp, "s.txt", text)
    json_path = write(tmp, "s_attr.json", attributes) if attributes is not None else None
    return SequenceDataset.from_s3rec(path, attributes=json_path)


def arrays(*args, **kwargs):
    return lambda tmp: SequenceDataset.from_arrays(*args, **kwargs)


def frame(columns: dict, **kwargs):
    def run(tmp):
        pd = pytest.importorskip("pandas")
        return SequenceDataset.from_dataframe(pd.DataFrame(columns), **kwargs)
    return run


def folder(name: str, loader: Callable[[Path], object]):
    def run(tmp):
        (tmp / name).mkdir()
        return loader(tmp / name)
    return run


def non_utf8_file_name(tmp: Path):
    path = os.fsdecode(os.fsencode(tmp) + b"/\xff.txt")  # str with a surrogate, as os.listdir gives
    Path(path).write_text("1 2\n1 3\n")
    return SequenceDataset.from_s3rec(path, attributes=None)


def parquet(columns: dict, **kwargs):
    def run(tmp):
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), tmp / "p.parquet")
        return SequenceDataset.from_parquet(tmp / "p.parquet", **kwargs)
    return run


def not_parquet(tmp: Path):
    pytest.importorskip("pyarrow")
    return SequenceDataset.from_parquet(write(tmp, "n.parquet", b"PAR1 not really"))


def prepared(damage: Callable[[Path], object]):
    """A prepared folder (tests/helpers.py), damaged by ``damage(folder)``, then opened."""
    def run(tmp):
        folder = prepared_folder(tmp)
        damage(folder)
        return open_prepared(folder)
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8])


def i64(*values):
    return np.asarray(values, dtype=np.int64)


# A consistent CSR of 2 users over 3 items, for the engine cases that break one argument.
INDPTR, ITEMS = i64(0, 3, 5), i64(1, 2, 3, 2, 1)
OBJ = object  # dtype of pandas' mixed columns
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
LONG_INT = "7" * 5000


CASES = [
    # ---- 4: a repeated column would silently load one of the two
    case("atomic-header-repeats-a-field",
         lambda t: atomic(t, "user_id:token\titem_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\t4\n"),
         DataError, "d.inter:1:", "header field 'item_id' appears twice (columns 2 and 3)"),
    case("atomic-item-header-repeats-a-field",
         lambda t: atomic(t, HEADER + "1\t2\t3\n", "item_id:token\tgenre:token\tgenre:token_seq\n2\ta\tb\n"),
         DataError, "d.item:1:", "header field 'genre' appears twice"),
    case("read-atomic-fields-repeat", lambda t: engine.read_atomic(
        os.fsencode(write(t, "d.inter", HEADER + "1\t2\t3\n")), ["user_id", "user_id"]),
         DataError, "read_atomic: fields lists 'user_id' twice"),
    case("item2attributes-repeats-a-key", lambda t: s3rec(t, "1 1 2\n", '{"1": ["a"], "1": ["b"]}'),
         DataError, "s_attr.json", "key '1' appears twice"),

    # ---- 7: the engine functions check what they are given, whoever calls them
    case("kcore-indptr-past-items", lambda t: engine.kcore(i64(0, 1000), i64(1, 2), 2, 1, 1),
         DataError, "kcore: indptr[-1] = 1000 must equal the number of items (2)"),
    case("kcore-indptr-decreasing", lambda t: engine.kcore(i64(0, 3, 1, 4), i64(1, 2, 1, 2), 2, 1, 1),
         DataError, "kcore: indptr must not decrease, but indptr[2] = 1 < indptr[1] = 3"),
    case("kcore-indptr-not-from-zero", lambda t: engine.kcore(i64(1, 2), i64(1, 2), 2, 1, 1),
         DataError, "kcore: indptr[0] must be 0, got 1"),
    case("kcore-indptr-empty", lambda t: engine.kcore(i64(), i64(), 2, 1, 1),
         DataError, "kcore: indptr must have at least one entry"),
    case("kcore-item-id-zero", lambda t: engine.kcore(INDPTR, i64(1, 2, 0, 2, 1), 3, 1, 1),
         DataError, "kcore: items[2] = 0 is not an item id in 1..num_items = 3"),
    case("kcore-item-id-past-num-items", lambda t: engine.kcore(INDPTR, ITEMS, 2, 1, 1),
         DataError, "kcore: items[2] = 3 is not an item id in 1..num_items = 2"),
    case("kcore-negative-num-items", lambda t: engine.kcore(i64(0), i64(), -1, 1, 1),
         DataError, "kcore: num_items must be >= 0, got -1"),
    case("kcore-negative-min-user", lambda t: engine.kcore(INDPTR, ITEMS, 3, -1, 1),
         DataError, "kcore: min_user must be >= 0, got -1"),
    case("kcore-huge-num-items", lambda t: engine.kcore(INDPTR, ITEMS, 2**62, 1, 1),
         DataError, "kcore: the result would have num_items=4611686018427387904"),
    case("kcore-indptr-2d", lambda t: engine.kcore(INDPTR[None, :], ITEMS, 3, 1, 1),
         DataError, "kcore: indptr must be 1-D, got 2 dimensions"),
    case("kcore-float-items", lambda t: engine.kcore(INDPTR, ITEMS.astype(float) + 0.5, 3, 1, 1),
         DataError, "kcore: items must hold integers, got dtype float64"),
    case("kcore-string-indptr", lambda t: engine.kcore(np.array(["0", "1"]), i64(1), 1, 1, 1),
         DataError, "kcore: indptr must hold integers, got dtype <U1"),
    case("group-by-user-negative-num-users", lambda t: engine.group_by_user(i64(1), i64(1), None, -5),
         DataError, "group_by_user: num_users must be >= 0, got -5"),
    case("group-by-user-num-users-past-the-data",
         lambda t: engine.group_by_user(i64(1), i64(1), None, 10**15),
         DataError, "group_by_user: num_users = 1000000000000000 is more than the 1 interactions"),
    case("group-by-user-code-zero", lambda t: engine.group_by_user(i64(1, 0), i64(1, 1), None, 2),
         DataError, "group_by_user: users[1] = 0 is not a user code in 1..num_users = 2"),
    case("group-by-user-lengths-differ", lambda t: engine.group_by_user(i64(1, 1), i64(1), None, 1),
         DataError, "group_by_user: users and items must have the same length, got 2 and 1"),
    case("group-by-user-timestamps-length",
         lambda t: engine.group_by_user(i64(1, 1), i64(1, 2), np.zeros(3), 1),
         DataError, "group_by_user: users and timestamps must have the same length, got 2 and 3"),
    case("group-by-user-nan-timestamp",
         lambda t: engine.group_by_user(i64(1, 1), i64(1, 2), np.array([0.0, np.nan]), 1),
         DataError, "group_by_user: timestamps[1] = nan is not a finite number"),
    case("group-by-user-string-timestamps",
         lambda t: engine.group_by_user(i64(1, 1), i64(1, 2), np.array(["a", "b"]), 1),
         DataError, "group_by_user: timestamps must hold numbers, got dtype <U1"),
    case("train-batch-row-decreasing",
         lambda t: engine.train_batch(i64(0, 2, 1, 3), i64(1, 2, 1), 2, i64(1), i64(1), 5, 1, 0, 0),
         DataError, "train_batch: indptr[1:3] = [2, 1] (user 1, from users[0]) is not a range"),
    case("train-batch-indptr-past-items",
         lambda t: engine.train_batch(i64(0, 3, 99), ITEMS, 3, i64(1), i64(1), 5, 1, 0, 0),
         DataError, "train_batch: indptr[-1] = 99 must equal the number of items (5)"),
    case("train-batch-item-out-of-range",
         lambda t: engine.train_batch(INDPTR, i64(1, 2, 9, 2, 1), 3, i64(0), i64(3), 5, 1, 0, 0),
         DataError, "train_batch: items[2] = 9 (user 0) is not an item id in 1..num_items = 3"),
    case("train-batch-user-out-of-range",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(2), i64(1), 5, 1, 0, 0),
         DataError, "train_batch: users[0] = 2 is not a user index in 0..1"),
    case("train-batch-negative-user",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(0, -1), i64(1, 1), 5, 1, 0, 0),
         DataError, "train_batch: users[1] = -1 is not a user index in 0..1"),
    case("train-batch-prefix-too-long",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(1), i64(3), 5, 1, 0, 0),
         DataError, "train_batch: prefix_len[0] = 3 does not fit user 1's 2 items"),
    case("train-batch-lengths-differ",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(0, 1), i64(1), 5, 1, 0, 0),
         DataError, "train_batch: users and prefix_len must have the same length, got 2 and 1"),
    case("train-batch-max-len-zero",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(0), i64(2), 0, 1, 0, 0),
         DataError, "train_batch: max_len must be >= 1, got 0"),
    case("train-batch-negative-negatives",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(0), i64(2), 5, -1, 0, 0),
         DataError, "train_batch: num_negatives must be >= 0, got -1"),
    case("train-batch-overflowing-shape",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(0, 1), i64(2, 2), 2**62, 4, 0, 0),
         DataError, "train_batch: the result would have users=2 x max_len=4611686018427387904",
         "more than int64 can count"),
    case("train-batch-shape-past-memory",
         lambda t: engine.train_batch(INDPTR, ITEMS, 3, i64(0), i64(2), 2**58, 1, 0, 0),
         DataError, "train_batch: the result would have users=1 x max_len=288230376151711744",
         "more than this machine's memory"),
    case("eval-batch-negative-prefix",
         lambda t: engine.eval_batch(INDPTR, ITEMS, 3, i64(0), i64(-1), 5),
         DataError, "eval_batch: prefix_len[0] = -1 does not fit user 0's 3 items"),
    case("eval-batch-no-target-left",
         lambda t: engine.eval_batch(INDPTR, ITEMS, 3, i64(0), i64(3), 5),
         DataError, "eval_batch: prefix_len[0] = 3 does not fit user 0's 3 items"),
    case("eval-batch-user-matrix",
         lambda t: engine.eval_batch(INDPTR, ITEMS, 3, i64(0, 1)[None, :], i64(1, 1), 5),
         DataError, "eval_batch: users must be 1-D, got 2 dimensions"),
    case("sample-unseen-zero-negatives",
         lambda t: engine.sample_unseen(INDPTR, ITEMS, 3, i64(0), 0, 0, 0),
         DataError, "sample_unseen: num_negatives must be >= 1, got 0"),
    case("sample-unseen-negative-num-items",
         lambda t: engine.sample_unseen(INDPTR, ITEMS, -3, i64(0), 1, 0, 0),
         DataError, "sample_unseen: num_items must be >= 0, got -3"),
    case("sample-unseen-indptr-short",
         lambda t: engine.sample_unseen(i64(0, 3), ITEMS, 3, i64(0), 1, 0, 0),
         DataError, "sample_unseen: indptr[-1] = 3 must equal the number of items (5)"),
    case("sample-unseen-user-out-of-range",
         lambda t: engine.sample_unseen(INDPTR, ITEMS, 9, i64(5), 1, 0, 0),
         DataError, "sample_unseen: users[0] = 5 is not a user index in 0..1"),

    # ---- 10: bytes that are not UTF-8 text, and NUL, reach the message intact and escaped
    case("s3rec-non-utf8-item", lambda t: s3rec(t, b"1 2 \xff3\n"),
         DataError, "s.txt:1: field 'item' #2: '\\xff3' is not an integer id"),
    case("s3rec-nul-in-item", lambda t: s3rec(t, b"1 2 3\x00x\n"),
         DataError, "s.txt:1: field 'item' #2: '3\\x00x' is not an integer id"),
    case("s3rec-non-utf8-user", lambda t: s3rec(t, b"1 2\n\xe9\xe9 3\n"),
         DataError, "s.txt:2: field 'user': '\\xe9\\xe9' is not an integer id"),
    case("atomic-non-utf8-token", lambda t: atomic(t, HEADER.encode() + b"1\tcaf\xe9\t3\n"),
         DataError, "d.inter:2: field 'item_id': 'caf\\xe9' is not valid UTF-8 text"),
    case("atomic-non-utf8-float", lambda t: atomic(t, HEADER.encode() + b"1\t2\t3\xff\n"),
         DataError, "d.inter:2: field 'timestamp': '3\\xff' is not a finite number"),
    case("atomic-nul-in-float", lambda t: atomic(t, HEADER.encode() + b"1\t2\t3\x004\n"),
         DataError, "d.inter:2: field 'timestamp': '3\\x004' is not a finite number"),
    case("atomic-non-utf8-header-name", lambda t: atomic(t, b"user_id:token\titem\xff:token\n1\t2\n"),
         DataError, "d.inter:1: header field 'item\\xff' is not valid UTF-8 text"),
    case("atomic-non-utf8-header-type", lambda t: atomic(t, b"user_id:token\titem_id:tok\xffen\n1\t2\n"),
         DataError, "d.inter:1: header field 'item_id:tok\\xffen' has unknown type 'tok\\xffen'"),
    case("atomic-non-utf8-item-attribute",
         lambda t: atomic(t, HEADER + "1\t2\t3\n", b"item_id:token\tgenre:token_seq\n2\tok b\xc3(\n"),
         DataError, "d.item:2: field 'genre': 'b\\xc3(' is not valid UTF-8 text"),
    case("s3rec-non-utf8-file-name", non_utf8_file_name,
         DataError, "\\xff.txt:2: user 1 appears again"),
    case("item2attributes-non-utf8", lambda t: s3rec(t, "1 1 2\n", b'{"1": ["caf\xe9"]}'),
         DataError, "s_attr.json: byte 11 is not valid UTF-8"),

    # ---- 13: ids, timestamps and files of the wrong kind are DataErrors naming the column/file
    case("arrays-mixed-id-types", arrays(np.array([1, "a"], dtype=OBJ), [1, 2]),
         DataError, "users mixes integer and string ids (users[0] = 1, users[1] = 'a')"),
    case("arrays-nan-string-id", arrays([1, 2], np.array(["a", np.nan], dtype=OBJ)),
         DataError, "items[1] = nan is a missing id"),
    case("arrays-none-id", arrays([1, 2], np.array(["a", None], dtype=OBJ)),
         DataError, "items[1] = None is a missing id"),
    case("arrays-bool-ids", arrays([True, False], [1, 2]),
         DataError, "users must hold integer or string ids, got dtype bool"),
    case("arrays-float-object-id", arrays(np.array(["a", 1.5], dtype=OBJ), [1, 2]),
         DataError, "users[1] = 1.5 is a float, not an integer or string id"),
    case("arrays-int-past-int64", arrays(np.array([1, 2**70], dtype=OBJ), [1, 2]),
         DataError, "users[1] = 1180591620717411303424 does not fit in int64"),
    case("arrays-2d-ids", arrays([[1, 2]], [[1, 2]]),
         DataError, "users must be 1-D, got shape (1, 2)"),
    case("arrays-string-timestamps", arrays([1, 1], [1, 2], ["2020-01-01", "2020-01-02"]),
         DataError, "timestamps[0] = '2020-01-01' is not a number"),
    case("arrays-nat-timestamp", arrays([1, 1], [1, 2], np.array(["2020-01-01", "NaT"], dtype="datetime64[s]")),
         DataError, "timestamps[1] is a missing time (NaT)"),
    case("dataframe-mixed-id-types", frame({"user": [1, "a"], "item": [1, 2], "timestamp": [1, 2]}),
         DataError, "column 'user' mixes integer and string ids"),
    case("dataframe-nan-in-string-column", frame({"user": [1, 2], "item": ["a", None], "timestamp": [1, 2]}),
         DataError, "column 'item', row 1 = ", "is a missing id"),
    case("dataframe-string-timestamps", frame({"user": [1, 2], "item": ["a", "b"], "timestamp": ["1", "x"]}),
         DataError, "column 'timestamp', row 1 = 'x' is not a number"),
    case("item2attributes-5000-digit-int", lambda t: s3rec(t, "1 1 2\n", '{"1": [%s]}' % LONG_INT),
         DataError, "s_attr.json: the integer 77777777777777777777... has 5000 digits"),
    case("item2attributes-nested-too-deep", lambda t: s3rec(t, "1 1 2\n", "[" * 100_000 + "]" * 100_000),
         DataError, "s_attr.json: the JSON is nested too deeply"),
    case("item2attributes-directory", lambda t: (t / "a.json").mkdir() or SequenceDataset.from_s3rec(
        write(t, "s.txt", "1 1 2\n"), attributes=t / "a.json"),
         DataError, "a.json: is a directory, not a JSON file"),
    case("s3rec-directory-named-txt", folder("x.txt", lambda p: SequenceDataset.from_s3rec(p)),
         DataError, "x.txt: is a directory, not a data file"),
    case("load-directory-named-txt", folder("x.txt", lambda p: load_dataset(str(p))),
         DataError, "x.txt: is a folder without x.txt.txt in it"),
    case("atomic-directory-named-inter", folder("x.inter", lambda p: SequenceDataset.from_atomic(p)),
         DataError, "x.inter: is a folder without x.inter.inter in it"),
    case("read-atomic-directory", folder("y.inter", lambda p: engine.read_atomic(os.fsencode(p), [])),
         DataError, "y.inter: is a directory, not a data file"),
    case("parquet-garbage", not_parquet, DataError, "n.parquet: cannot be read as Parquet"),
    case("parquet-missing-column", parquet({"user": [1], "item_id": [2], "timestamp": [3]}),
         DataError, "p.parquet: missing column(s) ['user_id']"),
    case("parquet-null-id", parquet({"user_id": ["a", None], "item_id": [1, 2], "timestamp": [3, 4]}),
         DataError, "p.parquet: column 'user_id', row 1 is missing (null)"),
    case("parquet-float-ids", parquet({"user_id": [1, 2], "item_id": [1.5, 2.0], "timestamp": [3, 4]}),
         DataError, "p.parquet: column 'item_id' must hold integer or string ids, has type double"),
    case("parquet-string-timestamps", parquet({"user_id": [1, 2], "item_id": [1, 2], "timestamp": ["a", "b"]}),
         DataError, "p.parquet: column 'timestamp' must hold numbers or timestamps, has type string"),
    case("parquet-nan-timestamp", parquet({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, float("nan")]}),
         DataError, "p.parquet: column 'timestamp', row 1 is not a finite number"),
    case("read-device", lambda t: engine.read_s3rec_text("/dev/zero"),
         DataError, "/dev/zero: is not a regular file"),

    # ---- prepared folders (`seqrec data prepare` / open_prepared) changed after they were written
    case("prepared-npy-tampered", prepared(lambda f: flip_last_bytes(f / "items.npy")),
         DataError, "items.npy: content does not match manifest.json"),
    case("prepared-npy-truncated", prepared(lambda f: truncate(f / "items.npy")),
         DataError, "items.npy: ", " bytes, the manifest says "),
    case("prepared-file-missing", prepared(lambda f: (f / "user_tokens.text.npy").unlink()),
         DataError, "user_tokens.text.npy: listed in manifest.json but missing"),
    case("prepared-extra-file", prepared(add_stray_file),
         DataError, "c: holds files its manifest does not list: ['stray.npy']"),
    case("prepared-manifest-edited", prepared(edit_manifest),
         DataError, "manifest.json: checksum mismatch"),
]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_input(c: Case, tmp_path):
    with pytest.raises(c.exc) as info:
        c.run(tmp_path)
    message = str(info.value)
    for fragment in c.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- what still loads
def test_utf8_tokens_and_a_byte_order_mark_load(tmp_path):
    ds = atomic(tmp_path, ("\ufeff" + HEADER + "u1\tcafé\t2\nu1\tthé\t1\n").encode())
    assert ds.item_raw(ds.sequence(0)) == ["thé", "café"]


def test_datetime64_timestamps_order_interactions():
    times = np.array(["2021-03-01T10:00:00", "2021-03-01T09:00:00", "2020-01-01T00:00:00"], dtype="datetime64[s]")
    ds = SequenceDataset.from_arrays([7, 7, 7], ["a", "b", "c"], times)
    assert ds.item_raw(ds.sequence(0)) == ["c", "b", "a"]


def test_object_id_columns_of_one_kind_load():
    ds = SequenceDataset.from_arrays(np.array([2, 1, 2], dtype=object), np.array(["x", "y", "z"], dtype=object))
    assert ds.user_tokens == ["1", "2"]
    assert ds.item_raw(ds.sequence(1)) == ["x", "z"]


def test_engine_accepts_other_integer_dtypes():
    indptr, items, kept_users, kept_items = engine.kcore(INDPTR.astype(np.int32), [1, 2, 3, 2, 1], 3, 1, 1)
    assert indptr.tolist() == [0, 3, 5] and items.tolist() == ITEMS.tolist()


def test_large_integer_attribute_ids_below_the_limit_load(tmp_path):
    ds = s3rec(tmp_path, "1 1 2\n", json.dumps({"1": [10**30], "2": ["x"]}))
    field = ds.attributes["attributes"]
    assert field.tokens[1:] == [str(10**30), "x"]
