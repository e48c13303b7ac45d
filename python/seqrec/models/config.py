"""Model configs declared once: field checks as field metadata, one ``__post_init__``.

Every model config is a frozen dataclass of plain values whose fields say what they
accept (:func:`spec`): an int with a minimum, a probability, a positive number, one of a
few choices... :class:`ConfigBase` checks them all in one ``__post_init__`` with one
message format (``SASRecConfig.hidden_size must be an int >= 1, got 0``), then runs the
config's cross-field checks (:meth:`ConfigBase.validate`). The command line reads the
same metadata (:func:`cli_fields`, :func:`flag_name`; :mod:`seqrec.model_options`): a
flag per field, its type, its choices, each model's default and its help line come from
here, so they are stated once.

:class:`EncoderConfig` holds the fields of the Transformer encoder that SASRec, S3-Rec,
DIF-SR and DSS share (sizes, dropouts, init, activation, norm epsilon).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

__all__ = ["spec", "field_of", "ConfigBase", "EncoderConfig", "Preset", "cli_fields", "flag_name"]

_KINDS = ("int", "number", "probability", "positive", "choice", "bool", "any")


def spec(default: Any = dataclasses.MISSING, *, kind: str, help: str, minimum: float | None = None,
         maximum: float | None = None, below: float | None = None, above: float | None = None,
         choices: Sequence | None = None, optional: bool = False, cli: bool = True, flag: str | None = None,
         follows: str | None = None, several: type | None = None) -> Any:
    """A dataclass field with its check and help in its metadata.

    Args:
        default: the default (omit for a required field).
        kind: ``"int"`` (not a bool), ``"number"`` (finite int or float), ``"probability"``
            (a number in [0, 1)), ``"positive"`` (finite, > 0), ``"choice"`` (one of
            ``choices``), ``"bool"``, ``"any"`` (checked by the config's ``validate``).
        help: one line for the command line and the docs.
        minimum / maximum: inclusive bounds (int and number).
        below / above: exclusive bounds (number).
        optional: None is accepted too. The help says what None means as
            ``"(None: ...)"``; the command line shows that as the default.
        cli: whether the command line offers the field as a flag.
        flag: the flag's name without ``--`` when it is not the field's name with
            dashes (``hidden_dropout``: ``dropout``). Fields of several models that share
            a flag name share the flag. A bool field's flag switches it away from its
            default: ``--NAME`` for a False default, ``--no-NAME`` for a True one.
        follows: another field whose flag, when given, also sets this field unless this
            field's own flag is given (``attention_dropout`` follows ``hidden_dropout``).
        several: kind ``"any"`` fields given as one or several values on the command
            line (``int`` or ``float``): one value is stored as such, several as a tuple.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    meta = dict(kind=kind, help=help, minimum=minimum, maximum=maximum, below=below, above=above,
                choices=tuple(choices) if choices is not None else None, optional=optional, cli=cli, flag=flag,
                follows=follows, several=several)
    return dataclasses.field(default=default, metadata={"seqrec": meta})


def field_of(config_cls: type, name: str, **changes: Any) -> Any:
    """A field declared as ``config_cls``'s field ``name``: the same check, help and flag
    (so the command line shares the flag), with ``changes`` (``default=``, or any
    :func:`spec` keyword) applied. For configs that compose another model's parts."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if name not in fields or "seqrec" not in fields[name].metadata:
        raise ValueError(f"{config_cls.__name__} has no field {name!r} declared with spec()")
    field = fields[name]
    default = changes.pop("default", field.default)
    meta = dict(field.metadata["seqrec"])
    unknown = sorted(set(changes) - set(meta))
    if unknown:
        raise ValueError(f"field_of: unknown spec keyword(s) {unknown}")
    meta.update(changes)
    return dataclasses.field(default=default, metadata={"seqrec": meta})


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) or type(v).__name__ in ("int64", "int32")


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _expected(meta: dict) -> str:
    kind = meta["kind"]
    if kind == "int":
        text = "an int" + (f" >= {meta['minimum']}" if meta["minimum"] is not None else "")
        if meta["maximum"] is not None:
            text += f" and <= {meta['maximum']}"
    elif kind == "probability":
        text = "a number in [0, 1)"
    elif kind == "positive":
        text = "a positive number"
    elif kind == "number":
        lo = f"[{meta['minimum']}" if meta["minimum"] is not None else (
            f"({meta['above']}" if meta["above"] is not None else None)
        hi = f"{meta['maximum']}]" if meta["maximum"] is not None else (
            f"{meta['below']})" if meta["below"] is not None else None)
        if lo and hi:
            text = f"a number in {lo}, {hi}"
        elif lo:
            text = f"a number {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        elif hi:
            text = f"a number {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        else:
            text = "a finite number"
    elif kind == "choice":
        text = f"one of {meta['choices']}"
    elif kind == "bool":
        text = "a bool"
    else:
        text = "valid"
    return text + (" or None" if meta["optional"] else "")


def _ok(meta: dict, v: Any) -> bool:
    if v is None:
        return meta["optional"]
    kind = meta["kind"]
    if kind == "int":
        return _is_int(v) and (meta["minimum"] is None or v >= meta["minimum"]) and (
            meta["maximum"] is None or v <= meta["maximum"])
    if kind == "probability":
        return _is_number(v) and 0.0 <= v < 1.0
    if kind == "positive":
        return _is_number(v) and v > 0
    if kind == "number":
        return _is_number(v) and all((
            meta["minimum"] is None or v >= meta["minimum"], meta["maximum"] is None or v <= meta["maximum"],
            meta["above"] is None or v > meta["above"], meta["below"] is None or v < meta["below"]))
    if kind == "choice":
        return isinstance(v, str) and v in meta["choices"] or (not isinstance(v, str) and v in meta["choices"])
    if kind == "bool":
        return isinstance(v, bool)
    return True


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Checks every field declared with :func:`spec`, then :meth:`validate`.

    ``init_defaults`` / ``init_fixed``: fields that ``seqrec train --init CKPT`` takes
    from the checkpoint's config: the former unless given on the command line, the
    latter always (flags have no say: the checkpoint's weights were shaped by them).
    """

    init_defaults: ClassVar[tuple[str, ...]] = ()
    init_fixed: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            meta = f.metadata.get("seqrec")
            if meta is None:
                continue
            value = getattr(self, f.name)
            if not _ok(meta, value):
                self.fail(f.name, _expected(meta), value)
            if meta["kind"] == "int" and value is not None and not isinstance(value, int):
                self._set(f.name, int(value))  # a NumPy integer: stored as a plain int
        self.validate()

    def validate(self) -> None:
        """Cross-field checks (e.g. hidden_size divisible by num_heads); raise with
        :meth:`fail`."""

    @classmethod
    def unread_fields(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """The fields that a config of ``values`` (missing ones at their defaults) would
        not read, each with what would read it: a model of optional parts reads a part's
        fields only when that part is on. ``seqrec train`` refuses such a field given as
        a flag (it would change nothing); a preset's or a checkpoint's value is kept."""
        return {}

    def fail(self, name: str, expected: str, value: Any) -> None:
        raise ValueError(f"{type(self).__name__}.{name} must be {expected}, got {value!r}")

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field in ``validate`` (frozen dataclass)."""
        object.__setattr__(self, name, value)


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ConfigBase):
    """The Transformer encoder's fields (defaults = the S3-Rec authors' SASRec)."""

    # A checkpoint given to --init is an encoder of this shape (sizes the flags leave
    # unset default to it; widths and activation are its own).
    init_defaults: ClassVar[tuple[str, ...]] = ("hidden_size", "num_layers", "num_heads")
    init_fixed: ClassVar[tuple[str, ...]] = ("inner_size", "hidden_act", "layer_norm_eps")

    num_items: int = spec(kind="int", minimum=1, cli=False,
                          help="number of real items; ids 1..num_items, 0 is padding")
    max_len: int = spec(50, kind="int", minimum=1, cli=False, help="longest input (learned positions)")
    hidden_size: int = spec(64, kind="int", minimum=1, help="hidden size D")
    num_layers: int = spec(2, kind="int", minimum=1, help="Transformer blocks")
    num_heads: int = spec(2, kind="int", minimum=1, help="attention heads (must divide the hidden size)")
    inner_size: int | None = spec(None, kind="int", minimum=1, optional=True,
                                  help="feed-forward width (None: 4 x hidden size)")
    hidden_dropout: float = spec(0.5, kind="probability", flag="dropout",
                                 help="dropout on embeddings and sub-layer outputs")
    attention_dropout: float = spec(0.5, kind="probability", follows="hidden_dropout",
                                    help="dropout on attention probabilities")
    initializer_range: float = spec(0.02, kind="positive", cli=False, help="std of the normal init")
    hidden_act: str = spec("gelu", kind="choice", choices=("gelu", "relu"), cli=False,
                           help="feed-forward activation")
    layer_norm_eps: float = spec(1e-12, kind="positive", cli=False, help="layer-norm epsilon")

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            self.fail("hidden_size", f"divisible by num_heads={self.num_heads}", self.hidden_size)

    @property
    def ffn_size(self) -> int:
        """The feed-forward width actually used."""
        return 4 * self.hidden_size if self.inner_size is None else self.inner_size


@dataclasses.dataclass(frozen=True)
class Preset:
    """Named settings of a model: ``model`` fields of its config and ``train`` fields of
    :class:`~seqrec.train.TrainConfig`; explicit options override them."""

    model: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    help: str = ""


def cli_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of ``config_cls`` the command line offers (declared with ``cli=True``)."""
    return [f for f in dataclasses.fields(config_cls)
            if f.metadata.get("seqrec", {}).get("cli", False)]


def flag_name(field: dataclasses.Field) -> str:
    """The command-line flag of a field declared with :func:`spec`, without ``--``."""
    meta = field.metadata["seqrec"]
    name = meta["flag"] or field.name.replace("_", "-")
    if meta["kind"] == "bool" and meta["flag"] is None and field.default is True:
        return f"no-{name}"
    return name
