"""A short fit per strategy ends at the weights pinned in tests/data/fit_reference.json: bit for bit on a platform
that has its own pins, within CROSS_PLATFORM_TOLERANCE of the logits elsewhere (other CPUs' kernels round
differently, and a short fit amplifies it)."""

import json

import pytest
from fit_reference import CROSS_PLATFORM_TOLERANCE, REFERENCE, fingerprint, fits, platform_key

PINS = json.loads(REFERENCE.read_text())["pins"]
NAMES = sorted({name for fits_ in PINS.values() for name in fits_})


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory):
    return {name: fingerprint(run, probe) for name, run, probe in fits(tmp_path_factory.mktemp("reference"))}


@pytest.mark.parametrize("name", NAMES)
def test_fit_ends_at_the_pinned_weights(fingerprints, name):
    got, here = fingerprints[name], platform_key()
    if here in PINS:
        want = PINS[here][name]
        assert got["logits"] == pytest.approx(want["logits"], abs=1e-3), name
        assert got["sha256"] == want["sha256"], f"{name}: same platform, different final weights"
        return
    for platform, pinned in PINS.items():
        assert got["logits"] == pytest.approx(pinned[name]["logits"], abs=CROSS_PLATFORM_TOLERANCE), \
            f"{name}: logits far from those pinned on {platform}"
