"""Each strategy trains what it says, at the rates it says: tests that fail on a wrong implementation."""

from dataclasses import replace

import pytest
import torch
from helpers import tensor_loaders, train_one_phase

from xfer.config import FitConfig
from xfer.errors import XferError
from xfer.models import add_lora, block_groups, build_image_model, build_text_model, layer_ids, merge_lora
from xfer.sources import load_source, resolve_source
from xfer.fitting.device import make_accelerator
from xfer.fitting.hooks import Context
from xfer.fitting.loop import PhaseState
from xfer.fitting.strategies import STRATEGIES, L2SPGradient, WiseFTInterpolation, interpolate, make_plan


def _loaders(n=32):
    return tensor_loaders(n)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _phase(strategy, index=-1, modality="image", **cfg):
    config = FitConfig(data="x", strategy=strategy, **cfg).resolved(modality)
    return make_plan(strategy, config).phases[index]


def _train(model, phase, epochs=None, on_epoch=None, state=None, loaders=None):
    phase = replace(phase, epochs=epochs or phase.epochs)
    return train_one_phase(model, phase, loaders or _loaders(), on_epoch, state, channels_last=False)


@pytest.fixture(scope="module")
def minilm_dir():
    return load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir


def test_every_strategy_builds_a_plan():
    cfg = FitConfig(data="x").resolved("image")
    for name in STRATEGIES:
        plan = make_plan(name, cfg)
        assert plan.strategy == name and plan.phases
    with pytest.raises(XferError, match="Unknown strategy"):
        make_plan("fine-tune-everything", cfg)
    with pytest.raises(XferError, match="bn-policy"):
        make_plan("full", replace(cfg, bn_policy="sometimes"))


def test_bitfit_changes_only_biases_and_the_head():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    before = _state(model)
    _train(model, _phase("bitfit", epochs=1))
    after = _state(model)
    params = {n for n, _ in model.named_parameters()}
    changed = {k for k in params if not torch.equal(before[k], after[k])}
    assert "head.weight" in changed and "backbone.bn1.bias" in changed
    assert all(k.endswith(".bias") or k.startswith("head.") for k in changed)
    assert torch.equal(before["backbone.conv_stem.weight"], after["backbone.conv_stem.weight"])
    assert torch.equal(before["backbone.bn1.weight"], after["backbone.bn1.weight"])


def _group_rates(state: PhaseState) -> dict[str, float]:
    return {n: g["initial_lr"] for g in state.optimizer["param_groups"] for n in g["names"]}


def test_layer_decay_rates_reach_the_optimizer_image():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    seen = {}
    _train(model, _phase("layer-decay", epochs=1, lr=1e-3, layer_decay=0.8),
           on_epoch=lambda rec, st: seen.update(rates=_group_rates(st), lrs=[g["lr"] for g in
                                                                            st.optimizer["param_groups"]],
                                                 groups=st.optimizer["param_groups"]))
    ids, top = layer_ids(model), max(layer_ids(model).values())
    assert top == 18  # 17 timm block groups + stem, head on top
    for name, rate in seen["rates"].items():
        assert rate == pytest.approx(1e-3 * 0.8 ** (top - ids[name]), rel=1e-12), name
    assert seen["rates"]["head.weight"] == pytest.approx(1e-3)
    assert seen["rates"]["backbone.conv_stem.weight"] == pytest.approx(1e-3 * 0.8 ** 18)
    # The schedule scales every group by the same factor: the ratios survive the scheduler.
    factors = {round(g["lr"] / g["initial_lr"], 12) for g in seen["groups"]}
    assert len(factors) == 1


def test_layer_decay_with_frozen_embeddings_keeps_depths(minilm_dir):
    """Frozen embedding tables must not shift the other layers' scales (timm PR #2532's pitfall)."""
    torch.manual_seed(0)
    model = build_text_model(minilm_dir, 2, encoder_dropout=0.0)
    phase = _phase("layer-decay", modality="text", lr=1e-4, layer_decay=0.5)
    names = phase.trainable(model)
    assert not any("word_embeddings" in n for n in names)  # frozen by default for text
    scales = phase.lr_scales(model)
    assert scales["head.weight"] == 1.0
    assert scales["backbone.encoder.layer.5.output.dense.weight"] == 0.5  # top encoder layer, one below the head
    assert scales["backbone.encoder.layer.0.output.dense.weight"] == 0.5 ** 6
    assert scales["backbone.embeddings.LayerNorm.weight"] == 0.5 ** 7
    from xfer.fitting.loop import param_groups

    groups = param_groups(model, names, 1e-4, 0.01, scales)
    rates = {n: g["lr"] for g in groups for n in g["names"]}
    assert rates["backbone.encoder.layer.0.attention.self.query.weight"] == pytest.approx(1e-4 * 0.5 ** 6)
    assert rates["backbone.embeddings.LayerNorm.bias"] == pytest.approx(1e-4 * 0.5 ** 7)
    assert all(g["weight_decay"] == 0.0 for g in groups if any(n.endswith(".bias") for n in g["names"]))


def test_l2sp_gradient_equals_alpha_times_distance_on_a_zero_loss_batch():
    torch.manual_seed(0)
    model = build_image_model("resnet10t", num_classes=3)
    names = {n for n, _ in model.named_parameters()}
    alpha, beta = 0.3, 0.07
    penalty = L2SPGradient(alpha, beta)
    ctx = Context(model, None, None, False, print, module=model, trainable=frozenset(names))
    penalty.start(ctx)  # w0 = the weights now
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    x = torch.randn(2, 3, 32, 32)
    (model(x).sum() * 0.0).backward()  # a zero loss: gradients are all zero
    penalty.after_backward(ctx)
    params = dict(model.named_parameters())
    for n, p in params.items():
        if n.startswith("head."):
            expected = beta * p.detach() if p.ndim > 1 else torch.zeros_like(p)
        else:
            expected = alpha * (p.detach() - penalty.state_dict()[n])
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=1e-7)
    # The same as differentiating the penalty term itself.
    model.zero_grad()
    loss = sum(alpha / 2 * (p - penalty.state_dict()[n]).pow(2).sum() for n, p in params.items() if not n.startswith("head."))
    loss = loss + beta / 2 * params["head.weight"].pow(2).sum()
    loss.backward()
    auto = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
    model.zero_grad()
    (model(x).sum() * 0.0).backward()
    penalty.after_backward(ctx)
    for n, p in params.items():
        torch.testing.assert_close(p.grad, auto[n], rtol=1e-5, atol=1e-7)


def test_l2sp_pulls_weights_towards_the_source_and_replaces_weight_decay():
    def drift(alpha):
        torch.manual_seed(0)
        model = build_image_model("resnet10t", num_classes=3)
        w0 = _state(model)
        seen = {}
        _train(model, _phase("l2-sp", epochs=2, lr=1e-2, l2sp_alpha=alpha),
               on_epoch=lambda rec, st: seen.update(groups=st.optimizer["param_groups"]))
        assert all(g["weight_decay"] == 0.0 for g in seen["groups"])
        return sum((p - w0[n]).pow(2).sum().item() for n, p in model.named_parameters() if n.startswith("backbone."))

    assert drift(1000.0) < 0.5 * drift(0.0)


def test_gradual_unfreeze_opens_one_group_per_epoch_from_the_top():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    phase = _phase("gradual-unfreeze", epochs=3, unfreeze_factor=2.0)
    (unfreeze,) = phase.hooks
    ctx = Context(model, None, None, False, print)
    sets = [unfreeze.trainable(ctx, e, frozenset(phase.trainable(model))) for e in (1, 2, 3)]
    assert sets[0] == {"head.weight", "head.bias"}
    assert sets[0] < sets[1] < sets[2]
    groups = block_groups(model)
    assert sets[1] - sets[0] == set(groups[-1]) and sets[2] - sets[1] == set(groups[-2])
    scales = phase.lr_scales(model)
    assert scales["head.weight"] == 1.0 and scales["backbone.conv_head.weight"] == 0.5
    assert scales["backbone.conv_stem.weight"] == 0.5 ** 8
    before = _state(model)
    recs = _train(model, phase)
    assert recs[0].trainable_params < recs[1].trainable_params < recs[2].trainable_params
    assert torch.equal(before["backbone.conv_stem.weight"], model.state_dict()["backbone.conv_stem.weight"])


def test_gradual_unfreeze_resumed_midway_matches_an_uninterrupted_run(tmp_path):
    from xfer.fitting.runner import Checkpoint, load_checkpoint, save_checkpoint

    phase = _phase("gradual-unfreeze", epochs=3, lr=1e-2)
    torch.manual_seed(0)
    ref = build_image_model("resnet10t", num_classes=3)
    start = _state(ref)
    trainable_ref, last_ref = [], {}

    def record(into, model):
        # The weights after the last epoch (before the best epoch is restored), and the trainable set per epoch.
        return lambda rec, st: (into[0].append(list(st.trainable)), into[1].update(_state(model)))

    _train(ref, phase, on_epoch=record((trainable_ref, last_ref), ref))

    class Crash(Exception):
        pass

    def crash_after_first(rec, st):
        save_checkpoint(tmp_path / "ck", Checkpoint(0, _state(model), st))
        if st.epoch == 1:
            raise Crash

    model = build_image_model("resnet10t", num_classes=3)
    model.load_state_dict(start)
    with pytest.raises(Crash):
        _train(model, phase, on_epoch=crash_after_first)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.state.epoch == 1 and ck.state.trainable == trainable_ref[0]
    resumed = build_image_model("resnet10t", num_classes=3)
    resumed.load_state_dict(ck.model)
    trainable_resumed, last_resumed = [], {}
    _train(resumed, phase, state=ck.state, on_epoch=record((trainable_resumed, last_resumed), resumed))
    assert trainable_resumed == trainable_ref[1:]
    assert not torch.equal(last_ref["head.weight"], start["head.weight"])
    for k, v in last_ref.items():
        torch.testing.assert_close(last_resumed[k], v, rtol=0, atol=1e-6)
    for k, v in ref.state_dict().items():  # and the same best epoch restored
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6)


def test_lora_trains_adapters_and_head_only_and_merges_to_the_same_logits():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    phase = _phase("lora", epochs=1, peft_lr=1e-2)
    phase.hooks[0].before_phase(model, phase)  # the adapters, as the runner adds them
    before = _state(model)
    _train(model, phase)
    after = _state(model)
    changed = {k for k, _ in model.named_parameters() if not torch.equal(before[k], after[k])}
    assert any(".lora_B." in k for k in changed) and "head.weight" in changed
    assert all(".lora_" in k or k.startswith("head.") for k in changed)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        unmerged = model(x)
        merge_lora(model)
        merged = model(x)
    assert not any(".lora_" in k for k in model.state_dict())
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


def test_bn_policy_frozen_keeps_all_statistics_train_updates_frozen_layers():
    torch.manual_seed(0)
    model = build_image_model("mobilenetv2_100", num_classes=3)
    before = _state(model)
    _train(model, _phase("full", epochs=1, bn_policy="frozen"))
    after = _state(model)
    stats = [k for k in before if "running_" in k]
    assert all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before["backbone.bn1.weight"], after["backbone.bn1.weight"])

    model = build_image_model("mobilenetv2_100", num_classes=3)
    before = _state(model)
    _train(model, _phase("partial", epochs=1, partial_blocks=1, bn_policy="train"))
    after = _state(model)
    assert not torch.equal(before["backbone.bn1.running_mean"], after["backbone.bn1.running_mean"])
    assert torch.equal(before["backbone.bn1.weight"], after["backbone.bn1.weight"])


def test_wise_ft_ends_reproduce_the_two_models():
    torch.manual_seed(0)
    a = build_image_model("resnet10t", num_classes=3)
    b = build_image_model("resnet10t", num_classes=3)
    theta0, theta1 = _state(a), _state(b)
    for k, v in interpolate(theta0, theta1, 0.0).items():
        assert torch.equal(v, theta0[k]) or not v.is_floating_point()
    for k, v in interpolate(theta0, theta1, 1.0).items():
        assert torch.equal(v, theta1[k])
    mid = interpolate(theta0, theta1, 0.25)["head.weight"]
    torch.testing.assert_close(mid, 0.75 * theta0["head.weight"] + 0.25 * theta1["head.weight"])
    _, val = _loaders()
    acc = make_accelerator("no")
    for alphas, theta in (((0.0,), theta0), ((1.0,), theta1)):
        hook = WiseFTInterpolation()
        hook.alphas, hook.snapshot = alphas, theta0
        a.load_state_dict(theta1)
        curve = hook.after_plan(Context(a, acc, val, False, lambda s: None))["wise_ft"]["curve"]
        assert [c["alpha"] for c in curve] == list(alphas)
        assert all(torch.equal(v, theta[k]) for k, v in a.state_dict().items() if v.is_floating_point())
