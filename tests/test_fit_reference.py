"""A short fit per strategy ends at the weights pinned in tests/data/fit_reference.json (taken before the fit core
was reshaped): bit for bit on the platform that wrote the pins, within 1e-3 of the logits elsewhere (other CPUs'
kernels round differently)."""

import json

import pytest
from fit_reference import REFERENCE, fingerprint, fits, platform_key

REF = json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory):
    return {name: fingerprint(run, probe) for name, run, probe in fits(tmp_path_factory.mktemp("reference"))}


@pytest.mark.parametrize("name", sorted(REF["fits"]))
def test_fit_ends_at_the_pinned_weights(fingerprints, name):
    got, want = fingerprints[name], REF["fits"][name]
    assert got["logits"] == pytest.approx(want["logits"], abs=1e-3), name
    if platform_key() == REF["platform"]:
        assert got["sha256"] == want["sha256"], f"{name}: same platform, different final weights"
