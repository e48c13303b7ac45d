"""Prepared datasets (`seqrec data prepare`): memory-mapped round trip, tampering refused,
training from the folder; and the C++ natural order of tokens against Python's."""
from __future__ import annotations

import numpy as np
import pytest

from seqrec.cli import main
from seqrec.data import DataError, SequenceDataset, load_dataset, synthetic
from seqrec.data.dataset import _engine, _natural, _natural_order
from seqrec.data.prepared import open_prepared

from helpers import add_stray_file, edit_manifest, flip_last_bytes, prepared_folder


def assert_same(a: SequenceDataset, b: SequenceDataset) -> None:
    assert a.name == b.name
    assert a.user_tokens == b.user_tokens and a.item_tokens == b.item_tokens
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.items, b.items)
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert list(a.attributes) == list(b.attributes)
    for name, fa in a.attributes.items():
        fb = b.attributes[name]
        assert (fa.kind, fa.tokens) == (fb.kind, fb.tokens)
        np.testing.assert_array_equal(fa.indptr, fb.indptr)
        np.testing.assert_array_equal(fa.values, fb.values)


def atomic_dataset(tmp_path) -> SequenceDataset:
    (tmp_path / "toy.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        "u2\ti9\t3\nu1\ti10\t1\nu2\ti1\t1\nu1\tx y\t0.5\nu3\ti9\t2\nu\u00e9\ti1\t4\n")
    (tmp_path / "toy.item").write_text(
        "item_id:token\tgenre:token_seq\tprice:float\n"
        "i9\ta b\t1.5\ni10\tb\t2\nx y\t\t3\ni1\tc\t0.25\n")
    return SequenceDataset.from_atomic(tmp_path / "toy.inter")


def test_round_trip_atomic_with_attributes(tmp_path):
    ds = atomic_dataset(tmp_path)
    assert set(ds.attributes) == {"genre", "price"}
    out = ds.prepare(tmp_path / "cache")
    back = SequenceDataset.open_prepared(out)
    assert_same(ds, back)
    assert back.metadata == ds.metadata
    # Mapped, not copied: every process opening the folder shares the page cache.
    for arr in (back.items, back.indptr, back.timestamps):
        assert isinstance(arr.base, np.memmap) or isinstance(arr, np.memmap)
        assert not arr.flags.writeable
    assert not list(tmp_path.glob(".cache.*")), "no temporary folder left behind"


def test_round_trip_synthetic_metadata_arrays_and_odd_tokens(tmp_path):
    ds = synthetic(num_users=40, num_items=30, seed=3)
    back = open_prepared(ds.prepare(tmp_path / "s"))
    assert_same(ds, back)
    np.testing.assert_array_equal(back.metadata["item_intent"], ds.metadata["item_intent"])
    # Tokens holding newlines, tabs and non-ASCII text survive (offsets, not the separator).
    odd = SequenceDataset.from_arrays(["a\nb", "a\nb", "\u00e9", ""], ["x\n", "y", "\ud83d\ude00", "x\n"])
    assert_same(odd, open_prepared(odd.prepare(tmp_path / "odd")))


def test_prepare_refuses_existing_folder_unless_overwrite(tmp_path):
    ds = synthetic(num_users=20, num_items=20, seed=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        ds.prepare(tmp_path / "busy")
    with pytest.raises(FileExistsError, match="not a prepared dataset"):
        ds.prepare(tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    ds.prepare(tmp_path / "c")
    other = synthetic(num_users=25, num_items=24, seed=1)
    other.prepare(tmp_path / "c", overwrite=True)
    assert_same(other, open_prepared(tmp_path / "c"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "c"]


@pytest.mark.parametrize("verify", [True, False])
def test_tampered_files_are_refused(tmp_path, verify):
    folder = prepared_folder(tmp_path)
    items = folder / "items.npy"
    data = flip_last_bytes(items)  # same size: only the checksum can tell
    if verify:
        with pytest.raises(DataError, match=r"items\.npy: content does not match manifest\.json"):
            open_prepared(folder)
    with pytest.raises(DataError, match=r"items\.npy: content does not match"):
        load_dataset(str(folder))
    # Size changes are caught even without hashing.
    items.write_bytes(bytes(data[:-8]))
    with pytest.raises(DataError, match=r"items\.npy: \d+ bytes, the manifest says \d+"):
        open_prepared(folder, verify=verify)


def test_manifest_checks(tmp_path):
    folder = prepared_folder(tmp_path)
    with pytest.raises(DataError, match="is not a prepared dataset"):
        open_prepared(tmp_path)
    add_stray_file(folder)
    with pytest.raises(DataError, match=r"files its manifest does not list: \['stray\.npy'\]"):
        open_prepared(folder)
    (folder / "stray.npy").unlink()
    (folder / "user_tokens.text.npy").unlink()
    with pytest.raises(DataError, match=r"user_tokens\.text\.npy: listed in manifest\.json but missing"):
        open_prepared(folder)
    edit_manifest(folder)  # an edit the manifest's own checksum catches
    with pytest.raises(DataError, match="checksum mismatch"):
        open_prepared(folder)


def test_cli_prepare_then_train_from_the_folder(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "--data", "synthetic", "--synthetic-users", "60", "--synthetic-items", "30",
                 "--out", str(cache)]) == 0
    assert "prepared in" in capsys.readouterr().out
    assert_same(synthetic(num_users=60, num_items=30, seed=0), open_prepared(cache))
    assert main(["data", "prepare", "--data", "synthetic", "--out", str(cache)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "stats", "--data", str(cache)]) == 0
    assert "60" in capsys.readouterr().out
    assert main(["train", "--model", "sasrec", "--data", str(cache), "--epochs", "1", "--hidden-size", "16",
                 "--num-layers", "1", "--max-len", "10", "--batch-size", "32", "--patience", "0",
                 "--sampled-negatives", "20", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run").is_dir()


@pytest.mark.parametrize("tokens", [
    ["10", "9", "-3", "007", "7", "b", "a", "B", "\u00e9", "e", "", "1x"],
    ["5", "05", "+5", "4"],          # '+5' is int('+5') = 5 for Python: decided there
    ["1_0", "9", " 3", "x"],         # underscores and spaces: Python's int() decides
    ["\u0665", "4", "z"],            # an Arabic-Indic digit is an integer to Python
    ["12345678901234567890123", "1", "a"],  # more digits than int64
    ["-", "--1", "-0", "0", "a-b"],
])
def test_natural_order_matches_python(tokens):
    vocab = [""] + tokens
    expected = sorted(range(1, len(vocab)), key=lambda i: _natural(vocab[i]))
    assert _natural_order(vocab).tolist() == expected


def test_natural_order_decided_in_cpp_for_plain_tokens():
    assert _engine.natural_order(["10", "9", "a", "-2", "B"]).tolist() == [3, 1, 0, 4, 2]
    assert _engine.natural_order(["+1", "2"]) is None  # Python decides


def test_integer_looking_tokens_stay_distinct(tmp_path):
    # The id tables key canonical integers by value and everything else by text: "7",
    # "07", "+7", "-0" and "0" are five different raw ids all the same.
    tokens = ["7", "07", "+7", "-0", "0", "-3", "x", "7", "0", "123456789012345678", "1234567890123456789"]
    (tmp_path / "t.inter").write_text("user_id:token\titem_id:token\n"
                                      + "".join(f"{t}\t{t}\n" for t in tokens))
    ds = SequenceDataset.from_atomic(tmp_path / "t.inter", time_field=None)
    distinct = list(dict.fromkeys(tokens))
    assert ds.user_tokens == distinct  # users keep first appearance
    assert ds.item_tokens[1:] == sorted(distinct, key=_natural)
    assert [ds.item_raw(ds.sequence(u))[0] for u in range(ds.num_users)] == distinct
    assert ds.num_interactions == len(tokens)
