"""The public datasets ``seqrec data download NAME`` fetches, with pinned sizes and SHA-256.

Two sources:

* the S3-Rec preprocessing (Zhou et al., CIKM 2020): ``<name>.txt`` (one user per line,
  chronological item ids) and ``<name>_item2attributes.json`` from the ``data/`` folder of
  the authors' repository RUCAIBox/CIKM2020-S3Rec. Beauty, Sports, Toys, Yelp, LastFM.
* RecBole's dataset mirror: a zip of the atomic files ``.inter`` / ``.item`` / ``.user``.
  ml-100k, ml-1m.

Every file is saved under ``<to>/<NAME>/`` with the name seqrec's loaders look for
(``<NAME>/<NAME>.txt`` for S3-Rec text, ``<NAME>/<NAME>.inter`` for atomic files), so
``seqrec train --data <to>/<NAME>`` reads it.

The checksums of Beauty, LastFM and ml-100k are those of the files every result in
README.md was computed from (our ../shared/data copies; for ml-100k the files inside the
archive, which is checked member by member); Sports, Toys and Yelp are pinned to the
files of the authors' repository. ml-1m has no pinned checksum yet: we have no copy of it
to hash, and a download is refused unless the user accepts it unverified (``--no-verify``; the downloader then prints the size and SHA-256 it received,
to pin here).
"""
from __future__ import annotations

from dataclasses import dataclass, field

S3REC_BASE = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data/"
RECBOLE_BASE = "https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets/"


@dataclass(frozen=True)
class Pinned:
    """What a file must be: its size in bytes and SHA-256 (hex), or None when unknown."""

    size: int | None = None
    sha256: str | None = None

    @property
    def verifiable(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class RemoteFile:
    """One download. ``name``: the file name it is saved as in the dataset folder (for an
    archive, the archive's name while it is downloaded). ``members``: for a zip archive,
    the files taken out of it (by base name, wherever they sit in the archive) with what
    each must be; the archive itself is deleted once they are in place."""

    url: str
    name: str
    pinned: Pinned = Pinned()
    members: dict[str, Pinned] | None = None

    @property
    def verifiable(self) -> bool:
        """Whether every file this download leaves behind has a pinned checksum."""
        if self.members is not None:
            return self.pinned.verifiable or all(m.verifiable for m in self.members.values())
        return self.pinned.verifiable

    @property
    def outputs(self) -> list[str]:
        return list(self.members) if self.members is not None else [self.name]


@dataclass(frozen=True)
class DatasetSource:
    name: str
    format: str  # "s3rec" or "atomic": what `seqrec train --format` would say
    description: str
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)

    @property
    def verifiable(self) -> bool:
        return all(f.verifiable for f in self.files)


def _s3rec(name: str, remote_stem: str, description: str, txt: Pinned = Pinned(),
           attributes: Pinned = Pinned()) -> DatasetSource:
    return DatasetSource(name, "s3rec", description, (
        RemoteFile(S3REC_BASE + f"{remote_stem}.txt", f"{name}.txt", txt),
        RemoteFile(S3REC_BASE + f"{remote_stem}_item2attributes.json", f"{name}_item2attributes.json", attributes),
    ))


def _recbole(name: str, path: str, description: str, members: dict[str, Pinned]) -> DatasetSource:
    return DatasetSource(name, "atomic", description, (
        RemoteFile(RECBOLE_BASE + path, f"{name}.zip", Pinned(), members),
    ))


DATASETS: dict[str, DatasetSource] = {d.name: d for d in (
    # Hashes of ../shared/data/Beauty, the files our Beauty results come from.
    _s3rec("Beauty", "Beauty", "Amazon Beauty, S3-Rec preprocessing (5-core), brand + categories",
           Pinned(1090094, "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"),
           Pinned(305674, "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4")),
    # Sports, Toys, Yelp: hashes of the files in the authors' repository (master, commit
    # 2a81540), read from a snapshot of it; Beauty's and LastFM's there equal ours byte for byte.
    _s3rec("Sports", "Sports_and_Outdoors", "Amazon Sports and Outdoors, S3-Rec preprocessing",
           Pinned(1707483, "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"),
           Pinned(653780, "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b")),
    _s3rec("Toys", "Toys_and_Games", "Amazon Toys and Games, S3-Rec preprocessing",
           Pinned(922166, "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f"),
           Pinned(327536, "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0")),
    _s3rec("Yelp", "Yelp", "Yelp, S3-Rec preprocessing (business categories as attributes)",
           Pinned(1814224, "724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed"),
           Pinned(600360, "f25acd5e1e680e0b22fd4e3f4fb6be4b2a7461e9222610616e3e1ee6702dd58d")),
    # Hashes of ../shared/data/LastFM, the files our LastFM results come from.
    _s3rec("LastFM", "LastFM", "LastFM, S3-Rec preprocessing (artist tags as attributes)",
           Pinned(239312, "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802"),
           Pinned(524368, "a4ccd678dc9ff6d43fe5073f491db5c9b02eb98dfa4f8c0382913a784be217ef")),
    # Hashes of the atomic files in ../shared/data/ml-100k, those our ml-100k results come
    # from (RecBole's archive itself is not pinned: its members are).
    _recbole("ml-100k", "MovieLens/ml-100k.zip", "MovieLens 100K, RecBole atomic files (ratings, movies, users)", {
        "ml-100k.inter": Pinned(1979230, "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"),
        "ml-100k.item": Pinned(66632, "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"),
        "ml-100k.user": Pinned(22697, "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"),
    }),
    _recbole("ml-1m", "MovieLens/ml-1m.zip", "MovieLens 1M, RecBole atomic files (ratings, movies, users)",
             {"ml-1m.inter": Pinned(), "ml-1m.item": Pinned(), "ml-1m.user": Pinned()}),
)}


def find_dataset(name: str) -> DatasetSource:
    """The registry entry called ``name`` (case-insensitive); ValueError listing the known ones."""
    for key, source in DATASETS.items():
        if key.lower() == name.lower():
            return source
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
