"""The model options of the command line, derived from the model config fields.

Every field a model config declares with ``spec(..., cli=True)`` is a flag of the
commands that offer the model (``seqrec train``, ``seqrec pretrain``): its name, type,
choices, help and per-model default come from the field's metadata
(:func:`seqrec.models.config.spec`), so a field added to a config is a flag with no
change here or in ``cli.py``. Models whose configs have a field of the same flag name
share the flag (``--hidden-size``; ``--temperature`` is SINE's ``temperature`` and DSS's
``tau``); a flag given to a model that has no such field is refused.

A field's value is, highest first: its flag (or the flag of the field it ``follows``);
the ``--preset``'s; with ``--init``, the checkpoint's (``init_defaults``); the config's
default (or the command's, ``defaults``). The checkpoint's ``init_fixed`` fields win over all
of them. Presets and the
training settings of each model's paper are registered beside the model
(:data:`seqrec.models.registry.REGISTRY`).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping

from .models.config import Preset, cli_fields, flag_name
from .models.registry import REGISTRY

__all__ = ["ModelOptions", "defaults_text"]

# A field's help says what its None means as "(None: ...)": the help shows that as the default.
_NONE_MEANS = re.compile(r"\s*\(None: ([^)]*)\)")


def defaults_text(per_model: Mapping[str, object]) -> str:
    """"(default: 64)" when every model agrees, else "(default: difsr 256, sasrec 64, ...)"."""
    values = {m: v for m, v in per_model.items() if v is not None}
    if len(set(map(str, values.values()))) == 1:
        return f"(default: {next(iter(values.values()))})"
    return "(default: " + ", ".join(f"{m} {v}" for m, v in sorted(values.items())) + ")"


def _dest(flag: str) -> str:
    return flag.replace("-", "_")


class ModelOptions:
    """The model flags of one command.

    Args:
        models: ``{--model name: registry name of the model it builds}`` (``seqrec train
            --model s3rec`` fine-tunes a SASRec: ``{"s3rec": "sasrec"}``), in the order
            their flags are listed.
        defaults: ``{--model name: {field: value}}``: this command's defaults of fields,
            in place of the config's (``seqrec pretrain --model dss``: seq2seq weight 1);
            a preset, the checkpoint or a flag overrides them.
        skip: ``{--model name: field names}`` that are no flags of this command for that
            model (DSS pretraining has no next-item ``loss``).
        helps: ``{--model name: {field: help}}``: help texts for what a field means in
            this command, in place of the field's own.
    """

    def __init__(self, models: Mapping[str, str], *, defaults: Mapping[str, Mapping[str, object]] | None = None,
                 skip: Mapping[str, tuple[str, ...]] | None = None,
                 helps: Mapping[str, Mapping[str, str]] | None = None):
        self.models = dict(models)
        self.defaults = {m: dict(v) for m, v in (defaults or {}).items()}
        self.helps = {m: dict(v) for m, v in (helps or {}).items()}
        self.flags: dict[str, dict[str, dataclasses.Field]] = {}  # flag -> {model: its field}
        for model, built in self.models.items():
            for field in cli_fields(REGISTRY[built].config):
                if field.name not in (skip or {}).get(model, ()):
                    owners = self.flags.setdefault(flag_name(field), {})
                    if model in owners:  # one flag would set one of the two, silently
                        raise ValueError(f"--{flag_name(field)}: {REGISTRY[built].config.__name__} fields "
                                         f"{owners[model].name!r} and {field.name!r} share this flag; give one its "
                                         "own (spec(flag=...), field_of(..., flag=...))")
                    owners[model] = field

    def registration(self, model: str):
        return REGISTRY[self.models[model]]

    # ------------------------------------------------------------------ the parser
    def add_to(self, parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
        """Add every model flag to ``parser``: flags of one model (of several offered) in
        that model's group. Returns the groups by model, for options the caller adds."""
        groups = {}
        for model in self.models:
            if len(self.models) > 1 and any(set(owners) == {model} for owners in self.flags.values()):
                groups[model] = parser.add_argument_group(f"{self.registration(model).label} (--model {model})")
        for flag, per_model in self.flags.items():
            owners = set(per_model)
            target = groups[next(iter(owners))] if len(owners) == 1 and len(self.models) > 1 else parser
            target.add_argument(f"--{flag}", **self._argument(flag, per_model))
        return groups

    def _argument(self, flag: str, per_model: dict) -> dict:
        first = next(iter(per_model.values()))
        meta = first.metadata["seqrec"]
        kw = dict(default=None, dest=_dest(flag), help=self._help(per_model))
        if meta["kind"] == "bool":
            kw.update(action="store_const", const=not first.default)
        elif meta["several"] is not None:
            kw.update(type=meta["several"], nargs="+", metavar=_dest(flag).upper())
        elif meta["kind"] == "choice":
            kw.update(choices=sorted({c for f in per_model.values() for c in f.metadata["seqrec"]["choices"]}))
        else:
            kw.update(type=int if meta["kind"] == "int" else float)
        return kw

    def _help(self, per_model: dict) -> str:
        texts: dict[str, list[str]] = {}  # help -> the models whose field says it
        defaults = {}
        for model, field in per_model.items():
            meta = field.metadata["seqrec"]
            own = self.helps.get(model, {}).get(field.name, meta["help"])
            none_means = _NONE_MEANS.search(own)
            text = _NONE_MEANS.sub("", own)
            if meta["kind"] == "bool" and field.default is True:
                text = f"turns off {text}"
            for other in dataclasses.fields(self.registration(model).config):
                if other.metadata.get("seqrec", {}).get("follows") == field.name:
                    text += (f", and {other.metadata['seqrec']['help']} unless "
                             f"--{flag_name(other)} is given")
            texts.setdefault(text, []).append(model)
            default = self.defaults.get(model, {}).get(
                field.name, self.registration(model).defaults.model.get(field.name, field.default))
            defaults[model] = none_means.group(1) if default is None and none_means else default
        if len(texts) == 1:
            body = next(iter(texts))
        else:
            body = "; ".join(f"{'/'.join(sorted(models))}: {text}" for text, models in texts.items())
        if next(iter(per_model.values())).metadata["seqrec"]["kind"] == "bool":
            return body  # a switch: its default is off
        return f"{body} {defaults_text(defaults)}"

    def preset_help(self) -> str:
        """The presets of each model, for --preset's help."""
        return "; ".join(f"{model}: {', '.join(sorted(self.registration(model).presets))}"
                         for model in self.models if self.registration(model).presets)

    # ------------------------------------------------------------------ the values
    def preset(self, args) -> Preset:
        """The --preset of ``args.model`` (an empty one without --preset)."""
        name = getattr(args, "preset", None)
        if name is None:
            return Preset()
        presets = self.registration(args.model).presets
        if name in presets:
            return presets[name]
        owners = [m for m in self.models if name in self.registration(m).presets]
        if owners:
            raise ValueError(f"preset {name!r} is for --model {owners[0]}, not {args.model}")
        if not presets:
            raise ValueError(f"--preset: model {args.model!r} has no presets")
        raise ValueError(f"unknown {args.model} preset {name!r}; available: {sorted(presets)}")

    def train_defaults(self, args) -> dict:
        """The training settings of ``args.model`` when their flags are not given: its
        preset's, else its paper's (e.g. ``lr``, ``batch_size``, ``num_negatives``)."""
        return {**self.registration(args.model).defaults.train, **self.preset(args).train}

    def config(self, args, init_config: Mapping | None = None) -> dict:
        """The config fields ``args`` give ``args.model`` (flags, preset, --init checkpoint's
        config); the caller adds the dataset's (num_items, max_len, side information).

        Raises:
            ValueError: a flag of another model, a preset of another model, or a flag of
                a part of the model that this run leaves off (``unread_fields``).
        """
        registration = self.registration(args.model)
        given, foreign = {}, []
        for flag, per_model in self.flags.items():
            value = getattr(args, _dest(flag), None)
            if value is None:
                continue
            field = per_model.get(args.model)
            if field is None:
                foreign.append((flag, tuple(per_model)))
                continue
            if field.metadata["seqrec"]["several"] is not None:
                value = value[0] if len(value) == 1 else tuple(value)
            given[field.name] = value
        if getattr(args, "attributes", None) and registration.side_information is None:
            foreign.append(("attributes", tuple(m for m in self.models if self.registration(m).side_information)))
        if foreign:
            raise ValueError(self._foreign(foreign, args.model))
        preset = self.preset(args)
        for field in dataclasses.fields(registration.config):
            follows = field.metadata.get("seqrec", {}).get("follows")
            if follows is not None and field.name not in given and follows in given:
                given[field.name] = given[follows]
        init = dict(init_config or {})
        config_cls = registration.config
        config = {**self.defaults.get(args.model, {}), **{k: init[k] for k in config_cls.init_defaults if k in init},
                  **preset.model, **given,
                  **{k: init[k] for k in config_cls.init_fixed if k in init}}
        # A flag of a part this run leaves off would change nothing: refused, except a
        # weight of 0 (it says the term is off, as the part is).
        unread = config_cls.unread_fields(config)
        flags = {field.name: flag for flag, per_model in self.flags.items()
                 if (field := per_model.get(args.model)) is not None and getattr(args, _dest(flag), None) is not None}
        idle = [(flags[f.name], unread[f.name]) for f in dataclasses.fields(config_cls)  # in the config's order
                if f.name in flags and f.name in unread and not (f.name.endswith("_weight") and given[f.name] == 0)]
        if idle:
            raise ValueError("; ".join(f"--{flag} is read only with {reads}" for flag, reads in idle)
                             + f": this --model {args.model} run would not read "
                             + ("it" if len(idle) == 1 else "them") + " (switch that part on, or drop the flag)")
        return config

    def side_information(self, args, dataset) -> dict:
        """The config fields of the item attributes named by ``--attributes``, for the
        models that take item attributes (each says what none named means)."""
        take = self.registration(args.model).side_information
        return {} if take is None else take(dataset, getattr(args, "attributes", None) or ())

    @staticmethod
    def _foreign(flags: list[tuple[str, tuple]], model: str) -> str:
        by_owners: dict[tuple, list[str]] = {}
        for flag, owners in flags:
            by_owners.setdefault(owners, []).append(f"--{flag}")
        parts = [f"{', '.join(names)} {'is an option' if len(names) == 1 else 'are options'} of --model "
                 f"{'/'.join(sorted(owners))}" for owners, names in by_owners.items()]
        return f"{'; '.join(parts)}, not of --model {model}"
