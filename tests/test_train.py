"""The training loop and strategies: what is frozen stays frozen (weights and BatchNorm statistics)."""

import numpy as np
import pytest
import torch
from helpers import tensor_loaders, train_one_phase

from xfer.config import FitConfig
from xfer.fitting.loop import warmup_cosine
from xfer.fitting.strategies import make_plan
from xfer.models import block_groups, build_image_model


def _loaders(n=48):
    return tensor_loaders(n)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(model, strategy, **cfg):
    config = FitConfig(data="x", strategy=strategy, **cfg).resolved("image")
    plan = make_plan(strategy, config)
    phase = plan.phases[-1]
    before = _snapshot(model)
    train_one_phase(model, phase, channels_last=False)
    return before, _snapshot(model), phase.trainable(model)


def test_partial_changes_only_the_last_blocks_and_keeps_frozen_bn_statistics():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    before, after, trainable = _run(model, "partial", epochs=1, partial_blocks=2, lr=1e-2)
    groups = block_groups(model)
    last = {n for g in groups[-2:] for n in g}
    assert trainable == last | {"head.weight", "head.bias"}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Every trainable parameter moved; nothing of the frozen blocks moved, running statistics included.
    assert {"head.weight", "head.bias"} <= changed
    assert all(any(k.startswith(n.rsplit(".", 1)[0]) for n in last | {"head.weight"}) for k in changed)
    frozen_bn = [k for k in before if "running_mean" in k and not any(k.rsplit(".", 1)[0] == n.rsplit(".", 1)[0]
                                                                       for n in last)]
    assert frozen_bn and all(torch.equal(before[k], after[k]) for k in frozen_bn)


def test_full_fine_tuning_updates_bn_statistics():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    before, after, _ = _run(model, "full", epochs=1, lr=1e-3)
    assert not torch.equal(before["backbone.bn1.running_mean"], after["backbone.bn1.running_mean"])
    assert not torch.equal(before["backbone.conv_stem.weight"], after["backbone.conv_stem.weight"])


def test_head_only_phase_on_whole_model_leaves_backbone_untouched():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    config = FitConfig(data="x").resolved("image")
    phase = make_plan("linear-probe", config).phases[0]
    before = _snapshot(model)
    train_one_phase(model, phase)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_best_epoch_weights_are_kept():
    torch.manual_seed(0)
    model = build_image_model("resnet10t", num_classes=3)
    config = FitConfig(data="x", strategy="full", epochs=3, lr=1e-3).resolved("image")
    phase = make_plan("full", config).phases[0]
    seen = []
    states = []

    def on_epoch(rec, state):
        seen.append(rec.val_accuracy)
        states.append(_snapshot(model))

    train_one_phase(model, phase, on_epoch=on_epoch, channels_last=False)
    best = len(seen) - 1 - int(np.argmax(seen[::-1]))  # the last of equally good epochs
    final = _snapshot(model)
    assert all(torch.equal(final[k], states[best][k]) for k in final)


@pytest.mark.parametrize("patience,epochs_run", [(0, 3), (1, 2)])
def test_a_tie_keeps_the_later_epoch_and_early_stopping_needs_a_gain(monkeypatch, patience, epochs_run):
    import xfer.fitting.loop as loop

    monkeypatch.setattr(loop, "accuracy", lambda logits, loader: 0.5)  # every epoch validates the same
    torch.manual_seed(0)
    model = build_image_model("resnet10t", num_classes=3)
    config = FitConfig(data="x", strategy="full", epochs=3, lr=1e-3).resolved("image")
    states = []
    records = train_one_phase(model, make_plan("full", config).phases[0], channels_last=False, patience=patience,
                              on_epoch=lambda rec, state: states.append(_snapshot(model)))
    assert len(records) == epochs_run  # equal validation is no gain: patience 1 stops after the second epoch
    final = _snapshot(model)
    assert all(torch.equal(final[k], states[-1][k]) for k in final)
    assert not all(torch.equal(states[0][k], states[-1][k]) for k in final)  # the epochs did differ


def test_warmup_then_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5, abs=0.02)
    assert lrs[-1] < 0.01


def _minilm(**kwargs):
    from xfer.models import build_text_model
    from xfer.sources import load_source, resolve_source

    return build_text_model(load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir, 2, **kwargs)


def test_text_fine_tuning_keeps_embedding_tables_frozen_by_default():
    model = _minilm()
    tables = {"backbone.embeddings.word_embeddings.weight", "backbone.embeddings.position_embeddings.weight",
              "backbone.embeddings.token_type_embeddings.weight"}
    for strategy in ("full", "lp-ft"):
        phase = make_plan(strategy, FitConfig(data="x", strategy=strategy).resolved("text")).phases[-1]
        trainable = phase.trainable(model)
        assert not trainable & tables
        assert "backbone.encoder.layer.0.attention.self.query.weight" in trainable
        assert "backbone.embeddings.LayerNorm.weight" in trainable
    unfrozen = FitConfig(data="x", strategy="full", freeze_embeddings=False).resolved("text")
    assert tables <= make_plan("full", unfrozen).phases[0].trainable(model)


def test_encoder_dropout_overrides_the_source_config():
    assert _minilm().backbone.config.hidden_dropout_prob == 0.1  # the source's own
    config = _minilm(encoder_dropout=0.0).backbone.config
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0


def test_auto_precision_keeps_depthwise_cnns_in_fp32_on_cpu(monkeypatch):
    from xfer.fitting import device as train

    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_supports_bf16", lambda: True)
    assert train.resolve_precision("auto", build_image_model("mobilenetv2_100", 2)) == "no"
    assert train.resolve_precision("auto", build_image_model("resnet10t", 2)) == "bf16"
    assert train.resolve_precision("auto", _minilm()) == "bf16"
    assert train.resolve_precision("bf16", build_image_model("mobilenetv2_100", 2)) == "bf16"
    monkeypatch.setattr(train, "cpu_supports_bf16", lambda: False)
    assert train.resolve_precision("auto", _minilm()) == "no"
