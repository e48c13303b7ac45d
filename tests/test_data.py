"""Data engine: readers, id maps, grouping, k-core, split, batches, sampling, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from seqrec.data import DataError, SequenceDataset, load_dataset, synthetic

from helpers import shared_dataset


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- S3-Rec text
def test_s3rec_text_roundtrip(tmp_path):
    p = write(tmp_path, "toy.txt", "10 5 3 7\n11 3 3\n\n12 100 5 3 7 9\n")
    ds = SequenceDataset.from_s3rec(p, attributes=None)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (3, 5, 10)
    # dense ids follow numeric order of raw ids: 3<5<7<9<100
    assert ds.item_tokens == ["", "3", "5", "7", "9", "100"]
    assert ds.user_tokens == ["10", "11", "12"]
    assert ds.item_raw(ds.sequence(0)) == ["5", "3", "7"]
    assert ds.item_raw(ds.sequence(2)) == ["100", "5", "3", "7", "9"]
    assert ds.item_raw(torch.tensor([[0, 5]])) == ["", "100"]  # recommend's output as it comes
    with pytest.raises(IndexError, match=r"dense item ids outside 0..5: \[-1, 6\]"):
        ds.item_raw([1, -1, 6])  # -1 must not name the last item
    with pytest.raises(TypeError, match="integer dense ids"):
        ds.item_raw([1.5])
    assert list(ds.item_ids(["100", 3])) == [5, 1]
    with pytest.raises(KeyError, match="unknown item ids"):
        ds.item_ids(["4"])


@pytest.mark.parametrize("text, message", [
    ("", r"toy.txt: file is empty"),
    ("1 2 3\nabc 4 5\n", r"toy.txt:2: field 'user': 'abc' is not an integer id"),
    ("1 2 x3\n", r"toy.txt:1: field 'item' #2: 'x3' is not an integer id"),
    ("1 2 3\n2\n", r"toy.txt:2: user 2 has no items"),
    ("1 2 3\n1 4 5\n", r"toy.txt:2: user 1 appears again \(first on line 1\)"),
    ("1 2 3.5\n", r"toy.txt:1: field 'item' #2: '3.5' is not an integer id"),
])
def test_s3rec_text_errors_name_file_line_field(tmp_path, text, message):
    p = write(tmp_path, "toy.txt", text)
    with pytest.raises(DataError, match=message):
        SequenceDataset.from_s3rec(p, attributes=None)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        SequenceDataset.from_s3rec(tmp_path / "nope.txt", attributes=None)
    assert issubclass(DataError, ValueError)


def test_item2attributes(tmp_path):
    p = write(tmp_path, "toy.txt", "1 1 2 3\n2 2 3 4\n")
    write(tmp_path, "toy_item2attributes.json", json.dumps({"1": [5, 6], "2": [6, 6], "4": [7]}))
    ds = SequenceDataset.from_s3rec(p)
    f = ds.attributes["attributes"]
    assert f.tokens == ["", "5", "6", "7"]
    assert f.values[f.indptr[1]:f.indptr[2]].tolist() == [1, 2]
    assert f.values[f.indptr[2]:f.indptr[3]].tolist() == [2]  # duplicate dropped
    assert f.counts().tolist() == [0, 2, 1, 0, 1]
    assert f.padded().tolist() == [[0, 0], [1, 2], [2, 0], [0, 0], [3, 0]]
    mh = f.multi_hot()
    assert mh.shape == (5, 4) and mh[1].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("payload, message", [
    ('{"9": [1]}', r"item '9' does not occur in the sequences \(attribute file does not match\)"),
    ('{"1": 3}', r"item '1': expected a list of attributes"),
    ('[1, 2]', r"expected a JSON object"),
    ('{"1": [1.5]}', r"attribute 1.5 is not an integer or string id"),
    ('{"1": [1, ', r"toy_item2attributes.json:1: invalid JSON"),
])
def test_item2attributes_errors(tmp_path, payload, message):
    p = write(tmp_path, "toy.txt", "1 1 2 3\n")
    write(tmp_path, "toy_item2attributes.json", payload)
    with pytest.raises(DataError, match=message):
        SequenceDataset.from_s3rec(p)


# ---------------------------------------------------------------- atomic
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def test_atomic_orders_by_timestamp_and_reads_item_fields(tmp_path):
    write(tmp_path, "toy.inter", INTER + "u1\ti2\t3\t30\nu1\ti1\t4\t10\nu2\ti3\t1\t5\nu1\ti3\t2\t20\n"
                                         "u2\ti1\t5\t5\n")
    write(tmp_path, "toy.item", "item_id:token\tgenre:token_seq\tyear:float\tbrand:token\n"
                                "i1\ta b\t1990\tx\ni2\tb\t2001.5\ty\ni3\t\t1980\tx\ni9\tc\t1\tz\n")
    ds = SequenceDataset.from_atomic(tmp_path / "toy")
    assert ds.item_raw(ds.sequence(ds.user_ids(["u1"])[0])) == ["i1", "i3", "i2"]
    # ties keep file order
    assert ds.item_raw(ds.sequence(ds.user_ids(["u2"])[0])) == ["i3", "i1"]
    genre, year, brand = ds.attributes["genre"], ds.attributes["year"], ds.attributes["brand"]
    i1, i2, i3 = ds.item_ids(["i1", "i2", "i3"])
    assert [genre.tokens[v] for v in genre.values[genre.indptr[i1]:genre.indptr[i1 + 1]]] == ["a", "b"]
    assert genre.counts()[i3] == 0  # empty token_seq: no value, not dropped silently elsewhere
    assert "c" not in genre.tokens  # i9 never occurs in the interactions
    assert year.kind == "numeric" and year.values[year.indptr[i2]] == 2001.5
    assert brand.tokens[brand.values[brand.indptr[i3]]] == "x"
    only = SequenceDataset.from_atomic(tmp_path / "toy.inter", item_fields=["brand"])
    assert list(only.attributes) == ["brand"]


@pytest.mark.parametrize("body, message", [
    ("u1\ti1\t3\n", r"toy.inter:2: expected 4 tab-separated fields, got 3"),
    ("u1\ti1\t3\tthree\n", r"toy.inter:2: field 'timestamp': 'three' is not a finite number"),
    ("u1\ti1\t3\tnan\n", r"toy.inter:2: field 'timestamp': 'nan' is not a finite number"),
    ("\ti1\t3\t1\n", r"toy.inter:2: field 'user_id': empty token"),
    ("", r"toy.inter: file has a header but no rows"),
])
def test_atomic_row_errors(tmp_path, body, message):
    write(tmp_path, "toy.inter", INTER + body)
    with pytest.raises(DataError, match=message):
        SequenceDataset.from_atomic(tmp_path / "toy.inter")


def test_atomic_header_errors(tmp_path):
    write(tmp_path, "a.inter", "user_id:token\titem:token\n1\t2\n")
    with pytest.raises(DataError, match=r"a.inter:1: missing column 'item_id' \(the header has: user_id, item\)"):
        SequenceDataset.from_atomic(tmp_path / "a.inter", time_field=None)
    write(tmp_path, "b.inter", "user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(DataError, match=r"b.inter:1: header field 'item_id:int' has unknown type 'int'"):
        SequenceDataset.from_atomic(tmp_path / "b.inter", time_field=None)
    write(tmp_path, "c.inter", "user_id\titem_id:token\n")
    with pytest.raises(DataError, match="is not of the form name:type"):
        SequenceDataset.from_atomic(tmp_path / "c.inter", time_field=None)
    write(tmp_path, "d.inter", "")
    with pytest.raises(DataError, match=r"d.inter: file is empty"):
        SequenceDataset.from_atomic(tmp_path / "d.inter", time_field=None)
    write(tmp_path, "e.inter", INTER + "1\t2\t3\t4\n")
    with pytest.raises(DataError, match="attribute fields \\['genre'\\] asked for, but the file is missing"):
        SequenceDataset.from_atomic(tmp_path / "e.inter", item_fields=["genre"])


def test_atomic_reader_in_parallel_stretches_matches_one_thread(tmp_path, monkeypatch):
    # Over 4 MB a file is parsed in stretches on several threads and merged: the result,
    # token numbering included, and the first error must be those of a one-thread read.
    from seqrec._C import data as engine

    rng = np.random.default_rng(0)
    n = 270_000
    lines = ["user_id:token\titem_id:token\tts:float\ttags:token_seq\tw:float_seq"]
    users, items, tags = rng.integers(0, 5000, n), rng.zipf(1.3, n) % 9000, rng.integers(0, 50, (n, 2))
    lines += [f"u{u}\t{i}\t{k}.5\tt{a} t{b}\t{k} {a}" for k, (u, i, (a, b)) in enumerate(zip(users, items, tags))]
    path = write(tmp_path, "big.inter", "\n".join(lines) + "\n")
    assert path.stat().st_size > 8 << 20  # three stretches

    def read(threads, p=path):
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
        return engine.read_atomic(os.fsencode(p), [])

    one, three = read(1), read(3)
    assert one["num_rows"] == three["num_rows"] == n
    for a, b in zip(one["columns"], three["columns"]):
        assert a.keys() == b.keys() and a["name"] == b["name"]
        for key in a:
            if isinstance(a[key], np.ndarray):
                assert np.array_equal(a[key], b[key]), (a["name"], key)
            else:
                assert a[key] == b[key], (a["name"], key)

    lines[n - 10] = lines[n - 10].replace(".5\t", ".5x\t")  # an error in the last stretch...
    lines[n // 2] = lines[n // 2] + "\textra"                # ...after one in the middle one
    bad = write(tmp_path, "bad.inter", "\n".join(lines) + "\n")
    for threads in (1, 3):
        with pytest.raises(DataError, match=f"bad.inter:{n // 2 + 1}: expected 5 tab-separated fields, got 6"):
            read(threads, bad)


# ---------------------------------------------------------------- parquet (optional pyarrow)
def test_parquet_reads_what_atomic_reads(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [("u3", 20, 5.0), ("u1", 3, 2.0), ("u3", 100, 1.0), ("u1", 20, 1.0), ("u2", 3, 7.0), ("u3", 3, 1.0)]
    write(tmp_path, "p.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
          + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    users, items, times = zip(*rows)
    pq.write_table(pa.table({"user_id": list(users), "item_id": list(items), "timestamp": list(times),
                             "rating": [1.0] * len(rows)}), tmp_path / "p.parquet")
    a = SequenceDataset.from_atomic(tmp_path / "p.inter")
    p = SequenceDataset.from_parquet(tmp_path / "p.parquet")
    assert p.user_tokens == a.user_tokens == ["u3", "u1", "u2"]
    assert p.item_tokens == a.item_tokens == ["", "3", "20", "100"]
    assert p.indptr.tolist() == a.indptr.tolist() and p.items.tolist() == a.items.tolist()
    assert p.item_raw(p.sequence(0)) == ["100", "3", "20"]  # u3 by time, ties in file order
    via_loader = load_dataset(str(tmp_path / "p.parquet"))
    assert via_loader.items.tolist() == p.items.tolist() and via_loader.metadata["format"] == "parquet"


def test_parquet_timestamps_and_file_order(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    when = pa.array([3_000, 1_000, 2_000], pa.timestamp("s"))
    pq.write_table(pa.table({"user_id": [1, 1, 1], "item_id": ["a", "b", "c"], "timestamp": when}),
                   tmp_path / "t.parquet")
    assert SequenceDataset.from_parquet(tmp_path / "t.parquet").item_raw(range(1, 4)) == ["a", "b", "c"]
    ds = SequenceDataset.from_parquet(tmp_path / "t.parquet")
    assert ds.item_raw(ds.sequence(0)) == ["b", "c", "a"]
    ds = SequenceDataset.from_parquet(tmp_path / "t.parquet", time_field=None)
    assert ds.item_raw(ds.sequence(0)) == ["a", "b", "c"]


# ---------------------------------------------------------------- arrays / pandas
def test_from_arrays_and_dataframe_agree():
    pd = pytest.importorskip("pandas")
    users = np.array([3, 1, 3, 1, 2, 2, 2])
    items = np.array(["b", "a", "a", "c", "c", "b", "a"])
    ts = np.array([2, 1, 1, 5, 0, 3, 1])
    a = SequenceDataset.from_arrays(users, items, ts)
    df = pd.DataFrame({"user": users, "item": items, "timestamp": ts, "cat": [["x", "y"], "z", "z", "w", "w", ["x", "y"], "z"]})
    d = SequenceDataset.from_dataframe(df, attribute_cols=["cat"])
    for ds in (a, d):
        assert ds.user_tokens == ["1", "2", "3"]
        assert ds.item_raw(ds.sequence(2)) == ["a", "b"]
        assert ds.item_raw(ds.sequence(1)) == ["c", "a", "b"]
    cat = d.attributes["cat"]
    b = d.item_ids(["b"])[0]
    assert sorted(cat.tokens[v] for v in cat.values[cat.indptr[b]:cat.indptr[b + 1]]) == ["x", "y"]
    with pytest.raises(DataError, match=r"missing column\(s\) \['time'\]"):
        SequenceDataset.from_dataframe(df, time_col="time")


def test_from_arrays_errors():
    with pytest.raises(DataError, match="same length"):
        SequenceDataset.from_arrays([1, 2], [1])
    with pytest.raises(DataError, match="no interactions"):
        SequenceDataset.from_arrays([], [])
    with pytest.raises(DataError, match=r"timestamps\[1\] is not a finite number"):
        SequenceDataset.from_arrays([1, 1], [1, 2], [0.0, float("nan")])
    with pytest.raises(DataError, match="users must hold integer or string ids, got floats"):
        SequenceDataset.from_arrays([1.5, 2.0], [1, 2])
    with pytest.raises(DataError, match="item 9 does not occur"):
        SequenceDataset.from_arrays([1], [1], item_attributes={"a": {9: "x"}})


def test_numeric_attribute_from_arrays():
    ds = SequenceDataset.from_arrays([1, 1], [10, 20], item_attributes={"price": {10: 1.5, 20: 2.0}})
    assert ds.attributes["price"].kind == "numeric"
    assert ds.attributes["price"].values.tolist() == [1.5, 2.0]


# ---------------------------------------------------------------- k-core
def test_kcore_reaches_fixed_point():
    # item 9 is rare; dropping it makes user 3 too short, which makes item 4 rare.
    users = [1] * 3 + [2] * 3 + [3] * 2 + [4] * 3
    items = [1, 2, 3, 1, 2, 3, 9, 4, 1, 2, 3]
    ds = SequenceDataset.from_arrays(users, items).kcore(min_user=2, min_item=2)
    assert ds.user_tokens == ["1", "2", "4"]
    assert ds.item_tokens == ["", "1", "2", "3"]
    lengths = ds.lengths
    pop = ds.item_popularity()[1:]
    assert lengths.min() >= 2 and pop.min() >= 2
    with pytest.raises(DataError, match="leaves no interactions"):
        ds.kcore(100)


def test_kcore_keeps_attributes_aligned():
    ds = synthetic(num_users=300, num_items=200, seed=3)
    k = ds.kcore(5, 12)
    old = ds.attributes["category"]
    new = k.attributes["category"]
    for new_id in (1, k.num_items // 2, k.num_items):
        old_id = ds.item_ids([k.item_tokens[new_id]])[0]
        assert new.tokens[new.values[new.indptr[new_id]]] == old.tokens[old.values[old.indptr[old_id]]]


# ---------------------------------------------------------------- split and batches
@pytest.fixture(scope="module")
def small():
    return synthetic(num_users=200, num_items=120, num_intents=4, seed=7)


def test_leave_one_out_targets(small):
    split = small.leave_one_out(max_len=8)
    for stage, back in (("test", 1), ("valid", 2)):
        e = split.eval_batch(stage)
        for row in (0, 5, len(e.users) - 1):
            seq = small.sequence(int(e.users[row]))
            prefix = seq[: len(seq) - back]
            assert e.target[row] == seq[len(seq) - back]
            h = e.history_items[e.history_indptr[row]:e.history_indptr[row + 1]]
            assert h.tolist() == prefix.tolist()
            kept = prefix[-8:]
            assert e.input_ids[row, 8 - len(kept):].tolist() == kept.tolist()
            assert (e.input_ids[row, : 8 - len(kept)] == 0).all()
            assert e.lengths[row] == len(kept)


def test_train_batches_cover_the_training_prefix(small):
    split = small.leave_one_out(max_len=6)
    seen = set()
    for batch in split.train_batches(16, seed=1):
        for r in range(len(batch.users)):
            u = int(batch.users[r])
            seen.add(u)
            seq = small.sequence(u)[:-2]
            n = int(batch.lengths[r])
            assert n == min(len(seq) - 1, 6)
            assert batch.input_ids[r, 6 - n:].tolist() == seq[-n - 1:-1].tolist()
            assert batch.target_ids[r, 6 - n:].tolist() == seq[-n:].tolist()
            assert (batch.input_ids[r, :6 - n] == 0).all() and (batch.negative_ids[r, :6 - n] == 0).all()
            negs = batch.negative_ids[r, 6 - n:].numpy()
            assert not np.isin(negs, small.sequence(u)).any()
            assert negs.min() >= 1 and negs.max() <= small.num_items
    assert seen == set(split.train_users.tolist())


def test_train_batches_are_reproducible_and_resumable(small):
    split = small.leave_one_out()
    a = list(split.train_batches(32, seed=5, epoch=2))
    b = list(split.train_batches(32, seed=5, epoch=2))
    c = list(split.train_batches(32, seed=5, epoch=2, start_batch=3))
    d = list(split.train_batches(32, seed=5, epoch=3))
    for x, y in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(x[:-1], y[:-1]))  # tensor fields
    assert len(c) == len(a) - 3 and all(torch.equal(s, t) for s, t in zip(a[3][:-1], c[0][:-1]))
    assert not torch.equal(a[0].users, d[0].users)


def test_split_computes_the_sequence_lengths_once(small, monkeypatch):
    # Batching must cost what the batch holds: lengths over all users (np.diff of indptr)
    # once per split, not once per batch (quadratic in users over an epoch).
    calls = []
    lengths = SequenceDataset.lengths
    monkeypatch.setattr(SequenceDataset, "lengths", property(lambda ds: calls.append(1) or lengths.fget(ds)))
    split = small.leave_one_out(max_len=8)
    batches = list(split.train_batches(4, seed=0, epoch=0)) + list(split.train_batches(4, seed=0, epoch=1))
    assert len(batches) > 10
    split.eval_batch("valid")
    split.eval_batch("test", split.eval_users[:3])
    split.sampled_candidates("test", 5)
    assert len(calls) == 1


def test_multiple_negatives_shape(small):
    batch = next(small.leave_one_out().train_batches(8, num_negatives=3))
    assert batch.negative_ids.shape == (8, 50, 3)


def test_sampled_candidates(small):
    split = small.leave_one_out()
    cand = split.sampled_candidates("test", num_negatives=20, seed=3)
    assert cand.shape == (len(split.eval_users), 21)
    e = split.eval_batch("test")
    assert (cand[:, 0] == e.target.numpy()).all()
    for row, u in enumerate(split.eval_users[:50]):
        negs = cand[row, 1:]
        assert len(set(negs.tolist())) == 20
        assert not np.isin(negs, small.sequence(int(u))).any()
    assert split.sampled_candidates("test", 20, 3) is cand  # stored, shared by every model
    fresh = small.leave_one_out().sampled_candidates("test", 20, 3)
    assert (fresh == cand).all()
    assert not (small.leave_one_out().sampled_candidates("test", 20, 4) == cand).all()


def test_sampled_candidates_save(tmp_path, small):
    split = small.leave_one_out()
    split.save_candidates(tmp_path / "cand.npz", "valid", 10, 0)
    saved = np.load(tmp_path / "cand.npz")
    assert (saved["candidates"] == split.sampled_candidates("valid", 10, 0)).all()


def test_too_many_negatives_is_an_error():
    ds = SequenceDataset.from_arrays([1, 1, 1, 2, 2, 2], [1, 2, 3, 2, 3, 4])
    with pytest.raises(DataError, match="fewer than the 5 negatives"):
        ds.leave_one_out().sampled_candidates("test", 5)


def test_sampled_shortfall_predicts_the_sampler():
    """sampled_shortfall (counted in numpy, nothing drawn) is None exactly when the C++
    sampler can draw the candidates, and otherwise names the user the sampler fails on.
    Repeated items count once, users too short to evaluate are not checked."""
    ds = SequenceDataset.from_arrays([1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4], [1, 2, 2, 3, 2, 3, 4, 5, 6, 1, 5, 6])
    split = ds.leave_one_out()  # 6 items; user 1 has seen 3 distinct items (4 interactions), user 3 only 2
    assert list(split.eval_users) == [0, 1, 3]
    for n in range(1, 6):
        why = split.sampled_shortfall(n)
        try:
            split.sampled_candidates("test", n)
        except DataError as err:
            assert why is not None and why.startswith(str(err).split(" asked for")[0]), (n, why, err)
        else:
            assert why is None, n
    assert split.sampled_shortfall(3) is None  # user 0's four interactions hold three distinct items
    assert split.sampled_shortfall(4) == ("user 0 has only 3 unseen items, fewer than the 4 negatives asked for "
                                          "(3 of 3 evaluated users fall short; catalogue of 6 items)")


def test_load_dataset_says_why_it_cannot_read_a_path(tmp_path):
    with pytest.raises(DataError, match="Beuaty: no such file or folder"):
        load_dataset(str(tmp_path / "Beuaty"))  # a typo is not a format problem
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset(str(folder))
    write(folder, "toy.txt", "1 1 2 3\n2 2 3 4\n")
    with pytest.raises(DataError, match=r"holds data.txt or data.inter; it holds \['toy.txt'\]: pass one of"):
        load_dataset(str(folder))
    assert load_dataset(str(folder / "toy.txt")).num_users == 2
    (folder / "toy.txt").rename(folder / "data.txt")
    assert load_dataset(str(folder)).num_users == 2  # the folder of the same name


def test_split_argument_errors(small):
    split = small.leave_one_out()
    with pytest.raises(ValueError, match="stage must be"):
        split.eval_batch("train")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(split.train_batches(0))
    with pytest.raises(DataError, match=r"users\[0\] = 100000 is not a user index"):
        split.eval_batch("test", [100000])
    with pytest.raises(ValueError, match="max_len must be an int >= 1, got 0"):
        small.leave_one_out(max_len=0)
    short = SequenceDataset.from_arrays([1, 1, 2], [1, 2, 3])
    with pytest.raises(DataError, match="no user has the 3 interactions"):
        short.leave_one_out()


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_structured():
    a, b, c = synthetic(seed=1), synthetic(seed=1), synthetic(seed=2)
    assert np.array_equal(a.items, b.items) and not np.array_equal(a.items, c.items)
    # planted structure: consecutive items mostly share an intent
    intent = a.metadata["item_intent"]
    same = []
    for u in range(200):
        s = a.sequence(u)
        same.append(np.mean(intent[s[1:]] == intent[s[:-1]]))
    assert np.mean(same) > 0.6
    # popularity skew
    pop = np.sort(a.item_popularity()[1:])[::-1]
    assert pop[: len(pop) // 10].sum() > 2.0 * pop[-len(pop) // 10:].sum()
    with pytest.raises(ValueError, match="num_items"):
        synthetic(num_items=3)


# ---------------------------------------------------------------- real data
def test_beauty_loads_with_published_sizes():
    ds = load_dataset(str(shared_dataset("Beauty")))
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (22363, 12101, 198502)
    assert ds.attributes["attributes"].num_values == 637


def test_ml100k_loads_with_published_sizes():
    ds = load_dataset(str(shared_dataset("ml-100k")))
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100000)
    assert ds.attributes["class"].num_values == 19
