"""Self-contained models: ``save_pretrained`` / ``from_pretrained`` and the item vocabulary.

A saved model is a folder that needs neither the dataset nor pickle to load::

    config.json         format marker, model name and every config field, the SHA-256 of
                        each file below, seqrec and torch versions (checksummed JSON)
    model.safetensors   the state dict: parameters and persistent buffers, DIF-SR's
                        item -> attribute tables among them
    vocab.json          the raw id of every item: index i holds dense id i + 1
    evaluation.json     the protocol card of its evaluation: protocol descriptions and
                        test metrics of the run it came from (or "not evaluated")

Every file is written to a temporary name and renamed (:func:`seqrec.utils.atomic_write`);
``config.json`` is written last and holds the others' digests, so a save killed half way
leaves a folder whose files disagree with its config, which :func:`from_pretrained`
refuses, naming the file. Tensors are read with ``safetensors`` (no code runs on load),
JSON with :func:`json.loads`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .utils import ChecksumError, _unsealed, atomic_write, read_json, write_json

__all__ = ["ItemVocab", "save_pretrained", "from_pretrained", "export_run", "FORMAT"]

FORMAT = "seqrec-pretrained"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.json"
EVALUATION_NAME = "evaluation.json"


class ItemVocab:
    """Raw item ids <-> the model's dense ids (1..num_items; 0 is padding).

    Args:
        tokens: the raw id of each item, in dense-id order (``tokens[i]`` is item
            ``i + 1``): ``SequenceDataset.item_tokens[1:]``. Raw ids are strings, as
            the dataset stores them; ints are accepted and kept as their decimal text.

    Raises:
        ValueError: an empty or non-string/int token, or a token given twice.
    """

    def __init__(self, tokens: Iterable) -> None:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
            raise ValueError(f"item vocabulary must be a list of raw item ids, got {type(tokens).__name__}")
        self.tokens: tuple[str, ...] = tuple(_token(t, f"vocabulary[{i}]") for i, t in enumerate(tokens))
        self.index: dict[str, int] = {}
        for i, token in enumerate(self.tokens):
            if token in self.index:
                raise ValueError(f"item vocabulary: raw id {token!r} is given twice (items {self.index[token]} "
                                 f"and {i + 1})")
            self.index[token] = i + 1

    @classmethod
    def from_dataset(cls, dataset) -> "ItemVocab":
        """The vocabulary of a :class:`~seqrec.data.SequenceDataset`."""
        return cls(dataset.item_tokens[1:])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, ItemVocab) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"ItemVocab({len(self)} items)"

    def dense(self, sequences: Sequence[Sequence], unknown: str = "skip", what: str = "sequences") -> list[list[int]]:
        """Dense ids of raw-id rows; an unknown raw id is dropped (``"skip"``) or raises
        ValueError naming its row and position (``"error"``)."""
        if unknown not in ("skip", "error"):
            raise ValueError(f'unknown must be "skip" or "error", got {unknown!r}')
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
            raise ValueError(f"{what} must be a list of lists of raw item ids, got {type(sequences).__name__}")
        rows = []
        for r, seq in enumerate(sequences):
            if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable):
                raise ValueError(f"{what}[{r}] must be a list of raw item ids, got {type(seq).__name__}")
            row = []
            for j, raw in enumerate(seq):
                dense = self.index.get(_token(raw, f"{what}[{r}][{j}]"))
                if dense is None:
                    if unknown == "error":
                        raise ValueError(f"{what}[{r}][{j}]: unknown raw item id {raw!r} (not in the model's "
                                         f"vocabulary of {len(self)} items; unknown='skip' drops such ids)")
                    continue
                row.append(dense)
            rows.append(row)
        return rows

    def raw(self, dense: Iterable[int]) -> list[str]:
        """Raw ids of dense ids 1..num_items."""
        out = []
        for d in dense:
            d = int(d)
            if not 1 <= d <= len(self.tokens):
                raise ValueError(f"dense item id {d} outside [1, {len(self.tokens)}]")
            out.append(self.tokens[d - 1])
        return out


def _token(raw, where: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) and type(raw).__name__ not in ("int64", "int32", "str_"):
        raise ValueError(f"{where}: a raw item id must be a str or an int, got {type(raw).__name__} {raw!r}")
    token = str(raw)
    if token == "":
        raise ValueError(f"{where}: a raw item id cannot be empty")
    return token


# ---------------------------------------------------------------------------------------
# Saving

def _model_name(model: nn.Module) -> str:
    from .models.registry import MODELS

    for name, (config_cls, model_cls) in MODELS.items():
        if type(model) is model_cls and isinstance(model.config, config_cls):
            return name
    raise ValueError(f"save_pretrained: {type(model).__name__} is not one of seqrec's models "
                     f"({', '.join(sorted(MODELS))})")


def _evaluation_card(evaluation) -> dict:
    """The protocol card: a FitResult, a dict (JSON object) or None."""
    if evaluation is None:
        return {"evaluated": False, "note": "saved without an evaluation: its metrics and protocol are unknown"}
    if dataclasses.is_dataclass(evaluation) and hasattr(evaluation, "protocol_full"):  # a FitResult
        return {"evaluated": True, "best_epoch": evaluation.best_epoch, "best_valid": evaluation.best_valid,
                "test_full": evaluation.test_full, "protocol_full": evaluation.protocol_full,
                "test_sampled": evaluation.test_sampled, "protocol_sampled": evaluation.protocol_sampled}
    if isinstance(evaluation, Mapping):
        return {"evaluated": True, **evaluation}
    raise ValueError(f"evaluation must be a FitResult, a dict or None, got {type(evaluation).__name__}")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def save_pretrained(model: nn.Module, folder: str | Path, *, vocab=None, evaluation=None) -> Path:
    """Write ``model`` as a self-contained folder (see the module docstring).

    Args:
        model: a :class:`~seqrec.models.SequentialRecommender` (any device).
        folder: created if missing; a folder that holds files but no saved model is
            refused (nothing of the user's is overwritten); a saved model is replaced.
        vocab: the item vocabulary: a :class:`~seqrec.data.SequenceDataset`, an
            :class:`ItemVocab` or the raw ids of items 1..num_items; None uses
            ``model.item_vocab`` (set by :func:`from_pretrained` or
            ``model.set_item_vocab``). Required one way or the other.
        evaluation: the protocol card: a :class:`~seqrec.train.trainer.FitResult`, a
            JSON object, or None ("not evaluated").

    Returns:
        The folder's path.
    """
    from safetensors.torch import save as save_safetensors

    from . import __version__

    name = _model_name(model)
    item_vocab = _as_vocab(vocab, model)
    num_items = model.config.num_items
    if len(item_vocab) != num_items:
        raise ValueError(f"save_pretrained: the vocabulary has {len(item_vocab)} items, the model {num_items}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_pretrained: {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG_NAME).exists():
        raise ValueError(f"save_pretrained: {folder} holds files but no saved model; choose an empty or new folder")
    # Every tensor a CPU copy of its own: safetensors refuses views of shared storage.
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    blobs = {
        WEIGHTS_NAME: save_safetensors(state, metadata={"format": "pt", "model": name}),
        VOCAB_NAME: _sealed_json({"items": list(item_vocab.tokens)}),
        EVALUATION_NAME: _sealed_json(_evaluation_card(evaluation)),
    }
    for file, data in blobs.items():
        with atomic_write(folder / file, "wb") as fh:
            fh.write(data)
    write_json(folder / CONFIG_NAME, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": name,
        "config": dataclasses.asdict(model.config), "num_items": num_items,
        "files": {file: _digest(data) for file, data in blobs.items()},
        "seqrec_version": __version__, "torch_version": torch.__version__,
    })
    model.set_item_vocab(item_vocab)
    return folder


def _plain(value):
    """JSON for what an evaluation card may hold beside plain values: NumPy / torch scalars."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")


def _sealed_json(value: dict) -> bytes:
    from .utils import _sealed

    try:
        sealed = _sealed(value, default=_plain)
    except TypeError as exc:
        raise ValueError(f"save_pretrained: evaluation must hold JSON values: {exc}") from None
    return (json.dumps(sealed, indent=1) + "\n").encode()


def _as_vocab(vocab, model) -> ItemVocab:
    if vocab is None:
        if getattr(model, "item_vocab", None) is None:
            raise ValueError("save_pretrained needs the item vocabulary: pass vocab=dataset (or the raw ids of items "
                             "1..num_items), or call model.set_item_vocab(...) first")
        return model.item_vocab
    if isinstance(vocab, ItemVocab):
        return vocab
    if hasattr(vocab, "item_tokens"):  # a SequenceDataset
        return ItemVocab.from_dataset(vocab)
    return ItemVocab(vocab)


# ---------------------------------------------------------------------------------------
# Loading

def _read_checked(folder: Path, file: str, digests: Mapping) -> bytes:
    path = folder / file
    if file not in digests:
        raise ValueError(f"{folder / CONFIG_NAME}: lists no checksum for {file}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing from the saved model") from None
    if _digest(data) != digests[file]:
        raise ChecksumError(f"{path}: checksum mismatch: the file differs from the one {CONFIG_NAME} was saved with "
                            "(edited, damaged, or a save that did not finish); it cannot be trusted")
    return data


def _strict_json(data: bytes, where: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not a JSON file ({exc})") from None
    value, checked = _unsealed(value, where)
    if not checked:
        raise ChecksumError(f"{where}: has no checksum; a saved model's files always carry one")
    return value


def read_config(folder: str | Path) -> dict:
    """The checked ``config.json`` of a saved model folder."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (a saved model is a folder written by save_pretrained)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {folder} is not a saved seqrec model")
    config = _strict_json(path.read_bytes(), str(path))
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not a saved seqrec model (format {config.get('format')!r}, expected {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {config.get('format_version')!r}; this seqrec reads version "
                         f"{FORMAT_VERSION}")
    return config


def from_pretrained(folder: str | Path, *, backend: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_pretrained`: no dataset, no pickle.

    Every file's SHA-256 is checked against ``config.json`` (itself checksummed) before
    anything is built. The model comes back in eval mode, on ``device``, with its item
    vocabulary (``model.item_vocab``, for :meth:`recommend_raw`) and its evaluation card
    (``model.evaluation``).

    Raises:
        FileNotFoundError: no such folder, or a file of it is missing.
        ValueError: (:class:`~seqrec.utils.ChecksumError` among them) a file was
            changed after it was saved, or does not fit the model; names the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from .models.registry import build_model

    folder = Path(folder)
    config = read_config(folder)
    digests = config.get("files") or {}
    try:
        state = load_safetensors(_read_checked(folder, WEIGHTS_NAME, digests))
    except SafetensorError as exc:
        raise ValueError(f"{folder / WEIGHTS_NAME}: not a readable safetensors file ({exc})") from None
    vocab_json = _strict_json(_read_checked(folder, VOCAB_NAME, digests), str(folder / VOCAB_NAME))
    evaluation = _strict_json(_read_checked(folder, EVALUATION_NAME, digests), str(folder / EVALUATION_NAME))
    model = build_model(config["model"], backend=backend, **config["config"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{folder / WEIGHTS_NAME}: does not fit a {config['model']} of this config: {exc}") from None
    model.set_item_vocab(ItemVocab(vocab_json.get("items", ())))
    model.evaluation = evaluation
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------
# A CLI run folder -> a saved model

def export_run(run: str | Path, out: str | Path, *, data: str | None = None, format: str | None = None) -> Path:
    """Convert a ``seqrec train`` run folder (or its checkpoint.pt) into a saved model.

    The weights are the run's best (by validation), as ``seqrec evaluate`` reads them.
    The dataset is read once (from where the run read it, or ``data``) for the item
    vocabulary and the side tables of checkpoints that predate saving them; the saved
    model needs it no more. The evaluation card is the run's ``result.json`` (protocol
    and test metrics) when the run finished, else "not evaluated" with the reason.
    """
    from .data.loaders import load_dataset
    from .models.registry import build_model
    from .train.trainer import RESULT_NAME, load_checkpoint

    run = Path(run)
    state = load_checkpoint(run)
    if "train_config" not in state:
        raise ValueError(f"{run}: a pretraining checkpoint; fine-tune it first (seqrec train --model s3rec --init ...) "
                         "and export that run")
    spec = state["model_spec"]
    source = data if data is not None else spec["data"]["source"]
    dataset = load_dataset(source, format or spec["data"]["format"], kcore=spec["data"]["kcore"],
                           synthetic_size=(spec["data"]["synthetic_users"], spec["data"]["synthetic_items"]))
    trained_items = spec["config"].get("num_items")
    if trained_items != dataset.num_items:
        raise ValueError(f"{run}: the model was trained on {trained_items} items, the data ({source}) has "
                         f"{dataset.num_items}; export it with its own dataset (--data)")
    model = build_model(spec["name"], backend=spec.get("backend"), attributes=dataset, **spec["config"])
    model.load_state_dict(state["best_state"] or state["model"])
    folder = run if run.is_dir() else run.parent
    result_path = folder / RESULT_NAME
    if result_path.exists():
        result = read_json(result_path)
        card = {key: result.get(key) for key in ("best_epoch", "best_valid", "test_full", "protocol_full",
                                                 "test_sampled", "protocol_sampled")}
        card["run"] = {"model": spec, "train": result.get("train")}
        evaluation = card
    else:
        warnings.warn(f"{folder}: no {RESULT_NAME} (the run has not finished); the saved model carries no "
                      "evaluation", stacklevel=2)
        evaluation = None
    return save_pretrained(model, out, vocab=dataset, evaluation=evaluation)
