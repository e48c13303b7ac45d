"""One config base (issue 28 item 3): the encoder's fields declared once, every field's
check and help in its metadata, one message format, presets of one type."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from seqrec.models import DSSConfig, S3RecConfig, SASRecConfig, SINEConfig
from seqrec.models.config import ConfigBase, EncoderConfig, Preset, cli_fields
from seqrec.models.difsr import PRESETS as DIFSR_PRESETS, DIFSRConfig
from seqrec.models.dss import PRESETS as DSS_PRESETS
from seqrec.models.s3rec import PRESETS as S3REC_PRESETS
from seqrec.models.sine import SINE_PRESETS

ENCODER_FIELDS = [f.name for f in dataclasses.fields(EncoderConfig)]


@pytest.mark.parametrize("cls", [SASRecConfig, S3RecConfig, DIFSRConfig, DSSConfig])
def test_encoder_configs_share_the_encoder_fields(cls):
    assert issubclass(cls, EncoderConfig)
    assert [f.name for f in dataclasses.fields(cls)][:len(ENCODER_FIELDS)] == ENCODER_FIELDS
    assert "__post_init__" not in vars(cls)  # one __post_init__, the base's


@pytest.mark.parametrize("cls", [SASRecConfig, S3RecConfig, DIFSRConfig, DSSConfig, SINEConfig])
def test_every_field_declares_its_check_and_help(cls):
    assert issubclass(cls, ConfigBase)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("seqrec")
        assert meta is not None and meta["help"], f"{cls.__name__}.{f.name}"
    assert all(f.metadata["seqrec"]["cli"] for f in cli_fields(cls))


@pytest.mark.parametrize("cls,name,value,message", [
    (SASRecConfig, "num_layers", 0, "SASRecConfig.num_layers must be an int >= 1, got 0"),
    (DIFSRConfig, "num_layers", 1.5, "DIFSRConfig.num_layers must be an int >= 1, got 1.5"),
    (DSSConfig, "hidden_dropout", -0.1, r"DSSConfig.hidden_dropout must be a number in \[0, 1\), got -0.1"),
    (S3RecConfig, "layer_norm_eps", 0.0, "S3RecConfig.layer_norm_eps must be a positive number, got 0.0"),
    (SINEConfig, "max_len", True, "SINEConfig.max_len must be an int >= 1, got True"),
])
def test_one_message_format(cls, name, value, message):
    extra = {"num_attributes": 2} if cls is S3RecConfig else {}
    with pytest.raises(ValueError, match=message):
        cls(num_items=5, **extra, **{name: value})


def test_numpy_integers_become_plain_ints():
    cfg = SASRecConfig(num_items=np.int64(7), hidden_size=np.int32(8), num_heads=2)
    assert type(cfg.num_items) is int and type(cfg.hidden_size) is int


def test_presets_are_one_type():
    for presets in (DIFSR_PRESETS, DSS_PRESETS, S3REC_PRESETS, SINE_PRESETS):
        assert presets and all(isinstance(p, Preset) for p in presets.values())
    assert DIFSRConfig.from_preset("difsr-beauty", num_items=3).hidden_size == 256


def test_train_help_states_each_default_once():
    """Issue 27 item 6: no "(default 4) (default: None)" and no option without help."""
    import re

    from seqrec.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    assert "default: None" not in text
    for action in train._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings[0]} has no help"
        helped = train._get_formatter()._get_help_string(action).replace("%(default)s", str(action.default))
        assert len(re.findall(r"\bdefault", helped)) <= 1, (action.option_strings[0], helped)
    assert "hidden size D (default: composed 64, difsr 256, dss 64, s3rec 64, sasrec 64, sine 64)" in " ".join(text.split())
