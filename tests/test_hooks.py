"""A strategy defined outside xfer/, with its own hooks, runs through `xfer.fit` unchanged: the loop calls a batch
transform before the forward pass and adds a loss term, and both change what is learnt."""

import numpy as np
import pytest
import torch

import xfer
from xfer.fitting.hooks import Hook
from xfer.fitting.strategies import STRATEGIES, Phase, Plan, head_only, strategy

# The head alone trains, on the whole network (no feature cache): a few steps learn the two colours.
FAST = dict(source="mobilenet_v2", image_size=32, batch_size=8, quiet=True, min_steps=0, epochs=3, lr=1e-2,
            patience=0, precision="no", save=False)


class FlipLabels(Hook):
    """Trains on the opposite label of a two-class task: a model that learnt through it predicts backwards."""

    calls = 0

    def before_batch(self, inputs, labels):
        FlipLabels.calls += 1
        return inputs, 1 - labels


class ShrinkLogits(Hook):
    """Adds weight * mean(logits^2) to the loss."""

    calls = 0

    def __init__(self, weight: float):
        self.weight = weight

    def loss(self, logits, inputs, labels):
        ShrinkLogits.calls += 1
        return self.weight * logits.pow(2).mean()


@pytest.fixture
def test_strategies():
    def head(name, *hooks):
        return lambda cfg: Plan(name, (Phase(name, cfg.epochs, cfg.lr, head_only, hooks=hooks),))

    strategy("test-head")(head("test-head"))
    strategy("test-flipped")(lambda cfg: head("test-flipped", FlipLabels())(cfg))
    strategy("test-shrunk")(lambda cfg: head("test-shrunk", ShrinkLogits(10.0))(cfg))
    yield
    for name in ("test-head", "test-flipped", "test-shrunk"):
        STRATEGIES.pop(name)


def _logits(run, folder):
    """Logits and accuracy over every image of the folder (all splits: the validation split has 2 images)."""
    from xfer.data.task import Split

    images = sorted(folder.rglob("*.png"))
    labels = np.array([run.labels.index(p.parent.name) for p in images])
    logits = run.logits(Split(images, labels), precision="no")
    return logits, float((logits.argmax(1).numpy() == labels).mean())


def test_a_batch_transform_hook_changes_what_is_learnt(test_strategies, image_folder):
    plain = xfer.fit(data=str(image_folder), strategy="test-head", **FAST)
    FlipLabels.calls = 0
    flipped = xfer.fit(data=str(image_folder), strategy="test-flipped", **FAST)
    assert FlipLabels.calls == 3 * 2  # 16 training images at batch 8, 3 epochs
    assert _logits(plain, image_folder)[1] >= 0.9
    assert _logits(flipped, image_folder)[1] <= 0.2  # it learnt the colours backwards
    assert flipped.metrics["trainable_params"] == plain.metrics["trainable_params"]


def test_a_loss_hook_adds_its_term(test_strategies, image_folder):
    plain = xfer.fit(data=str(image_folder), strategy="test-head", **FAST)
    ShrinkLogits.calls = 0
    shrunk = xfer.fit(data=str(image_folder), strategy="test-shrunk", **FAST)
    assert ShrinkLogits.calls == 3 * 2
    size = lambda run: float(_logits(run, image_folder)[0].pow(2).mean())  # noqa: E731
    assert size(shrunk) < 0.6 * size(plain)  # measured 0.94 vs 2.16: the term reached the gradient


def test_hooks_are_called_only_for_the_events_they_implement():
    from xfer.fitting.hooks import EVENTS, overriding

    hooks = [FlipLabels(), ShrinkLogits(1.0), Hook()]
    assert overriding(hooks, "before_batch") == hooks[:1]
    assert overriding(hooks, "loss") == hooks[1:2]
    assert all(not overriding([Hook()], e) for e in EVENTS)
    assert torch.equal(Hook().before_batch(torch.ones(1), torch.zeros(1))[0], torch.ones(1))
