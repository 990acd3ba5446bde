"""Feature cache and AdaBN: computed once, read back identically, with the adapted BatchNorm statistics."""

import numpy as np
import pytest
import torch

from xfer.data.loaders import ImageBatches, ImagePrep, batches
from xfer.data.task import Split
from xfer.fitting import features
from xfer.fitting.features import adapt_batchnorm, cache_key, probe_features
from xfer.models import build_image_model
from xfer.fitting.device import make_accelerator


def _split(n, seed):
    rng = np.random.default_rng(seed)
    items = [rng.integers(0, 255, (20, 20), dtype=np.uint8) for _ in range(n)]
    return Split(items, rng.integers(0, 2, n).astype(np.int64))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    prep = ImagePrep(32, (0.5,), (0.25,), "bilinear", 1)
    tr, va = _split(24, 0), _split(8, 1)
    loaders = (batches(ImageBatches(tr, prep), 8, shuffle=False), batches(ImageBatches(va, prep), 8, shuffle=False))
    return prep, tr, va, loaders


def test_adabn_changes_only_running_statistics(setup):
    _, _, _, (train, _) = setup
    model = build_image_model("mobilenetv2_100", 2, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapt_batchnorm(model, train, make_accelerator("no"))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("running_" in k or "num_batches_tracked" in k for k in changed)
    assert not model.training


def test_cache_hit_returns_same_features_and_bn_statistics(setup, monkeypatch):
    prep, tr, va, loaders = setup
    acc = make_accelerator("no")
    key = cache_key("src", [tr, va], prep.to_dict(), True)
    first = build_image_model("mobilenetv2_100", 2, in_chans=1)
    f1 = probe_features(first, *loaders, acc, key, True, log=lambda s: None)

    def boom(*a, **k):
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(features, "compute_features", boom)
    torch.manual_seed(1)
    second = build_image_model("mobilenetv2_100", 2, in_chans=1)
    second.load_state_dict({k: v for k, v in first.state_dict().items() if "running_" not in k}, strict=False)
    f2 = probe_features(second, *loaders, acc, key, True, log=lambda s: None)
    assert torch.equal(f1[0], f2[0]) and torch.equal(f1[1], f2[1])
    for k, v in first.state_dict().items():
        if "running_" in k:
            assert torch.equal(v, second.state_dict()[k]), k


def test_cache_key_depends_on_data_source_and_preprocessing(setup):
    prep, tr, va, _ = setup
    base = cache_key("src", [tr, va], prep.to_dict(), True)
    assert base == cache_key("src", [tr, va], prep.to_dict(), True)
    assert base != cache_key("other", [tr, va], prep.to_dict(), True)
    assert base != cache_key("src", [va, tr], prep.to_dict(), True)
    assert base != cache_key("src", [tr, va], {**prep.to_dict(), "size": 64}, True)
    assert base != cache_key("src", [tr, va], prep.to_dict(), False)
