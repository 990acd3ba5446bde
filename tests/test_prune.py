"""Structured pruning (xfer/compress/prune.py): smaller networks that still run, the pruned shapes rebuilt from the
spec exactly (models.shape_attributes / apply_pruned, runs.run.load), whole attention heads removed consistently,
clear errors, and `prune_run` end to end on real saved runs."""

import json

import numpy as np
import pytest
import torch

import xfer
from xfer.compress.prune import prune_model, prune_run
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.models import add_lora, apply_pruned, build_image_model, build_text_model, shape_attributes
from xfer.runs.folder import write_run


def _changed(before, after):
    return {n: {k: v for k, v in a.items() if before[n].get(k) != v} for n, a in after.items()
            if any(before[n].get(k) != v for k, v in a.items())}


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _rebuilt(build, pruned, changed):
    """A fresh architecture given the pruned shapes, as `xfer.load` does, through a JSON round trip of the spec."""
    state = pruned.state_dict()
    fresh = build()
    apply_pruned(fresh, state, json.loads(json.dumps(changed)))
    fresh.load_state_dict(state, strict=True)
    return fresh.eval()


@pytest.fixture(scope="module")
def minilm():
    from xfer.data.loaders import load_tokenizer
    from xfer.sources import load_source, resolve_source

    folder = load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir
    tokenizer = load_tokenizer(folder)

    def encode(texts):
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return folder, encode


@pytest.mark.parametrize("arch", ["mobilenetv2_100", "resnet18"])
def test_pruned_image_model_is_smaller_still_predicts_and_rebuilds_exactly(arch):
    torch.manual_seed(0)
    model = build_image_model(arch, 10, 1).eval()
    x = torch.randn(3, 1, 48, 48)
    before = shape_attributes(model)
    report = prune_model(model, x[:1], 0.3)
    changed = _changed(before, shape_attributes(model))

    assert report["ratio"] == 0.3
    assert report["params_before"] == _params(build_image_model(arch, 10, 1))
    assert report["params_after"] == _params(model)
    # 30% of the channels on both sides of most weights: about half the parameters and MACs remain.
    assert 0.35 < report["params_after"] / report["params_before"] < 0.65
    assert 0.35 < report["macs_after"] / report["macs_before"] < 0.65
    assert model.head.out_features == 10 and model.head.in_features < 0.8 * before["head"]["in_features"]
    assert model.backbone.num_features == model.head.in_features
    assert "head" in changed and "out_features" not in changed["head"]
    assert changed[next(n for n in changed if n.endswith("conv_stem") or n.endswith("conv1"))]["out_channels"] < 64
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, 10) and torch.isfinite(logits).all()
        assert torch.equal(_rebuilt(lambda: build_image_model(arch, 10, 1), model, changed)(x), logits)


def test_depthwise_convs_follow_their_producers():
    model = build_image_model("efficientnet_lite0", 4, 3).eval()
    prune_model(model, torch.randn(1, 3, 32, 32), 0.5)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels == m.weight.shape[0] for m in depthwise)
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 4)  # another input size: nothing was tied to the trace


def test_apply_pruned_resizes_only_what_differs_and_keeps_dtype():
    model = build_image_model("mobilenetv2_100", 3, 1).double()
    pruned = build_image_model("mobilenetv2_100", 3, 1).double().eval()
    before = shape_attributes(pruned)
    prune_model(pruned, torch.randn(1, 1, 32, 32, dtype=torch.float64), 0.25)
    untouched = model.head.bias
    apply_pruned(model, pruned.state_dict(), _changed(before, shape_attributes(pruned)))
    assert model.head.bias is untouched  # the head's outputs were not pruned: same tensor
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    assert shape_attributes(model) == shape_attributes(pruned)


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of `original` survive in `pruned`, in order (random initial weights: every row is unique)."""
    return [int((original == row).all(1).nonzero()[0]) for row in pruned]


def test_text_pruning_removes_whole_heads_and_ffn_units_and_rebuilds_exactly(minilm):
    folder, encode = minilm
    torch.manual_seed(0)
    model = build_text_model(folder, 3, 0.1, 0.0).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    before = shape_attributes(model)
    report = prune_model(model, encode(["a short example"]), 0.3)
    changed = _changed(before, shape_attributes(model))

    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    assert model.head.in_features == 384 and model.head.out_features == 3  # hidden size (and head) kept
    for i, layer in enumerate(model.backbone.encoder.layer):
        attn = layer.attention.self
        assert attn.num_attention_heads == 8 and attn.attention_head_size == 32  # ceil(0.3 * 12) heads gone
        assert attn.all_head_size == attn.query.out_features == 256
        assert changed[f"backbone.encoder.layer.{i}.attention.self"] == {"num_attention_heads": 8,
                                                                         "all_head_size": 256}
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 1075  # int(1536 * 0.7)
        # The same whole heads left query, key, value and the output projection's inputs.
        p = f"backbone.encoder.layer.{i}.attention."
        rows = [_kept_rows(original[p + f"self.{n}.weight"], getattr(attn, n).weight)
                for n in ("query", "key", "value")]
        cols = _kept_rows(original[p + "output.dense.weight"].T, layer.attention.output.dense.weight.T)
        assert rows[0] == rows[1] == rows[2] == cols
        heads = sorted({r // 32 for r in rows[0]})
        assert len(heads) == 8 and rows[0] == [h * 32 + j for h in heads for j in range(32)]

    texts = ["fine", "a much longer sentence, with many more word pieces than the first one has"]
    with torch.no_grad():
        logits = model(encode(texts))
        assert logits.shape == (2, 3)
        # Dynamic lengths: each text alone (no padding) gives what it gives inside a padded batch.
        for i, t in enumerate(texts):
            assert torch.allclose(model(encode([t]))[0], logits[i], atol=1e-5)
        rebuilt = _rebuilt(lambda: build_text_model(folder, 3, 0.1, 0.0), model, changed)
        assert torch.equal(rebuilt(encode(texts)), logits)


def test_text_pruning_always_keeps_a_head(minilm):
    folder, encode = minilm
    model = build_text_model(folder, 2, 0.0, 0.0).eval()
    prune_model(model, encode(["x"]), 0.99)
    assert all(layer.attention.self.num_attention_heads == 1 for layer in model.backbone.encoder.layer)
    assert model(encode(["still runs", "yes"])).shape == (2, 2)


@pytest.mark.parametrize("ratio", [1.5, 0, 1, -0.1, float("nan"), "0.3"])
def test_bad_ratio_is_a_clear_error(ratio):
    model = build_image_model("mobilenetv2_100", 2, 1)
    with pytest.raises(XferError, match="strictly between 0 and 1") as e:
        prune_model(model, torch.randn(1, 1, 32, 32), ratio)
    assert "--prune 0.3" in str(e.value)
    assert model.head.in_features == 1280  # nothing was touched


def test_unmerged_lora_is_refused_with_the_fix():
    model = build_image_model("mobilenetv2_100", 2, 1)
    add_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0})
    with pytest.raises(XferError, match="LoRA") as e:
        prune_model(model, torch.randn(1, 1, 32, 32), 0.3)
    assert "xfer export RUN --out DIR" in str(e.value)


def _logits(run, items):
    return run.logits(Split(items, np.zeros(len(items), dtype=np.int64)), precision="no")


def test_prune_run_end_to_end_on_a_saved_image_run(image_folder, tmp_path):
    fitted = xfer.fit(data=str(image_folder), source="mobilenet_v2", strategy="full", epochs=1, image_size=32,
                      batch_size=8, min_steps=0, precision="no", quiet=True, out=str(tmp_path / "run"))
    run = xfer.load(fitted.path)
    params = _params(run.model)
    logs = []
    c = prune_run(run, 0.3, recover_epochs=1, log=logs.append)

    assert c.name == "pruned-0.3" and c.backbone is None
    assert 0 <= c.metrics["test"]["accuracy"] <= 1 and "macro_f1" in c.metrics["val"]
    assert c.metrics["params"] == _params(c.model) == c.report["params_after"] < 0.65 * params
    assert c.report["recover_epochs"] == 1 and c.report["lr"] == run_lr(fitted)
    assert c.report["macs_after"] < c.report["macs_before"] and any("pruned 30%" in m for m in logs)
    assert _params(run.model) == params  # the run itself is not pruned
    assert not c.model.training and next(c.model.parameters()).device.type == "cpu"
    assert c.spec["pruned"]["ratio"] == 0.3 and c.spec["labels"] == run.spec["labels"]

    # Saved as a run folder, the variant loads through the ordinary `xfer.load` and computes the same logits.
    path = write_run(tmp_path / "pruned", spec=json.loads(json.dumps(c.spec)), weights=c.model.state_dict())
    loaded = xfer.load(path)
    images = sorted(image_folder.rglob("*.png"))[:6]
    assert _params(loaded.model) == c.metrics["params"]
    assert torch.equal(_logits(loaded, images), _logits(xfer.Run(c.model, c.spec), images))
    assert loaded.predict(images[:1])[0]["label"] in ("red", "blue")


def run_lr(run):
    from xfer.runs.folder import RunFolder

    return RunFolder(run.path).config()["lr"]


def test_prune_run_on_a_text_run_without_recovery(tmp_path):
    good = ["a wonderful, moving film", "brilliant acting and a great story", "I loved every minute"]
    bad = ["a dull, boring mess", "terrible script and awful acting", "I hated every minute"]
    rows = [(t, "pos") for t in good] * 3 + [(t, "neg") for t in bad] * 3
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "\n".join(f'"{t}",{lab}' for t, lab in rows) + "\n")
    fitted = xfer.fit(data=str(data), strategy="linear-probe", epochs=1, batch_size=8, max_length=16, quiet=True,
                      test_fraction=0.25, val_fraction=0.25, out=str(tmp_path / "run"))
    run = xfer.load(fitted.path)
    c = prune_run(run, 0.5, recover_epochs=0)

    assert c.report["recover_epochs"] == 0 and c.report["lr"] is None and "history" not in c.metrics
    assert 0 <= c.metrics["test"]["accuracy"] <= 1
    assert c.metrics["params"] < _params(run.model)
    path = write_run(tmp_path / "pruned", spec=json.loads(json.dumps(c.spec)), weights=c.model.state_dict(),
                     backbone=c.backbone)
    assert (path / "backbone" / "tokenizer.json").exists() and (path / "backbone" / "config.json").exists()
    loaded = xfer.load(path)
    texts = ["what a great film", "awful, just awful and far too long"]
    assert loaded.model.backbone.encoder.layer[0].attention.self.num_attention_heads == 6
    assert torch.equal(_logits(loaded, texts), _logits(xfer.Run(c.model, c.spec, path), texts))
