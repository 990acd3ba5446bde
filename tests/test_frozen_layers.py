"""Frozen lower encoder layers computed once: the split forward pass equals the whole one, and a fit that caches
them ends at the weights of the same fit without the cache."""

import pytest
import torch

import xfer
from xfer.fitting.strategies import make_plan
from xfer.models import build_text_model, encoder_layers, frozen_prefix, stacked_layers
from xfer.sources import load_source, resolve_source


@pytest.fixture(scope="module")
def minilm():
    hf_dir = load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir
    return hf_dir, build_text_model(hf_dir, 2, dropout=0.0, encoder_dropout=0.0).eval()


def test_split_forward_equals_the_whole(minilm):
    from transformers import AutoTokenizer

    hf_dir, model = minilm
    enc = AutoTokenizer.from_pretrained(str(hf_dir))(["a good film", "a long, slow and rather empty film"],
                                                     padding=True, return_tensors="pt")
    with torch.no_grad():
        whole = model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        for start in (1, 3, 5):
            hidden = encoder_layers(model.backbone, None, enc["attention_mask"], 0, start, enc["input_ids"])
            split = model({"hidden_states": hidden, "attention_mask": enc["attention_mask"], "start": start})
            assert torch.allclose(whole, split, atol=1e-5), start


def test_how_many_layers_can_be_cached(minilm, tmp_path):
    hf_dir, model = minilm
    cfg = xfer.FitConfig(data="x", top_blocks=2).resolved("text")
    names = make_plan("lp-ft", cfg).phases[1].trainable(model)
    assert frozen_prefix(model, names) == 4  # layers 4 and 5 train
    everything = {n for n, _ in model.named_parameters()}
    assert frozen_prefix(model, everything) == 0  # embeddings train
    noisy = build_text_model(hf_dir, 2, encoder_dropout=0.1)
    assert frozen_prefix(noisy, names) == 4  # frozen layers run without their dropout (set_trainable)


def test_frozen_layers_run_without_dropout_trained_ones_keep_it(minilm):
    """A frozen sub-network is a fixed feature extractor: no dropout in it; the layers that train keep theirs."""
    from transformers import AutoTokenizer

    from xfer.fitting.loop import set_trainable

    hf_dir, _ = minilm
    model = build_text_model(hf_dir, 2, dropout=0.0, encoder_dropout=0.1)
    cfg = xfer.FitConfig(data="x", top_blocks=2).resolved("text")
    set_trainable(model, make_plan("lp-ft", cfg).phases[1].trainable(model))
    layers = stacked_layers(model.backbone)
    assert not model.backbone.embeddings.training and not any(layer.training for layer in layers[:4])
    assert all(layer.training for layer in layers[4:]) and model.training
    enc = AutoTokenizer.from_pretrained(str(hf_dir))(["a good film"], return_tensors="pt")
    with torch.no_grad():  # the lower layers give the same output twice, the trained ones do not
        low = [encoder_layers(model.backbone, None, enc["attention_mask"], 0, 4, enc["input_ids"]) for _ in "ab"]
        top = [model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}) for _ in "ab"]
    assert torch.equal(*low) and not torch.equal(*top)


@pytest.mark.parametrize("strategy,options", [("lp-ft", {"top_blocks": 2, "lp_epochs": 1}),
                                              ("partial", {"partial_blocks": 3}),
                                              ("lp-ft", {"top_blocks": 2, "lp_epochs": 1, "encoder_dropout": 0.1})])
def test_cached_fit_ends_at_the_same_weights(tmp_path, monkeypatch, strategy, options):
    from test_api import _text_csv

    import xfer.fitting.runner as runner

    calls = []
    real = runner.frozen_layer_outputs
    monkeypatch.setattr(runner, "frozen_layer_outputs", lambda *a: calls.append(a[-1]) or real(*a))

    data = _text_csv(tmp_path / "reviews.csv")
    common = dict(data=str(data), strategy=strategy, epochs=2, batch_size=8, max_length=16, precision="no",
                  quiet=True, save=False, test_fraction=0.25, val_fraction=0.25, **options)
    cached = xfer.fit(cache_frozen_layers=True, **common)
    assert calls == [4 if strategy == "lp-ft" else 3] * 2  # train and validation sets, once for the whole phase
    plain = xfer.fit(cache_frozen_layers=False, **common)
    assert len(calls) == 2
    a, b = cached.model.state_dict(), plain.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert [r["val_accuracy"] for r in cached.history] == [r["val_accuracy"] for r in plain.history]


def test_too_many_top_blocks_names_the_option(minilm):
    _, model = minilm
    cfg = xfer.FitConfig(data="x", top_blocks=99).resolved("text")
    with pytest.raises(xfer.XferError, match=r"--top-blocks must be between 1 and \d+ for this model, got 99"):
        make_plan("lp-ft", cfg).phases[1].trainable(model)
