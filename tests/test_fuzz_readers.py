"""Fuzzing the file readers (issue 23): random bytes and random near-valid files given to
the S3-Rec text reader, the atomic .inter/.item readers and the attribute JSON reader
must give a dataset or a DataError, never a crash or any other exception.

A few seconds by default (derandomized, so CI is reproducible); set
SEQREC_FUZZ_EXAMPLES=20000 for a longer, randomized run.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqrec.data import DataError, SequenceDataset  # noqa: E402

_EXAMPLES = os.environ.get("SEQREC_FUZZ_EXAMPLES")
fuzz = settings(
    max_examples=int(_EXAMPLES) if _EXAMPLES else 60,
    derandomize=_EXAMPLES is None,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def load_or_data_error(load) -> SequenceDataset | None:
    """The reader's result, None for a DataError; any other exception fails the test."""
    try:
        ds = load()
    except DataError as exc:
        str(exc).encode("utf-8")  # the message is text, whatever the file held
        event("DataError")
        return None
    event("loaded")
    assert isinstance(ds, SequenceDataset)
    # Every dense id is in range and every user has a sequence of them.
    assert ds.indptr[0] == 0 and ds.indptr[-1] == len(ds.items)
    assert np.all(np.diff(ds.indptr) >= 0)
    if len(ds.items):
        assert 1 <= ds.items.min() and ds.items.max() <= ds.num_items
    return ds


# Near-valid files: a valid file, then a few mutations, each of which breaks parsers in
# its own way (a junk token, a cut, a byte flipped, a line repeated or dropped).
_junk = st.one_of(
    st.sampled_from([b"0", b"-0", b"007", b"+3", b"1e3", b"3.5", b"nan", b"inf", b"-inf", b"1e400", b"",
                     b"9" * 25, b"x", "caf\u00e9".encode(), b"a b", b"\x00", b"\\", b"'", b'"',
                     b"\xef\xbb\xbf1", b"\xff", b"\xc3(", b"\t", b"\n", b"\r", b"\x0b", b":", b"token"]),
    st.binary(max_size=6),
)


@st.composite
def mutated(draw, valid: bytes, max_mutations: int = 3) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, max_mutations))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "cut", "repeat-line", "drop-line"]))
        if op == "insert":
            data[pos:pos] = draw(_junk)
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op in ("repeat-line", "drop-line"):
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i + 1] = [lines[i]] * (2 if op == "repeat-line" else 0)
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@st.composite
def sequences(draw) -> list[tuple[int, list[int]]]:
    users = draw(st.lists(st.integers(0, 30), min_size=1, max_size=6, unique=True))
    return [(u, draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))) for u in users]


def s3rec_bytes(seqs) -> bytes:
    return b"".join(f"{u} {' '.join(map(str, items))}\n".encode() for u, items in seqs)


@st.composite
def s3rec_text(draw) -> bytes:
    return draw(mutated(s3rec_bytes(draw(sequences()))))


@st.composite
def atomic_inter(draw) -> bytes:
    columns = ["user_id:token", "item_id:token", "timestamp:float"]
    columns += draw(st.lists(st.sampled_from(["rating:float", "tags:token_seq", "w:float_seq", "x:token"]),
                             max_size=2, unique=True))
    columns = draw(st.permutations(columns))
    rows = []
    for u, items in draw(sequences()):
        for i in items:
            cells = {"user_id": f"u{u}", "item_id": str(i), "timestamp": str(draw(st.integers(0, 99))),
                     "rating": "4.5", "tags": "a b", "w": "0.1 2", "x": "z"}
            rows.append("\t".join(cells[c.split(":")[0]] for c in columns))
    return draw(mutated(("\t".join(columns) + "\n" + "\n".join(rows) + "\n").encode()))


@st.composite
def atomic_item(draw) -> bytes:
    columns = draw(st.permutations(["item_id:token", "genre:token_seq", "price:float", "year:token", "v:float_seq"]))
    rows = []
    for i in draw(st.lists(st.integers(0, 6), max_size=7)):
        cells = {"item_id": str(i), "genre": "drama comedy", "price": str(i * 1.5), "year": "1999", "v": "1 2 3"}
        rows.append("\t".join(cells[c.split(":")[0]] for c in columns))
    return draw(mutated(("\t".join(columns) + "\n" + "\n".join(rows) + "\n").encode()))


_VALID_INTER = b"user_id:token\titem_id:token\ttimestamp:float\n" + b"".join(
    f"u{u}\t{i}\t{t}\n".encode() for t, (u, i) in enumerate([(1, 1), (1, 2), (2, 2), (2, 3), (3, 1), (3, 4)])
)

_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True),
              st.text(max_size=5)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=3), children, max_size=3)),
    max_leaves=12,
)


@st.composite
def attribute_json(draw, items: list[int]) -> bytes:
    keys = st.one_of(st.sampled_from(items).map(str), st.integers(0, 14).map(str), st.text(max_size=3))
    obj = draw(st.one_of(
        st.dictionaries(st.sampled_from(items).map(str),
                        st.lists(st.one_of(st.integers(0, 50), st.text(max_size=4)), max_size=4), max_size=8),
        st.dictionaries(keys, st.lists(st.one_of(st.integers(0, 50), st.text(max_size=4)), max_size=4), max_size=8),
        st.dictionaries(keys, _json_value, max_size=5),
        _json_value,
    ))
    return draw(mutated(json.dumps(obj).encode(), max_mutations=2))


# ---------------------------------------------------------------- S3-Rec text
@fuzz
@given(content=st.one_of(st.binary(max_size=200), s3rec_text()))
def test_s3rec_reader(folder, content):
    path = folder / "f.txt"
    path.write_bytes(content)
    load_or_data_error(lambda: SequenceDataset.from_s3rec(path, attributes=None))


# ---------------------------------------------------------------- attribute JSON
@fuzz
@given(seqs=sequences(), data=st.data())
def test_item2attributes_reader(folder, seqs, data):
    items = sorted({i for _, seq in seqs for i in seq})
    content = data.draw(st.one_of(st.binary(max_size=120), attribute_json(items)))
    (folder / "g.txt").write_bytes(s3rec_bytes(seqs))
    (folder / "g.json").write_bytes(content)
    ds = load_or_data_error(lambda: SequenceDataset.from_s3rec(folder / "g.txt", attributes=folder / "g.json"))
    if ds is not None:
        field = ds.attributes["attributes"]
        assert field.num_items == ds.num_items


# ---------------------------------------------------------------- atomic .inter / .item
@fuzz
@given(content=st.one_of(st.binary(max_size=200), atomic_inter()))
def test_atomic_inter_reader(folder, content):
    (folder / "a.inter").write_bytes(content)
    load_or_data_error(lambda: SequenceDataset.from_atomic(folder / "a.inter"))


@fuzz
@given(content=st.one_of(st.binary(max_size=200), atomic_item()))
def test_atomic_item_reader(folder, content):
    (folder / "b.inter").write_bytes(_VALID_INTER)
    (folder / "b.item").write_bytes(content)
    ds = load_or_data_error(lambda: SequenceDataset.from_atomic(folder / "b.inter"))
    if ds is not None:
        for field in ds.attributes.values():
            assert field.num_items == ds.num_items
