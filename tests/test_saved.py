"""Self-contained models (issue 24 item 3): save_pretrained / from_pretrained with config,
safetensors weights, item vocabulary, side tables and evaluation card; raw-id
recommendation for new users; user and item embeddings; `seqrec export`."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

import seqrec
from seqrec.saved import ItemVocab
from seqrec.utils import ChecksumError
from serving_models import MODEL_NAMES, NUM_ITEMS, build, dataset, histories

VOCAB = [f"sku-{i * 7}" for i in range(1, NUM_ITEMS + 1)]  # raw id of dense item i + 1


def _saved(name, tmp_path, **kwargs):
    model = build(name)
    folder = model.save_pretrained(tmp_path / name, vocab=VOCAB, **kwargs)
    return model, folder


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_gives_equal_scores_without_dataset_or_pickle(name, tmp_path, monkeypatch):
    model, folder = _saved(name, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "evaluation.json", "model.safetensors",
                                                       "vocab.json"]

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained unpickled something")
    # No pickle anywhere on the load path (torch.load included), and no dataset.
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("seqrec.data.synthetic", refuse)
    loaded = seqrec.from_pretrained(folder)
    monkeypatch.undo()
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    h = histories()
    torch.testing.assert_close(loaded.score(h[:, -model.config.max_len:]), model.score(h[:, -model.config.max_len:]),
                               rtol=0, atol=0)
    assert torch.equal(loaded.recommend(h, 10)[0], model.recommend(h, 10)[0])
    assert loaded.item_vocab == ItemVocab(VOCAB)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_difsr_attribute_tables_travel_with_the_model(tmp_path):
    model, folder = _saved("difsr", tmp_path)
    assert model.uses_side_information
    loaded = seqrec.from_pretrained(folder)
    assert loaded.has_attribute_tables
    assert torch.equal(loaded._attr_0, model._attr_0)
    assert torch.equal(loaded._attr_0, torch.from_numpy(dataset().attributes["category"].padded()).long())


def test_evaluation_card_is_saved(tmp_path):
    card = {"protocol_full": "split=leave-one-out; ranking=full", "test_full": {"NDCG@10": 0.25}}
    _, folder = _saved("sasrec", tmp_path, evaluation=card)
    loaded = seqrec.from_pretrained(folder)
    assert loaded.evaluation == {"evaluated": True, **card}
    _, bare = _saved("sine", tmp_path)
    assert seqrec.from_pretrained(bare).evaluation["evaluated"] is False
    # Metrics as NumPy / torch scalars are written as numbers; other objects are refused.
    import numpy as np

    _, folder = _saved("dss", tmp_path, evaluation={"test_full": {"HR@10": np.float32(0.5), "MRR": torch.tensor(0.25)}})
    assert seqrec.from_pretrained(folder).evaluation["test_full"] == {"HR@10": 0.5, "MRR": 0.25}
    with pytest.raises(ValueError, match="evaluation must hold JSON values"):
        _saved("sasrec", tmp_path / "x", evaluation={"model": object()})


@pytest.mark.parametrize("file", ["model.safetensors", "vocab.json", "evaluation.json", "config.json"])
def test_tampered_file_is_refused(file, tmp_path):
    _, folder = _saved("sasrec", tmp_path)
    path = folder / file
    if file.endswith(".json"):
        value = json.loads(path.read_text())
        if file == "vocab.json":
            value["items"][0] = "sku-evil"
        elif file == "evaluation.json":
            value["evaluated"] = "yes"
        else:
            value["config"]["hidden_size"] = 16
        path.write_text(json.dumps(value))
    else:
        data = bytearray(path.read_bytes())
        data[-5] ^= 1  # one bit of one weight
        path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=file.replace(".", r"\.")):
        seqrec.from_pretrained(folder)


def test_json_without_checksum_and_missing_files_are_refused(tmp_path):
    _, folder = _saved("sasrec", tmp_path)
    value = json.loads((folder / "config.json").read_text())
    del value["checksum"]
    (folder / "config.json").write_text(json.dumps(value))
    with pytest.raises(ChecksumError, match="has no checksum"):
        seqrec.from_pretrained(folder)
    _, folder = _saved("dss", tmp_path)
    (folder / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        seqrec.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="not a saved seqrec model"):
        seqrec.from_pretrained(tmp_path)


def test_save_refuses_a_foreign_folder_and_a_vocab_that_does_not_fit(tmp_path):
    model = build("sasrec")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no saved model"):
        model.save_pretrained(tmp_path, vocab=VOCAB)
    with pytest.raises(ValueError, match="the vocabulary has 29 items, the model 30"):
        model.save_pretrained(tmp_path / "m", vocab=VOCAB[:-1])
    with pytest.raises(ValueError, match="given twice"):
        model.save_pretrained(tmp_path / "m", vocab=VOCAB[:-1] + VOCAB[:1])
    with pytest.raises(ValueError, match="needs the item vocabulary"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_save_replaces_a_saved_model_and_vocab_from_a_dataset(tmp_path):
    ds = dataset()
    first = build("sasrec", seed=1)
    first.save_pretrained(tmp_path / "m", vocab=ds)
    second = build("sasrec", seed=2)
    second.save_pretrained(tmp_path / "m", vocab=ds)
    loaded = seqrec.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.item_embeddings(), second.item_embeddings())
    assert loaded.item_vocab.tokens == tuple(ds.item_tokens[1:])
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temporary file left


# --------------------------------------------------------------------------- raw ids
def _raw(dense_rows):
    return [[VOCAB[i - 1] for i in row if i] for row in dense_rows]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_recommend_raw_equals_recommend_in_raw_ids(name, tmp_path):
    _, folder = _saved(name, tmp_path)
    model = seqrec.from_pretrained(folder)
    h = histories()
    items, scores = model.recommend_raw(_raw(h.tolist()), k=10)
    want_ids, want_scores = model.recommend(h, 10)
    assert items == _raw(want_ids.tolist())
    torch.testing.assert_close(torch.tensor(scores), want_scores)


def test_unknown_raw_ids_skip_or_error():
    model = build("sasrec")
    model.set_item_vocab(VOCAB)
    rows = [["sku-7", "new-item", "sku-14"], ["never-seen"]]
    items, _ = model.recommend_raw(rows, k=5, unknown="skip")
    assert items[0] == model.recommend_raw([["sku-7", "sku-14"]], k=5)[0][0]
    # A new user with no known item gets the answer for an empty history.
    assert items[1] == _raw(model.recommend([[]], 5)[0].tolist())[0]
    with pytest.raises(ValueError, match=r"sequences\[0\]\[1\]: unknown raw item id 'new-item'"):
        model.recommend_raw(rows, k=5, unknown="error")
    with pytest.raises(ValueError, match=r"exclude\[0\]\[1\]: unknown raw item id 'gone'"):
        model.recommend_raw([["sku-7"]], k=5, exclude=["sku-14", "gone"], unknown="error")
    with pytest.raises(ValueError, match='unknown must be "skip" or "error"'):
        model.recommend_raw(rows, k=5, unknown="ignore")
    with pytest.raises(ValueError, match="a raw item id must be a str or an int"):
        model.recommend_raw([[1.5]], k=5)


def test_recommend_raw_accepts_int_raw_ids_as_their_text():
    model = build("sasrec")
    model.set_item_vocab(list(range(101, 101 + NUM_ITEMS)))
    assert model.recommend_raw([[101, 102]], k=3) == model.recommend_raw([["101", "102"]], k=3)


def test_recommend_raw_excludes_given_items_besides_the_history():
    model = build("dss")
    model.set_item_vocab(VOCAB)
    rows = [["sku-7", "sku-14"], ["sku-21"]]
    plain, _ = model.recommend_raw(rows, k=5)
    gone = {plain[0][0], plain[1][1], "unknown-sku"}
    items, _ = model.recommend_raw(rows, k=5, exclude=gone)
    for row, history in zip(items, rows):
        assert not set(row) & gone and not set(row) & set(history) and len(row) == 5
    assert items[0] == [i for i in model.recommend_raw(rows, k=6)[0][0] if i not in gone][:5]
    # Fewer admissible items than k: the rows are shorter, never padded with ids.
    everything = set(VOCAB) - {"sku-7"}
    items, scores = model.recommend_raw([["sku-7"]], k=5, exclude=everything)
    assert items == [[]] and scores == [[]]


def test_recommend_raw_needs_a_vocabulary():
    with pytest.raises(ValueError, match="recommend_raw needs the item vocabulary"):
        build("sine").recommend_raw([["a"]], k=3)


def test_recommend_exclude_items_is_checked():
    model = build("sasrec")
    with pytest.raises(ValueError, match="exclude_items holds item id 31 outside"):
        model.recommend([[1, 2]], 3, exclude_items=[NUM_ITEMS + 1])


# --------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_user_embedding_scores_items_as_the_model_does(name):
    model = build(name)
    h = histories()
    window = h[:, -model.config.max_len:]
    user = model.user_embedding(h, batch_size=3)  # batched over rows
    items = model.item_embeddings()
    if model.has_interests:
        assert user.shape == (4, model.config.num_interests if name == "sine" else model.config.num_intentions, 8)
        torch.testing.assert_close(user, model.interests(window))
        per_interest = user @ items.t()  # [B, K, V + 1]
        if name == "dss":
            merged = per_interest.logsumexp(1)
        else:
            merged = model.encode(window).interest_weights.unsqueeze(-1).mul(user).sum(1) @ items.t()  # aggregate
    else:
        assert user.shape == (4, 8)
        merged = user @ items.t()
    scores = model.score(window)
    torch.testing.assert_close(merged[:, 1:], scores[:, 1:], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- CLI
def test_cli_export_converts_a_run_folder(tmp_path, capsys):
    from seqrec.cli import main

    run, out = tmp_path / "run", tmp_path / "model"
    assert main(["train", "--model", "sasrec", "--data", "synthetic", "--synthetic-users", "40",
                 "--synthetic-items", "25", "--epochs", "1", "--hidden-size", "8", "--num-layers", "1",
                 "--max-len", "6", "--sampled-negatives", "5", "--out", str(run), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    model = seqrec.from_pretrained(out)
    from seqrec.data import load_dataset
    from seqrec.train import load_checkpoint

    state = load_checkpoint(run)
    ds = load_dataset("synthetic", synthetic_size=(40, 25))
    assert model.item_vocab.tokens == tuple(ds.item_tokens[1:])
    for key, value in (state["best_state"] or state["model"]).items():
        assert torch.equal(model.state_dict()[key], value), key
    result = json.loads((run / "result.json").read_text())
    assert model.evaluation["test_full"] == result["test_full"]
    assert model.evaluation["protocol_full"] == result["protocol_full"]
    # Its raw-id recommendations are those of the dense model under the dataset's map.
    seq = ds.sequence(0)[-3:].tolist()
    items, _ = model.recommend_raw([ds.item_raw(seq)], k=5)
    assert items[0] == ds.item_raw(model.recommend([seq], 5)[0][0].tolist())


def test_cli_export_of_a_missing_run_is_an_error(tmp_path, capsys):
    from seqrec.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
    assert "seqrec export: error:" in capsys.readouterr().err
