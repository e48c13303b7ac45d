"""The interface every next-item model implements, and its output type.

:class:`SequentialRecommender` is what the trainer, the evaluator and the CLI talk to:

* ``loss_terms(batch) -> LossOutput`` on a :class:`~seqrec.data.TrainBatch` (``loss``
  the total to minimise, ``terms`` the scalars worth logging); models implement
  :meth:`~SequentialRecommender.batch_loss` on its fields (padding masks from
  ``lengths``);
* ``score(item_seq, lengths, items=None)``: full-ranking or candidate scores;
* ``recommend(sequences, k)``: top-k for new sequences, batched, in dense ids;
* ``item_embeddings()``: the item table for approximate nearest-neighbour export.

Capabilities that only some models have are explicit: :attr:`has_interests` (then
:meth:`interests` returns ``[B, K, D]``), :attr:`uses_side_information` (their
item side tables are constructor inputs, saved in the state dict), :meth:`item_concepts` (SINE's
nearest prototype per item). A model whose score is a dot product of one user vector
with the item table implements :meth:`encode_last` and inherits :meth:`score`.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["LossOutput", "SequentialRecommender", "check_ids"]


@dataclasses.dataclass
class LossOutput:
    """What a training step of a model computes.

    Attributes:
        loss: scalar, the total training loss (what the trainer back-propagates).
        terms: named scalars that make up or explain the total (unweighted terms,
            counts); the trainer averages them over an epoch and logs them.
    """

    loss: Tensor
    terms: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def check_ids(name: str, ids: Tensor, shape: tuple[int, ...] | None = None, *,
              high: int | None = None) -> None:
    """Check an id tensor's dtype and shape and, with ``high``, its values.

    Args:
        name: the argument's name, used in the error.
        ids: int64 (or int32) tensor.
        shape: the shape it must have, or None.
        high: when given, every value must lie in ``[0, high]`` (0 is padding). One
            ``aminmax`` of the tensor (one device sync), skipped under
            ``torch.compile`` tracing; meant for training entry points, where an
            out-of-range id would otherwise surface as torch's bare
            ``IndexError: index out of range in self``.

    Raises:
        ValueError: naming ``name``, what was expected and what was found.
    """
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be an int64 (or int32) tensor, got {got}")
    if shape is not None and tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
    if high is None or ids.numel() == 0 or torch.compiler.is_compiling():
        return
    low_value, high_value = (int(v) for v in torch.aminmax(ids))
    if low_value < 0 or high_value > high:
        bad = low_value if low_value < 0 else high_value
        raise ValueError(f"{name} holds item id {bad} outside [0, num_items={high}] (0 is padding)")


def check_candidates(item_seq: Tensor, items: Tensor) -> None:
    """``score(item_seq, items=...)``'s candidates: [B, C] ids in range, one row per sequence."""
    check_ids("items", items)
    if items.dim() != 2 or items.size(0) != item_seq.size(0):
        raise ValueError(f"items must be [B={item_seq.size(0)}, C], got shape {tuple(items.shape)}")


class SequentialRecommender(nn.Module):
    """Base class of the next-item models (SASRec, DIF-SR, SINE, DSS).

    Subclasses set ``self.config`` (with ``num_items`` and ``max_len``) and implement
    :meth:`loss_terms` and :meth:`item_table`, plus either :meth:`encode_last` (and
    inherit the dot-product :meth:`score`) or their own :meth:`score`.
    """

    config: object
    #: True for models with several interest vectors per user (:meth:`interests`).
    has_interests: bool = False
    #: True for models that read item side information (tables given at construction).
    uses_side_information: bool = False
    #: False for models whose training step does not trace under ``torch.compile``
    #: (the trainer then refuses ``compile=True`` up front, saying ``eager_only_reason``).
    compiles_training_step: bool = True
    #: Why the training step does not compile ("" when it does, or no reason is given).
    eager_only_reason: str = ""
    #: Raw ids of items 1..num_items (a :class:`~seqrec.saved.ItemVocab`), or None: set
    #: by :meth:`set_item_vocab`, :meth:`save_pretrained` and ``seqrec.from_pretrained``;
    #: what :meth:`recommend_raw` maps through.
    item_vocab = None
    #: Parameter names that changed (old prefix -> new prefix): checkpoints written before
    #: load under the new names, by ``load_state_dict`` and by ``load_pretrained``.
    RENAMED_PREFIXES: dict[str, str] = {}

    @property
    def uses_negative_log_q(self) -> bool:
        """True when the training loss is a sampled softmax that applies the log-Q
        correction of the batch's ``features["negative_log_q"]`` (the trainer then asks the
        data side for it)."""
        return getattr(self.config, "loss", None) == "sampled"

    # ------------------------------------------------------------------ to implement
    def item_table(self) -> nn.Embedding:
        """The item embedding table whose rows score items ([num_items + 1, D], row 0 padding)."""
        raise NotImplementedError(f"{type(self).__name__} must implement item_table()")

    def encode_last(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The user vector after the most recent item of each row: [B, D] (0 for an
        empty row). Its dot product with the item table is :meth:`score`."""
        raise NotImplementedError(f"{type(self).__name__} scores with its own score(); it has no single "
                                  "last-position vector")

    def batch_loss(self, input_ids: Tensor, target_ids: Tensor, negative_ids: Tensor | None = None, *,
                   lengths: Tensor | None = None, features: Mapping[str, Tensor] | None = None,
                   **options) -> LossOutput:
        """What :meth:`loss_terms` computes, from the batch's fields: ``lengths`` [B]
        (None: taken from the zeros of ``input_ids``) builds the padding mask,
        ``features`` holds the batch's per-position side features (unused by models
        without side information), ``options`` are model-specific (DSS's ``split``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement batch_loss()")

    # ------------------------------------------------------------------ capabilities
    def interests(self, item_seq: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The K interest vectors of each sequence, [B, K, D] (models with
        :attr:`has_interests`)."""
        raise NotImplementedError(f"{type(self).__name__} has a single interest per user")

    def attach_dataset(self, dataset) -> None:
        """Take the side information the model uses from ``dataset``; a no-op for models
        without side information (:attr:`uses_side_information` False)."""

    def item_concepts(self) -> Tensor | None:
        """For models with a pool of concept prototypes (SINE): each item's nearest
        prototype, [num_items] (item ids 1..num_items); None for the others."""
        return None

    # ------------------------------------------------------------------ shared
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self.RENAMED_PREFIXES.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_ids(self, name: str, ids: Tensor, shape: tuple[int, ...] | None = None) -> None:
        """:func:`check_ids` against this model's ``num_items`` (values included)."""
        check_ids(name, ids, shape, high=self.config.num_items)

    def loss_terms(self, batch, target_ids: Tensor | None = None, negative_ids: Tensor | None = None,
                   **options) -> LossOutput:
        """The training loss of a batch and its named terms (see :class:`LossOutput`).

        Args:
            batch: a :class:`~seqrec.data.TrainBatch` (what the trainer passes: its
                ``lengths`` give the padding mask, its ``features`` the side features),
                or the input ids [B, n] themselves, with ``target_ids`` and
                ``negative_ids`` given beside them (lengths then come from the zeros).
            options: model-specific keywords, passed to :meth:`batch_loss`.
        """
        if isinstance(batch, Tensor):
            if target_ids is None:
                raise ValueError("loss_terms(input_ids, target_ids, ...) needs target_ids; or pass a TrainBatch")
            return self.batch_loss(batch, target_ids, negative_ids, **options)
        if target_ids is not None or negative_ids is not None:
            raise ValueError("loss_terms(batch) takes the targets and negatives from the batch, not beside it")
        fields = ("input_ids", "target_ids", "negative_ids", "lengths")
        missing = [f for f in fields if not hasattr(batch, f)]
        if missing:
            raise ValueError(f"loss_terms: batch must be a TrainBatch or an input_ids tensor, got "
                             f"{type(batch).__name__} without {missing}")
        return self.batch_loss(batch.input_ids, batch.target_ids, batch.negative_ids, lengths=batch.lengths,
                               features=getattr(batch, "features", None), **options)

    def compiled_step_options(self, batch) -> dict[str, object]:
        """Keyword options of :meth:`loss_terms` that a compiled training step takes from
        outside its graph (``TrainConfig(compile=True)``: the trainer calls the compiled
        ``loss_terms(batch, **model.compiled_step_options(batch))``): what the step draws
        that cannot trace, e.g. a corruption by an op whose seed is a Python int. Eager
        steps do not call it. Default: none."""
        return {}

    def sampled_negatives(self, negative_ids: Tensor | None, shape: tuple[int, ...],
                          features: Mapping[str, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """The checked negatives of a sampled softmax, ``[B, n, m]`` (``[B, n]`` is m = 1),
        and their log-Q correction ``features["negative_log_q"]`` in the same shape (None
        when the batch carries none: no correction)."""
        from .losses import NEGATIVE_LOG_Q

        if negative_ids is None:
            raise ValueError(f'negative_ids is required when config.loss == "sampled": {type(self).__name__}\'s '
                             "sampled softmax needs negative_ids [B, n, m]")
        self.check_ids("negative_ids", negative_ids)
        if negative_ids.dim() == 2:
            negative_ids = negative_ids.unsqueeze(-1)
        if negative_ids.dim() != 3 or tuple(negative_ids.shape[:2]) != tuple(shape):
            raise ValueError(f"negative_ids must be [B, n, m] or [B, n] with [B, n] = {list(shape)}, "
                             f"got {tuple(negative_ids.shape)}")
        log_q = features.get(NEGATIVE_LOG_Q) if features else None
        if log_q is not None:
            if not isinstance(log_q, Tensor) or not log_q.is_floating_point() \
                    or log_q.numel() != negative_ids.numel():
                got = tuple(log_q.shape) if isinstance(log_q, Tensor) else type(log_q).__name__
                raise ValueError(f"features[{NEGATIVE_LOG_Q!r}] must be a float tensor shaped like negative_ids "
                                 f"{tuple(negative_ids.shape)}, got {got}")
            log_q = log_q.reshape(negative_ids.shape)
        return negative_ids, log_q

    def loss(self, batch, target_ids: Tensor | None = None, negative_ids: Tensor | None = None,
             **options) -> Tensor:
        """The scalar training loss, ``loss_terms(...).loss``."""
        return self.loss_terms(batch, target_ids, negative_ids, **options).loss

    def score(self, item_seq: Tensor, lengths: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """Next-item scores from the last position (the most recent item).

        Args:
            item_seq: [B, n] left-padded item ids.
            lengths: optional [B] real lengths.
            items: optional [B, C] candidate ids; None scores every item.

        Returns:
            [B, num_items + 1] with column 0 (padding) = -inf, or [B, C] with -inf where
            a candidate is 0. Dropout follows the module mode: call ``eval()`` first.
        """
        if items is not None:
            check_candidates(item_seq, items)
        last = self.encode_last(item_seq, lengths)  # [B, D]
        table = self.item_table()
        if items is None:
            scores = last @ table.weight.t()  # [B, V+1]
            pad = torch.arange(scores.size(1), device=scores.device) == 0
            return scores.masked_fill(pad, float("-inf"))
        scores = torch.bmm(table(items), last.unsqueeze(-1)).squeeze(-1)  # [B, C]
        return scores.masked_fill(items == 0, float("-inf"))

    def item_embeddings(self) -> Tensor:
        """Item embedding table [num_items + 1, D] (row 0 = padding), detached.

        Scores are dot products with these rows (SINE's ``merge="max"`` and DSS's
        log-sum-exp over interests apply them per interest vector), so they serve as-is
        for inner-product approximate nearest-neighbour search (``.cpu().numpy()``).
        """
        return self.item_table().weight.detach()

    @torch.no_grad()
    def user_embedding(self, sequences: Tensor | Sequence[Sequence[int]], batch_size: int = 1024) -> Tensor:
        """The user side of the scores, for approximate nearest-neighbour search against
        :meth:`item_embeddings`, in eval mode, batched.

        Args:
            sequences: as :meth:`recommend` (dense ids; the last ``max_len`` are encoded).

        Returns:
            Models with one user vector (SASRec, S3-Rec fine-tuned, DIF-SR): the last
            hidden state, [B, D]; its dot products with the item rows are :meth:`score`.
            Models with :attr:`has_interests` (SINE, DSS): the K interest vectors,
            [B, K, D] (their scores merge the K dot products: SINE by its ``merge``, DSS
            by log-sum-exp).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        history = self._history_tensor(sequences).to(self.item_embeddings().device)[:, -self.config.max_len:]
        encode = self.interests if self.has_interests else self.encode_last
        was_training = self.training
        self.eval()
        try:
            return torch.cat([encode(history[start : start + batch_size])
                              for start in range(0, max(history.size(0), 1), batch_size)])
        finally:
            self.train(was_training)

    def set_item_vocab(self, vocab) -> None:
        """Attach the raw ids of items 1..num_items: a :class:`~seqrec.data.SequenceDataset`,
        a :class:`~seqrec.saved.ItemVocab` or a list of raw ids in dense-id order."""
        from ..saved import ItemVocab

        if hasattr(vocab, "item_tokens"):
            vocab = ItemVocab.from_dataset(vocab)
        elif not isinstance(vocab, ItemVocab):
            vocab = ItemVocab(vocab)
        if len(vocab) != self.config.num_items:
            raise ValueError(f"item vocabulary has {len(vocab)} items, the model {self.config.num_items}")
        self.item_vocab = vocab

    def save_pretrained(self, folder, *, vocab=None, evaluation=None):
        """Write this model as a self-contained folder (config, safetensors weights, item
        vocabulary, side tables, evaluation card); see :func:`seqrec.saved.save_pretrained`.
        Load it with ``seqrec.from_pretrained(folder)``."""
        from ..saved import save_pretrained

        return save_pretrained(self, folder, vocab=vocab, evaluation=evaluation)

    def recommend_raw(self, sequences, k: int = 10, exclude=None, unknown: str = "skip",
                      batch_size: int = 1024) -> tuple[list[list[str]], list[list[float]]]:
        """Top-k for new users given in raw item ids, answered in raw item ids.

        Args:
            sequences: a list of lists of raw item ids (as in the data: strings, or
                ints meaning their decimal text), oldest first.
            k: 1 <= k <= num_items.
            exclude: raw ids never to recommend to anyone (out of stock), besides each
                row's own history; None = none.
            unknown: ``"skip"`` drops raw ids the vocabulary does not hold (a new item;
                a row left empty gets the model's answer for an empty history);
                ``"error"`` raises ValueError naming the row, position and id. Applies to
                ``exclude`` too.

        Returns:
            ``(items, scores)``: per row, up to k raw ids best first and their scores
            (fewer than k when the exclusions leave fewer items).
        """
        if self.item_vocab is None:
            raise ValueError("recommend_raw needs the item vocabulary: load the model with seqrec.from_pretrained, "
                             "or call model.set_item_vocab(dataset) first")
        vocab = self.item_vocab
        rows = vocab.dense(sequences, unknown)
        excluded = None
        if exclude is not None:
            if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Iterable):
                raise ValueError(f"exclude must be a set or list of raw item ids, got {type(exclude).__name__}")
            excluded = torch.tensor(vocab.dense([list(exclude)], unknown, what="exclude")[0], dtype=torch.int64)
        ids, scores = self.recommend(rows, k, batch_size=batch_size, exclude_items=excluded)
        items, values = [], []
        for id_row, score_row in zip(ids.tolist(), scores.tolist()):
            kept = [(i, s) for i, s in zip(id_row, score_row) if i != 0]
            items.append(vocab.raw(i for i, _ in kept))
            values.append([s for _, s in kept])
        return items, values

    @torch.no_grad()
    def recommend(
        self,
        sequences: Tensor | Sequence[Sequence[int]],
        k: int = 10,
        exclude_history: bool = True,
        batch_size: int = 1024,
        exclude_items: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Top-k next items for new sequences, in eval mode, batched.

        Args:
            sequences: a list of variable-length lists of DENSE item ids (1..num_items,
                oldest first), or a [B, L] int tensor left-padded with 0. Only the most
                recent ``max_len`` items are encoded.
            k: 1 <= k <= num_items.
            exclude_history: drop every item of the whole given sequence (not only the
                encoded window) from the candidates.
            batch_size: rows encoded at once.
            exclude_items: dense ids never recommended to any row (out of stock),
                besides the history; None = none.

        Returns:
            ``(item_ids [B, k] int64, scores [B, k])`` on the model's device, best
            first, ranked by :meth:`score` (so by each model's merge rule). Slots with
            no admissible item left have id 0 and score -inf. Ids are the model's dense
            ids: map them back with the dataset's id map to get original ids.
        """
        num_items = self.config.num_items
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_items:
            raise ValueError(f"k must be an int in [1, num_items={num_items}], got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        weight = self.item_embeddings()
        history = self._history_tensor(sequences).to(weight.device)  # [B, L] left-padded
        if exclude_items is not None:
            exclude_items = torch.as_tensor(exclude_items, device=weight.device)
            check_ids("exclude_items", exclude_items, high=num_items)
            if exclude_items.dim() != 1:
                raise ValueError(f"exclude_items must be a 1-D list of item ids, got shape {tuple(exclude_items.shape)}")
        ids = torch.zeros(history.size(0), k, dtype=torch.int64, device=weight.device)
        scores = torch.full((history.size(0), k), float("-inf"), dtype=weight.dtype, device=weight.device)
        was_training = self.training
        self.eval()
        try:
            for start in range(0, history.size(0), batch_size):
                rows = history[start : start + batch_size]
                batch_scores = self.score(rows[:, -self.config.max_len :])
                if exclude_history:
                    batch_scores.scatter_(1, rows, float("-inf"))  # column 0 is -inf anyway
                if exclude_items is not None:
                    batch_scores[:, exclude_items] = float("-inf")
                top_scores, top_ids = batch_scores.topk(k, dim=1)
                scores[start : start + batch_size] = top_scores
                empty = top_scores == float("-inf")  # fewer than k admissible items
                ids[start : start + batch_size] = top_ids.masked_fill(empty, 0)
        finally:
            self.train(was_training)
        return ids, scores

    def _history_tensor(self, sequences: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Validated [B, L] int64 left-padded tensor (L >= 1) of the given sequences."""
        num_items = self.config.num_items
        if isinstance(sequences, Tensor):
            dtype = sequences.dtype
            if sequences.dim() != 2 or dtype.is_floating_point or dtype == torch.bool:
                raise ValueError(
                    "sequences must be a [B, L] integer tensor or a list of lists, got "
                    f"{sequences.dtype} {tuple(sequences.shape)}"
                )
            history = sequences.to(torch.int64)
            if history.numel() and (history.min() < 0 or history.max() > num_items):
                raise ValueError(f"sequences hold ids outside [0, num_items={num_items}]")
            real = history != 0
            if bool((real[:, :-1] & ~real[:, 1:]).any()):
                raise ValueError("sequences tensor must be LEFT-padded with 0 (no 0 after an item)")
            if history.size(1) == 0:
                history = torch.zeros(history.size(0), 1, dtype=torch.int64)
            return history
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
            raise ValueError(
                f"sequences must be a list of lists of item ids or a tensor, got {type(sequences).__name__}"
            )
        lengths = []
        for row, seq in enumerate(sequences):
            try:
                lengths.append(len(seq))
            except TypeError:
                raise ValueError(
                    f"sequences[{row}] must be a list of item ids, got {type(seq).__name__}"
                ) from None
        width = max(lengths, default=0) or 1
        history = torch.zeros(len(lengths), width, dtype=torch.int64)
        if sum(lengths):
            try:
                flat = torch.as_tensor(list(itertools.chain.from_iterable(sequences)))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"sequences must hold integer item ids: {exc}") from None
            if flat.dtype.is_floating_point or flat.dtype == torch.bool:
                raise ValueError(f"sequences must hold integer item ids, got {flat.dtype}")
            lengths_t = torch.tensor(lengths)
            if bool(((flat < 1) | (flat > num_items)).any()):
                bad = int(((flat < 1) | (flat > num_items)).nonzero()[0])
                row = int((torch.cumsum(lengths_t, 0) <= bad).sum())
                raise ValueError(
                    f"sequences[{row}] holds item id {int(flat[bad])} outside "
                    f"[1, num_items={num_items}] (dense ids; 0 is padding)"
                )
            rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
            # Column of each item: left padding puts the last item of a row at width - 1.
            starts = torch.cumsum(lengths_t, 0) - lengths_t
            cols = torch.arange(flat.numel()) - torch.repeat_interleave(starts, lengths_t)
            cols = cols + torch.repeat_interleave(width - lengths_t, lengths_t)
            history[rows, cols] = flat.to(torch.int64)
        return history
