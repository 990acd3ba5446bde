"""Image attacks, defences, smoothing and robust fine-tuning (xfer/robust/*, xfer/tools/robust.py)."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import xfer
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.robust.attacks import fgsm, pgd, predictions
from xfer.robust.defences import PixelModel, _straight_through, bit_depth, parse_defence
from xfer.robust.smoothing import certified_accuracy, certify, lower_confidence_bound, radius
from xfer.robust.training import AdversarialExamples, GaussianNoise
from xfer.tools.robust import robust

from helpers import TINY_IMAGE_FIT

PREP = {"mean": [0.5], "std": [0.25]}


@pytest.fixture(scope="module")
def image_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "run"
    xfer.fit(data=str(image_folder), out=str(out), **{**TINY_IMAGE_FIT, "epochs": 2, "min_steps": 10})
    return out


def test_eps_zero_is_clean_accuracy_and_pgd_is_at_least_as_strong_as_fgsm(image_run, tmp_path):
    result = robust(image_run, tmp_path / "r", eps=(0.0, 0.01, 0.03), defences=["bits", "resize-pad"], steps=5,
                    eot=2, limit=None)
    rows = result["results"]
    for row in rows:
        if row["eps"] == 0 and row["defence"] is None:
            assert row["accuracy"] == result["clean_accuracy"]
    for e in (0.01, 0.03):
        acc = {r["attack"]: r["accuracy"] for r in rows if r["eps"] == e and r["defence"] is None}
        assert acc["pgd"] <= acc["fgsm"]
    # every defence has its naive and its adaptive row at every strength
    for d in ("bits", "resize-pad"):
        assert {(r["attack"], r["eps"], r["adaptive"]) for r in rows if r["defence"] == d} == {
            (a, e, ad) for a in ("fgsm", "pgd") for e in (0.0, 0.01, 0.03) for ad in (False, True)}
    saved = json.loads((tmp_path / "r" / "robust.json").read_text())
    assert saved["clean_accuracy"] == result["clean_accuracy"] and (tmp_path / "r" / "robust.png").is_file()


def _toy(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(32, 3, 4, 4)
    y = predictions(model, x)  # the model is right on every clean example
    return model, x, y


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_perturbations_stay_in_the_eps_ball_and_in_pixel_range(eps):
    model, x, y = _toy()
    for adv in (fgsm(model, x, y, eps), pgd(model, x, y, eps, steps=10)):
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(pgd(model, x, y, 0.0), x) and torch.equal(fgsm(model, x, y, 0.0), x)


class ObfuscatedToy(nn.Module):
    """A randomised, non-differentiable defence built to hide gradients: 1-bit quantisation (zero gradient
    everywhere) of the input plus a random shift of one pixel, in front of a linear classifier."""

    def __init__(self, model, bpda: bool):
        super().__init__()
        self.model, self.bpda = model, bpda

    def forward(self, x):
        q = bit_depth(x, 1)
        q = _straight_through(x, q) if self.bpda else q
        shift = int(torch.randint(0, 2, (1,)))
        return self.model(torch.roll(q, shifts=shift, dims=-1))


def test_bpda_and_eot_break_a_defence_that_only_hides_gradients():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(48, 2)).eval()
    x = (torch.rand(64, 3, 4, 4) > 0.5).float() * 0.4 + 0.3  # pixels at 0.3 or 0.7
    naive_model, adaptive_model = ObfuscatedToy(linear, False), ObfuscatedToy(linear, True)
    torch.manual_seed(1)
    y = predictions(naive_model, x)

    def acc(adv):
        torch.manual_seed(2)
        return float((predictions(naive_model, adv) == y).float().mean())

    clean = acc(x)
    naive = acc(pgd(naive_model, x, y, 0.3, steps=10, random_start=False))  # its gradient is zero: no step moves
    adaptive = acc(pgd(adaptive_model, x, y, 0.3, steps=10, random_start=False, eot=4))
    assert naive == clean
    assert adaptive < naive - 0.3


def test_smoothing_certificate_matches_hand_computation():
    # k = n: the Clopper-Pearson lower bound has the closed form alpha^(1/n).
    n, alpha, sigma = 100, 0.001, 0.25
    assert lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)
    from scipy.stats import norm

    assert radius(n, n, alpha, sigma) == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-9)
    # k < n: the bound p solves P(Binomial(n, p) >= k) = alpha, found here by bisection.
    k = 90
    lo, hi = 0.0, 1.0
    from scipy.stats import binom

    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom.sf(k - 1, n, mid) < alpha else (lo, mid)
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(lo, abs=1e-9)
    assert radius(50, 100, alpha, sigma) is None  # no majority with confidence: abstain
    # a constant model is certified with the k = n radius, at every input
    const = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        const[1].weight.zero_()
        const[1].bias.copy_(torch.tensor([0.0, 1.0]))
    pred, r = certify(const, torch.rand(3, 1, 1), 2, sigma, n0=10, n=n, alpha=alpha)
    assert pred == 1 and r == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)))
    assert certified_accuracy([(1, r), (0, None)], [1, 0], [0.0, r, r + 0.01]) == {
        "0": 0.5, f"{r:g}": 0.5, f"{r + 0.01:g}": 0.0}


def test_noise_and_adversarial_hooks_perturb_pixels_as_promised():
    torch.manual_seed(0)
    pixels = torch.rand(64, 1, 8, 8)
    normalised = (pixels - 0.5) / 0.25
    noisy, _ = GaussianNoise(0.2, PREP).before_batch(normalised, torch.zeros(64, dtype=torch.long))
    delta = noisy * 0.25 + 0.5 - pixels
    assert abs(float(delta.std()) - 0.2) < 0.01
    model, _, _ = _toy()
    body = nn.Sequential(nn.Conv2d(1, 3, 1), nn.AdaptiveAvgPool2d(4), model)
    hook = AdversarialExamples("pgd", 0.05, 3, PREP)

    class Ctx:
        module = body

    hook.start(Ctx())
    body.train()
    adv, _ = hook.before_batch(normalised, torch.zeros(64, dtype=torch.long))
    moved = adv * 0.25 + 0.5 - pixels
    assert 0 < float(moved.abs().max()) <= 0.05 + 1e-5
    assert body.training and all(p.grad is None for p in body.parameters())  # no gradient leaks into the weights
    features = torch.randn(8, 16)  # a head-only phase on cached features is left alone
    assert torch.equal(hook.before_batch(features, torch.zeros(8, dtype=torch.long))[0], features)


def test_a_defence_saved_in_a_run_is_applied_by_predict(image_folder, tmp_path):
    out = tmp_path / "defended"
    fitted = xfer.fit(data=str(image_folder), defence="bits:1", out=str(out), **TINY_IMAGE_FIT)
    assert fitted.metrics["defended"]["defence"]["name"] == "bits"
    run = xfer.load(out)
    assert run.spec["defence"] == {"name": "bits", "modality": "image", "options": {"bits": 1}, "draws": 1}
    items = sorted(str(p) for p in image_folder.rglob("*.png"))[:6]
    split = Split(items, np.zeros(len(items), dtype=np.int64))
    defended = run.logits(split, precision="no")
    plain = run.logits(split, precision="no", defence=False)
    x, _, _ = run.dataset(split)[list(range(len(items)))]
    by_hand = PixelModel(run.model, run.spec["prep"], run.spec["defence"])(_pixels(x, run.spec["prep"]))
    assert torch.allclose(defended, by_hand.detach(), atol=1e-5)
    assert not torch.allclose(defended, plain, atol=1e-3)
    assert [p["label"] for p in run.predict(items)] == [run.labels[i] for i in defended.argmax(1).tolist()]
    with pytest.raises(XferError, match="defence"):
        from xfer.tools.compress import export_onnx_run

        export_onnx_run(out, tmp_path / "onnx")


def _pixels(x, prep):
    mean = torch.tensor(prep["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(prep["std"]).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


@pytest.mark.parametrize("text,match", [("sharpen", "Unknown defence"), ("blur:radius=2", "no option"),
                                        ("bits:12", "out of range"), ("jpeg:q", "must be a number")])
def test_bad_defences_are_clear_errors(text, match):
    with pytest.raises(XferError, match=match):
        parse_defence(text)


def test_bad_robust_requests_are_clear_errors(image_run, tmp_path):
    with pytest.raises(XferError, match="pixel units"):
        robust(image_run, eps=(0.0, 2.0), limit=4)
    with pytest.raises(XferError, match="for text inputs"):
        robust(image_run, defences=["lookalikes"], limit=4)
    with pytest.raises(XferError, match="Unknown image attack"):
        robust(image_run, attacks=["cw"], limit=4)
    with pytest.raises(XferError, match="pixels"):
        xfer.fit(data="builtin:rotten_tomatoes", noise_sigma=0.1, shots=2, epochs=1, quiet=True, out=str(tmp_path / "t"))
