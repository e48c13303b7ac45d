"""Item side information: one or more attribute fields per item."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AttributeField:
    """One field of item side information, indexed by dense item id.

    ``kind="categorical"``: item ``i`` has the attribute ids
    ``values[indptr[i]:indptr[i+1]]`` (ids ``1..num_values``; 0 is padding), so an item
    may have several values (genres, tags) or none. ``tokens[a]`` is the raw value of
    attribute id ``a``.

    ``kind="numeric"``: item ``i`` has the float values ``values[indptr[i]:indptr[i+1]]``
    (usually one; none when unknown). ``tokens`` is empty.

    Row 0 (the padding item) is always empty. ``indptr`` has ``num_items + 2`` entries.
    """

    name: str
    kind: str
    indptr: np.ndarray
    values: np.ndarray
    tokens: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in ("categorical", "numeric"):
            raise ValueError(f"attribute field {self.name!r}: kind must be 'categorical' or 'numeric'")
        if self.indptr.ndim != 1 or self.indptr[0] != 0 or self.indptr[-1] != len(self.values):
            raise ValueError(f"attribute field {self.name!r}: indptr does not describe values")
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError(f"attribute field {self.name!r}: indptr must be non-decreasing")
        if self.indptr[1] != 0:
            raise ValueError(f"attribute field {self.name!r}: the padding item 0 must have no values")
        if self.kind == "categorical" and len(self.values) and (
            self.values.min() < 1 or self.values.max() >= len(self.tokens)
        ):
            raise ValueError(f"attribute field {self.name!r}: attribute ids outside 1..{len(self.tokens) - 1}")

    @property
    def num_items(self) -> int:
        return len(self.indptr) - 2

    @property
    def num_values(self) -> int:
        """Number of distinct attribute ids (categorical fields), padding excluded."""
        return max(len(self.tokens) - 1, 0)

    def counts(self) -> np.ndarray:
        """Number of values of each item, ``[num_items + 1]``."""
        return np.diff(self.indptr)

    def padded(self, max_per_item: int | None = None) -> np.ndarray:
        """Values as a dense ``[num_items + 1, m]`` array padded with 0 (ids) or NaN (numbers).

        ``m`` is the largest number of values of one item, or ``max_per_item`` (keeping the
        first values of longer rows).
        """
        counts = self.counts()
        width = int(counts.max()) if max_per_item is None else int(max_per_item)
        width = max(width, 1)
        fill = 0 if self.kind == "categorical" else np.nan
        out = np.full((len(counts), width), fill, dtype=self.values.dtype)
        rows = np.repeat(np.arange(len(counts)), counts)
        cols = np.arange(len(self.values)) - np.repeat(self.indptr[:-1], counts)
        keep = cols < width
        out[rows[keep], cols[keep]] = self.values[keep]
        return out

    def multi_hot(self, dtype=np.float32) -> np.ndarray:
        """Categorical field as ``[num_items + 1, num_values + 1]`` indicators (column 0 unused)."""
        if self.kind != "categorical":
            raise ValueError(f"attribute field {self.name!r} is numeric; multi_hot needs a categorical field")
        out = np.zeros((self.num_items + 1, self.num_values + 1), dtype=dtype)
        rows = np.repeat(np.arange(self.num_items + 1), self.counts())
        out[rows, self.values] = 1
        return out

    def subset_items(self, kept_items: np.ndarray) -> "AttributeField":
        """The field for a dataset whose new item id ``j`` is old item ``kept_items[j-1]``."""
        old_rows = np.concatenate([[0], np.asarray(kept_items, dtype=np.int64)])
        counts = self.counts()[old_rows]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        take = np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in old_rows]) if len(
            old_rows
        ) else np.zeros(0, np.int64)
        return AttributeField(self.name, self.kind, indptr, self.values[take.astype(np.int64)], self.tokens)


def categorical_from_lists(name: str, per_item: list[list[str]]) -> AttributeField:
    """Build a categorical field from raw values per dense item id (``per_item[0]`` = padding).

    Attribute ids follow the natural order of the raw values (numeric when all are
    integers); duplicates within one item are dropped, first occurrence kept.
    """
    vocab = sorted({v for vals in per_item for v in vals}, key=_natural_key)
    ids = {v: i + 1 for i, v in enumerate(vocab)}
    indptr = [0]
    values: list[int] = []
    for vals in per_item:
        seen = set()
        for v in vals:
            if v not in seen:
                seen.add(v)
                values.append(ids[v])
        indptr.append(len(values))
    return AttributeField(
        name, "categorical", np.asarray(indptr, np.int64), np.asarray(values, np.int64), [""] + vocab
    )


def _natural_key(token: str):
    try:
        return (0, int(token), "")
    except ValueError:
        return (1, 0, token)
