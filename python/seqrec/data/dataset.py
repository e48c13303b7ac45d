"""Sequence datasets: loading, id maps, k-core filtering, statistics.

A :class:`SequenceDataset` holds every user's chronological item sequence in CSR form
(``indptr``, ``items``) with dense ids: items ``1..num_items`` (0 is padding) and users
``0..num_users-1``. The raw ids are kept both ways so results can be reported in the
original ids. Parsing, grouping and k-core filtering run in the C++ data engine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .._loader import _C
from .attributes import AttributeField, categorical_from_lists

_engine = _C.data
DataError = _engine.DataError
DataError.__doc__ = "Bad input data: the message names the file, line and field (a ValueError)."
DataError.__module__ = "seqrec.data"


class SequenceDataset:
    """Users' chronological item sequences with dense ids and optional item attributes.

    Build one with :meth:`from_s3rec`, :meth:`from_atomic`, :meth:`from_parquet`,
    :meth:`from_arrays`, :meth:`from_dataframe` or :func:`seqrec.data.synthetic`; open a
    prepared (memory-mapped) one with :meth:`open_prepared`.

    Attributes:
        indptr: ``[num_users + 1]`` int64; user ``u``'s items are ``items[indptr[u]:indptr[u+1]]``.
        items: ``[num_interactions]`` int64 dense item ids in ``1..num_items``, oldest first.
        user_tokens: raw id of each user (index = dense user id).
        item_tokens: raw id of each item (index = dense item id; ``item_tokens[0] == ""``).
        attributes: item side information by field name.
        metadata: free-form facts about the source (path, format, planted structure).
        timestamps: ``[num_interactions]`` float64 time of each interaction, aligned
            with ``items`` (non-decreasing within a user), or None when the source had
            none (S3-Rec text, synthetic data). Temporal splits need them.
    """

    def __init__(
        self,
        indptr: np.ndarray,
        items: np.ndarray,
        user_tokens: Sequence[str],
        item_tokens: Sequence[str],
        attributes: Mapping[str, AttributeField] | None = None,
        name: str = "dataset",
        metadata: dict | None = None,
        timestamps: np.ndarray | None = None,
    ):
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.items = np.ascontiguousarray(items, dtype=np.int64)
        self.user_tokens = list(user_tokens)
        self.item_tokens = list(item_tokens)
        self.attributes = dict(attributes or {})
        self.name = name
        self.metadata = dict(metadata or {})
        self.timestamps = None if timestamps is None else np.ascontiguousarray(timestamps, dtype=np.float64)
        self._validate()
        self._item_index: dict[str, int] | None = None
        self._user_index: dict[str, int] | None = None

    def _validate(self) -> None:
        if self.indptr.ndim != 1 or len(self.indptr) != len(self.user_tokens) + 1:
            raise DataError(f"{self.name}: indptr must have num_users + 1 = {len(self.user_tokens) + 1} entries")
        if self.indptr[0] != 0 or self.indptr[-1] != len(self.items) or np.any(np.diff(self.indptr) < 0):
            raise DataError(f"{self.name}: indptr must rise from 0 to len(items)")
        if not self.item_tokens or self.item_tokens[0] != "":
            raise DataError(f"{self.name}: item_tokens[0] must be '' (the padding item)")
        if len(self.items) and (self.items.min() < 1 or self.items.max() > self.num_items):
            raise DataError(f"{self.name}: item ids must lie in 1..{self.num_items}")
        if self.timestamps is not None:
            if self.timestamps.shape != self.items.shape:
                raise DataError(f"{self.name}: timestamps has shape {self.timestamps.shape}, items {self.items.shape}")
            step = np.diff(self.timestamps)
            # A decrease is allowed only where a new user's row starts.
            bad = np.flatnonzero(step < 0)
            bad = bad[~np.isin(bad + 1, self.indptr)]
            if len(bad):
                user = int(np.searchsorted(self.indptr, bad[0], side="right") - 1)
                raise DataError(f"{self.name}: timestamps of user {user} decrease at interaction {bad[0] + 1} "
                                "(each user's interactions must be in time order)")
        for name, field in self.attributes.items():
            if field.num_items != self.num_items:
                raise DataError(
                    f"{self.name}: attribute field {name!r} covers {field.num_items} items, "
                    f"the dataset has {self.num_items}"
                )

    # ------------------------------------------------------------------ sizes
    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_items(self) -> int:
        """Number of real items (the padding id 0 excluded)."""
        return len(self.item_tokens) - 1

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """Sequence length of each user, ``[num_users]``."""
        return np.diff(self.indptr)

    def sequence(self, user: int) -> np.ndarray:
        """Dense item ids of user ``user`` (dense user id), oldest first."""
        if not 0 <= user < self.num_users:
            raise IndexError(f"user {user} outside 0..{self.num_users - 1}")
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def item_popularity(self) -> np.ndarray:
        """Interaction count of each item, ``[num_items + 1]`` (index 0 = padding = 0)."""
        return np.bincount(self.items, minlength=self.num_items + 1)

    # ------------------------------------------------------------------ ids
    def item_ids(self, raw: Iterable) -> np.ndarray:
        """Dense ids of raw item ids; unknown raw ids raise KeyError naming them."""
        if self._item_index is None:
            self._item_index = {t: i for i, t in enumerate(self.item_tokens) if i}
        raw = [str(r) for r in raw]
        missing = [r for r in raw if r not in self._item_index]
        if missing:
            raise KeyError(f"unknown item ids: {missing[:10]}")
        return np.asarray([self._item_index[r] for r in raw], dtype=np.int64)

    def user_ids(self, raw: Iterable) -> np.ndarray:
        """Dense ids of raw user ids; unknown raw ids raise KeyError naming them."""
        if self._user_index is None:
            self._user_index = {t: i for i, t in enumerate(self.user_tokens)}
        raw = [str(r) for r in raw]
        missing = [r for r in raw if r not in self._user_index]
        if missing:
            raise KeyError(f"unknown user ids: {missing[:10]}")
        return np.asarray([self._user_index[r] for r in raw], dtype=np.int64)

    def item_raw(self, dense: Iterable[int]) -> list[str]:
        """Raw ids of dense item ids (0, padding, maps to ''); ids outside
        ``0..num_items`` raise IndexError naming them (a negative id would otherwise
        index from the end and name a wrong item)."""
        dense = np.asarray(dense).ravel()
        if dense.size and not np.issubdtype(dense.dtype, np.integer):
            raise TypeError(f"item_raw needs integer dense ids, got dtype {dense.dtype}")
        bad = dense[(dense < 0) | (dense > self.num_items)]
        if bad.size:
            raise IndexError(f"dense item ids outside 0..{self.num_items}: {bad[:10].tolist()}")
        return [self.item_tokens[i] for i in dense.tolist()]

    # ------------------------------------------------------------------ loaders
    @classmethod
    def from_s3rec(cls, path: str | os.PathLike, attributes: str | os.PathLike | None = "auto",
                   name: str | None = None) -> "SequenceDataset":
        """Read the S3-Rec text format: ``user item item ...`` per line, chronological.

        ``attributes``: path of the ``{"item": [attr, ...]}`` JSON file; ``"auto"`` looks for
        ``<stem>_item2attributes.json`` beside the text file; ``None`` reads none. Its
        values form one categorical field named ``"attributes"``. Every item of the JSON
        must occur in the sequences.
        """
        path = Path(path)
        parsed = _engine.read_s3rec_text(os.fsencode(path))
        name = name or path.stem
        fields = {}
        if attributes == "auto":
            candidate = path.with_name(f"{path.stem}_item2attributes.json")
            attributes = candidate if candidate.exists() else None
        if attributes is not None:
            fields["attributes"] = _read_item2attributes(Path(attributes), parsed["item_tokens"])
        return cls(parsed["indptr"], parsed["items"], parsed["user_tokens"][1:], parsed["item_tokens"], fields,
                   name=name, metadata={"format": "s3rec", "path": str(path)})

    @classmethod
    def from_atomic(cls, path: str | os.PathLike, item_fields: Sequence[str] | None = None, *,
                    user_field: str = "user_id", item_field: str = "item_id",
                    time_field: str | None = "timestamp", name: str | None = None) -> "SequenceDataset":
        """Read RecBole atomic files: ``<path>.inter`` (or ``path`` itself) and ``.item``.

        ``path`` is the ``.inter`` file, its stem (``data/ml-100k/ml-100k``) or the folder
        holding ``<folder>.inter``. Interactions are ordered by ``time_field`` within each
        user (stably; file order when ``time_field`` is None). ``item_fields`` names the
        ``.item`` columns to load as attributes (``token``/``token_seq`` become categorical,
        ``float``/``float_seq`` numeric); None loads every column but the item id.
        """
        inter_path = _atomic_path(Path(path), ".inter")
        name = name or inter_path.stem
        wanted = [user_field, item_field] + ([time_field] if time_field else [])
        table = _engine.read_atomic(os.fsencode(inter_path), wanted)
        cols = {c["name"]: c for c in table["columns"]}
        for f in (user_field, item_field):
            if cols[f]["type"] != "token":
                raise DataError(f"{inter_path}:1: field {f!r} must be of type token, is {cols[f]['type']}")
        timestamps = None
        if time_field:
            if cols[time_field]["type"] != "float":
                raise DataError(f"{inter_path}:1: field {time_field!r} must be of type float")
            timestamps = cols[time_field]["values"]
        ds = cls._from_codes(
            cols[user_field]["codes"], cols[user_field]["vocab"], cols[item_field]["codes"],
            cols[item_field]["vocab"], timestamps, name=name,
            metadata={"format": "atomic", "path": str(inter_path)},
        )
        item_path = inter_path.with_suffix(".item")
        if item_path.exists() and (item_fields is None or len(item_fields) > 0):
            ds.attributes.update(_read_atomic_items(item_path, item_field, item_fields, ds.item_tokens))
        elif item_fields:
            raise DataError(f"{item_path}: attribute fields {list(item_fields)} asked for, but the file is missing")
        return ds

    @classmethod
    def from_parquet(cls, path: str | os.PathLike, *, user_field: str = "user_id", item_field: str = "item_id",
                     time_field: str | None = "timestamp", name: str | None = None) -> "SequenceDataset":
        """Read interactions from a Parquet file (or a folder of them) with pyarrow.

        One row per interaction; ``user_field`` and ``item_field`` hold raw ids (integers
        or strings), ``time_field`` numbers or timestamps (None: file order). The result is
        the dataset :meth:`from_atomic` gives for the same rows: users in order of first
        appearance, items in natural order of their raw ids. Needs ``pyarrow`` (an optional
        dependency: ``pip install pyarrow``).
        """
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("SequenceDataset.from_parquet needs pyarrow: pip install pyarrow") from None
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        name = name or path.stem
        wanted = [user_field, item_field] + ([time_field] if time_field else [])
        try:
            schema = pq.read_schema(path) if path.is_file() else pq.ParquetDataset(path).schema
            missing = [f for f in wanted if f not in schema.names]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; the file has {schema.names}")
            table = pq.read_table(path, columns=wanted)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
        if table.num_rows == 0:
            raise DataError(f"{path}: no interactions")
        codes, vocabs = [], []
        for field in (user_field, item_field):
            column = _arrow_column(table, field, path)
            kind = column.type
            if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise DataError(f"{path}: column {field!r} must hold integer or string ids, has type {kind}")
            # Hashing in Arrow's C++: codes in order of first appearance, as the atomic reader.
            encoded = column.dictionary_encode()
            codes.append(encoded.indices.to_numpy().astype(np.int64) + 1)
            vocabs.append([""] + encoded.dictionary.cast(pa.string()).to_pylist())
        timestamps = None
        if time_field:
            column = _arrow_column(table, time_field, path)
            if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
                column = column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column.cast(pa.date32()).cast(pa.int32())
            if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
                raise DataError(f"{path}: column {time_field!r} must hold numbers or timestamps, has type {column.type}")
            timestamps = _timestamp_array(column.to_numpy().astype(np.float64), f"{path}", f"column {time_field!r}",
                                          table.num_rows)
        return cls._from_codes(codes[0], vocabs[0], codes[1], vocabs[1], timestamps, name=name,
                               metadata={"format": "parquet", "path": str(path)})

    @classmethod
    def open_prepared(cls, path: str | os.PathLike, *, verify: bool = True) -> "SequenceDataset":
        """Open a folder written by :meth:`prepare` (or ``seqrec data prepare``): its arrays
        are memory-mapped read-only, shared by every process that opens it. ``verify``
        checks each file's SHA-256 against the manifest (see
        :func:`seqrec.data.prepared.open_prepared`); a mismatch raises DataError."""
        from .prepared import open_prepared

        return open_prepared(path, verify=verify)

    def prepare(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write this dataset as a folder of memory-mappable arrays and a checksummed
        manifest, for :meth:`open_prepared` (atomically: complete or absent)."""
        from .prepared import prepare_dataset

        return prepare_dataset(self, out, overwrite=overwrite)

    @classmethod
    def from_arrays(cls, users, items, timestamps=None, *, item_attributes: Mapping[str, Mapping] | None = None,
                    name: str = "arrays") -> "SequenceDataset":
        """Build from parallel arrays of interactions (raw user ids, raw item ids[, times]).

        Raw ids may be integers or strings (one kind per array); dense ids follow their
        sorted order. Rows are ordered by ``timestamps`` (numbers or ``datetime64``) within
        a user (stably), or kept in array order. ``item_attributes``: ``{field: {raw_item:
        value or list of values}}``; numeric values make a numeric field, anything else a
        categorical one.
        """
        return cls._build(users, items, timestamps, item_attributes, name, ("users", "items", "timestamps"))

    @classmethod
    def from_dataframe(cls, df, user_col: str = "user", item_col: str = "item",
                       time_col: str | None = "timestamp", attribute_cols: Sequence[str] = (),
                       name: str = "dataframe") -> "SequenceDataset":
        """Build from a pandas DataFrame of interactions.

        ``attribute_cols`` are item attributes given on the interaction rows (the first
        row of each item is used); list-valued cells make multi-valued attributes.
        """
        needed = [user_col, item_col] + ([time_col] if time_col else []) + list(attribute_cols)
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(f"{name}: missing column(s) {missing}; the DataFrame has {list(df.columns)}")
        attrs = {}
        if attribute_cols:
            first = df.drop_duplicates(subset=[item_col], keep="first")
            for col in attribute_cols:
                attrs[col] = dict(zip(first[item_col].tolist(), first[col].tolist()))
        return cls._build(df[user_col].to_numpy(), df[item_col].to_numpy(),
                          df[time_col].to_numpy() if time_col else None, attrs, name,
                          (f"column {user_col!r}", f"column {item_col!r}", f"column {time_col!r}"))

    @classmethod
    def _build(cls, users, items, timestamps, item_attributes, name: str, labels: tuple[str, str, str]):
        """from_arrays / from_dataframe; ``labels`` name the three inputs in error messages."""
        users = _id_array(users, name, labels[0])
        items = _id_array(items, name, labels[1])
        if items.shape != users.shape:
            raise DataError(f"{name}: {labels[0]} and {labels[1]} must have the same length, got "
                            f"{len(users)} and {len(items)}")
        if len(users) == 0:
            raise DataError(f"{name}: no interactions")
        ts = None if timestamps is None else _timestamp_array(timestamps, name, labels[2], len(users))
        user_vocab, user_codes = np.unique(users, return_inverse=True)
        item_vocab, item_codes = np.unique(items, return_inverse=True)
        ds = cls._from_codes(user_codes + 1, [""] + [str(u) for u in user_vocab], item_codes + 1,
                             [""] + [str(i) for i in item_vocab], ts, name=name,
                             metadata={"format": "arrays"})
        for field, mapping in (item_attributes or {}).items():
            ds.attributes[field] = _field_from_mapping(field, mapping, ds.item_tokens)
        return ds

    @classmethod
    def _from_codes(cls, user_codes, user_vocab, item_codes, item_vocab, timestamps, *, name, metadata):
        user_codes = np.asarray(user_codes, np.int64)
        item_codes = np.asarray(item_codes, np.int64)
        # timestamps come back in the order of the grouped items.
        indptr, seq_items, timestamps = _engine.group_by_user(user_codes, item_codes, timestamps,
                                                              len(user_vocab) - 1)
        order = _natural_order(item_vocab)
        old_to_new = np.zeros(len(item_vocab), np.int64)
        old_to_new[order] = np.arange(1, len(item_vocab))
        item_tokens = [""] + [item_vocab[i] for i in order.tolist()]
        return cls(indptr, old_to_new[seq_items], list(user_vocab)[1:], item_tokens, name=name, metadata=metadata,
                   timestamps=timestamps)

    # ------------------------------------------------------------------ transforms
    def kcore(self, min_user: int = 5, min_item: int | None = None) -> "SequenceDataset":
        """Keep only users and items with at least ``min_user`` / ``min_item`` interactions
        (iterated until stable). Ids are re-densified; attributes follow their items."""
        min_item = min_user if min_item is None else min_item
        if min_user < 0 or min_item < 0:
            raise ValueError("kcore: min_user and min_item must be >= 0")
        indptr, items, kept_users, kept_items = _engine.kcore(self.indptr, self.items, self.num_items,
                                                              min_user, min_item)
        if len(kept_users) == 0:
            raise DataError(f"{self.name}: {min_user}/{min_item}-core filtering leaves no interactions")
        timestamps = None
        if self.timestamps is not None:
            # An interaction survives exactly when both its user and its item do.
            owner = np.repeat(np.arange(self.num_users), self.lengths)
            timestamps = self.timestamps[np.isin(owner, kept_users) & np.isin(self.items, kept_items)]
        return SequenceDataset(
            indptr, items, [self.user_tokens[u] for u in kept_users],
            [""] + [self.item_tokens[i] for i in kept_items],
            {k: f.subset_items(kept_items) for k, f in self.attributes.items()},
            name=self.name, metadata={**self.metadata, "kcore": (min_user, min_item)}, timestamps=timestamps,
        )

    def leave_one_out(self, max_len: int = 50):
        """The leave-one-out split (:class:`seqrec.data.splits.LeaveOneOut`)."""
        from .splits import LeaveOneOut

        return LeaveOneOut(self, max_len=max_len)

    def stats(self) -> dict:
        """Sizes and length statistics, plus one entry per attribute field."""
        lengths = self.lengths
        out = {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "avg_length": float(lengths.mean()) if len(lengths) else 0.0,
            "min_length": int(lengths.min()) if len(lengths) else 0,
            "max_length": int(lengths.max()) if len(lengths) else 0,
            "length_quartiles": (tuple(float(q) for q in np.quantile(lengths, [0.25, 0.5, 0.75]))
                                 if len(lengths) else (0.0, 0.0, 0.0)),
            "density": self.num_interactions / max(1, self.num_users * self.num_items),
        }
        for name, f in self.attributes.items():
            if f.kind == "categorical":
                out[f"attr:{name}"] = (f"{f.num_values} values, {float(f.counts()[1:].mean()):.2f} per item, "
                                       f"{int((f.counts()[1:] == 0).sum())} items without")
            else:
                out[f"attr:{name}"] = f"numeric, {int((f.counts()[1:] > 0).sum())} items with a value"
        return out

    def __repr__(self) -> str:
        attrs = f", attributes={list(self.attributes)}" if self.attributes else ""
        return (f"SequenceDataset({self.name!r}: {self.num_users} users, {self.num_items} items, "
                f"{self.num_interactions} interactions{attrs})")


def _natural_order(vocab: Sequence[str]) -> np.ndarray:
    """Codes ``1..len(vocab)-1`` of ``vocab`` (``vocab[0]`` is padding) in the natural
    order of their tokens (:func:`_natural`, stable): sorted in C++ when every token's
    class is plain, else by Python's own ``int()``."""
    tokens = vocab[1:] if isinstance(vocab, list) else list(vocab)[1:]
    try:
        order = _engine.natural_order(tokens)
    except (UnicodeEncodeError, TypeError):  # a str with lone surrogates has no UTF-8 form
        order = None
    if order is None:
        return np.asarray(sorted(range(1, len(tokens) + 1), key=lambda i: _natural(tokens[i - 1])), np.int64)
    return order + 1


def _natural(token: str):
    try:
        return (0, int(token), "")
    except ValueError:
        return (1, 0, token)


def _arrow_column(table, field: str, path: Path):
    """One column of a pyarrow table as a single array, refusing missing values."""
    column = table.column(field).combine_chunks()
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column {field!r}, row {row} is missing (null)")
    return column


def _is_missing(value) -> bool:
    # None, float NaN (pandas' missing string), pandas.NA and NaT, without importing pandas.
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return type(value).__name__ in ("NAType", "NaTType")


def _id_array(values, name: str, label: str) -> np.ndarray:
    """Raw ids as a 1-D array of one kind that np.unique can sort: integers or strings.

    Object arrays (pandas' string and mixed columns) are checked element by element, so a
    missing value or a mix of kinds is named instead of failing inside the sort.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{name}: {label} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)  # np.asarray([]) is float64: no id of either kind
    kind = arr.dtype.kind
    if kind in "iuU":
        return arr
    if kind == "S":
        return _id_array([_decode_id(v, name, label, i) for i, v in enumerate(arr)], name, label)
    if kind == "f":
        raise DataError(f"{name}: {label} must hold integer or string ids, got floats "
                        "(a missing value makes pandas store ids as floats)")
    if kind != "O":
        raise DataError(f"{name}: {label} must hold integer or string ids, got dtype {arr.dtype}")
    is_str = np.fromiter((isinstance(v, str) for v in arr), bool, len(arr))
    is_int = np.fromiter((isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in arr),
                         bool, len(arr))
    bad = np.flatnonzero(~(is_str | is_int))
    if len(bad):
        i = int(bad[0])
        v = arr[i]
        what = "a missing id" if _is_missing(v) else f"a {type(v).__name__}, not an integer or string id"
        raise DataError(f"{name}: {_at(label, i)} = {v!r} is {what}")
    if is_str.any() and is_int.any():
        i, j = int(np.argmax(is_int)), int(np.argmax(is_str))
        raise DataError(f"{name}: {label} mixes integer and string ids ({_at(label, i)} = {arr[i]!r}, "
                        f"{_at(label, j)} = {arr[j]!r}); convert the ids to one type")
    if is_str.all():
        return arr.astype(str)
    try:
        return arr.astype(np.int64)
    except OverflowError:
        i = next(k for k, v in enumerate(arr) if not -(2**63) <= v < 2**63)
        raise DataError(f"{name}: {_at(label, i)} = {arr[i]} does not fit in int64; pass ids as strings") from None


def _at(label: str, index) -> str:
    """Where an entry is: ``users[3]`` for an array, ``column 'user', row 3`` for a DataFrame."""
    return f"{label}, row {index}" if label.startswith("column ") else f"{label}[{index}]"


def _decode_id(value: bytes, name: str, label: str, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{name}: {_at(label, index)} = {value!r} is not valid UTF-8") from None


def _timestamp_array(values, name: str, label: str, n: int) -> np.ndarray:
    """Timestamps as finite float64 (datetime64 as its integer count); order is all they give."""
    raw = np.asarray(values)
    if raw.shape != (n,):
        raise DataError(f"{name}: {label} has shape {raw.shape}, expected ({n},)")
    if raw.dtype.kind == "M":
        nat = np.flatnonzero(np.isnat(raw))
        if len(nat):
            raise DataError(f"{name}: {_at(label, nat[0])} is a missing time (NaT)")
        ts = raw.astype("datetime64[ns]").astype(np.int64).astype(np.float64)
    elif raw.dtype.kind in "iuf":
        ts = raw.astype(np.float64)
    else:
        try:
            ts = raw.astype(np.float64)
        except (TypeError, ValueError):
            for i, v in enumerate(raw.tolist()):
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise DataError(f"{name}: {_at(label, i)} = {v!r} is not a number (give timestamps as "
                                    "numbers or datetime64)") from None
            raise DataError(f"{name}: {label} cannot be read as numbers (dtype {raw.dtype})") from None
    finite = np.isfinite(ts)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{name}: {_at(label, bad)} is not a finite number ({raw[bad]})")
    return ts


def _atomic_path(path: Path, suffix: str) -> Path:
    if path.is_dir():
        inner = path / f"{path.name}{suffix}"
        if not inner.exists():
            raise DataError(f"{path}: is a folder without {inner.name} in it")
        path = inner
    elif path.suffix != suffix:
        path = path.with_name(path.name + suffix) if not path.suffix else path.with_suffix(suffix)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return path


def _read_item2attributes(path: Path, item_tokens: list[str]) -> AttributeField:
    def parse_int(digits: str) -> int:
        # Python refuses to convert over 4300 digits with a message about sys settings.
        if len(digits) > 100:
            raise DataError(f"{path}: the integer {digits[:20]}... has {len(digits)} digits, too many for an id "
                            "(quote it to make it a string id)")
        return int(digits)

    def unique_keys(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise DataError(f"{path}: key {key!r} appears twice in one object; which one holds is ambiguous")
            out[key] = value
        return out

    try:
        with open(path, encoding="utf-8-sig") as fh:
            raw = json.load(fh, parse_int=parse_int, object_pairs_hook=unique_keys)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a JSON file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: byte {exc.start} is not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: the JSON is nested too deeply (expected {{item: [attribute, ...]}})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object {{item: [attribute, ...]}}, got {type(raw).__name__}")
    index = {t: i for i, t in enumerate(item_tokens) if i}
    per_item: list[list[str]] = [[] for _ in item_tokens]
    for key, values in raw.items():
        if key not in index:
            raise DataError(f"{path}: item {key!r} does not occur in the sequences (attribute file does not match)")
        if not isinstance(values, list):
            raise DataError(f"{path}: item {key!r}: expected a list of attributes, got {type(values).__name__}")
        for v in values:
            if isinstance(v, (bool, float)) or not isinstance(v, (int, str)):
                raise DataError(f"{path}: item {key!r}: attribute {v!r} is not an integer or string id")
        per_item[index[key]] = [str(v) for v in values]
    return categorical_from_lists("attributes", per_item)


def _read_atomic_items(path: Path, item_field: str, fields, item_tokens) -> dict[str, AttributeField]:
    table = _engine.read_atomic(os.fsencode(path), [] if fields is None else [item_field, *fields])
    cols = {c["name"]: c for c in table["columns"]}
    if item_field not in cols:
        raise DataError(f"{path}:1: missing column '{item_field}'")
    item_col = cols[item_field]
    if item_col["type"] != "token":
        raise DataError(f"{path}:1: field {item_field!r} must be of type token")
    raw_items = [item_col["vocab"][c] for c in item_col["codes"]]
    index = {t: i for i, t in enumerate(item_tokens) if i}
    # Items of the .item file that never occur in the interactions are left out;
    # dataset items absent from it get no value.
    rows = np.asarray([index.get(t, 0) for t in raw_items], np.int64)
    out = {}
    for name, col in cols.items():
        if name == item_field:
            continue
        indptr = col.get("indptr")
        if indptr is None:  # one value per row
            indptr = np.arange(len(rows) + 1, dtype=np.int64)
        if col["type"].startswith("token"):
            vocab = col["vocab"]
            per_item: list[list[str]] = [[] for _ in item_tokens]
            for r, item in enumerate(rows):
                if item:
                    per_item[item] = [vocab[c] for c in col["codes"][indptr[r] : indptr[r + 1]]]
            out[name] = categorical_from_lists(name, per_item)
        else:
            per_item_f: list[np.ndarray] = [np.zeros(0) for _ in item_tokens]
            for r, item in enumerate(rows):
                if item:
                    per_item_f[item] = col["values"][indptr[r] : indptr[r + 1]]
            counts = np.asarray([len(v) for v in per_item_f], np.int64)
            out[name] = AttributeField(name, "numeric", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                                       np.concatenate(per_item_f).astype(np.float64))
    return out


def _field_from_mapping(field: str, mapping: Mapping, item_tokens: list[str]) -> AttributeField:
    index = {t: i for i, t in enumerate(item_tokens) if i}
    per_item: list[list] = [[] for _ in item_tokens]
    numeric = True
    for raw_item, value in mapping.items():
        key = str(raw_item)
        if key not in index:
            raise DataError(f"attribute field {field!r}: item {raw_item!r} does not occur in the interactions")
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
        numeric &= all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       for v in values)
        per_item[index[key]] = values
    if numeric and any(isinstance(v, (float, np.floating)) for vals in per_item for v in vals):
        counts = np.asarray([len(v) for v in per_item], np.int64)
        values = np.asarray([float(v) for vals in per_item for v in vals], np.float64)
        return AttributeField(field, "numeric", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values)
    return categorical_from_lists(field, [[str(v) for v in vals] for vals in per_item])
