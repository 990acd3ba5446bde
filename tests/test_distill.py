"""Knowledge distillation (xfer/compress/distill.py): the loss is Hinton et al.'s, the hook makes the loop's total
exactly that loss, and a fine-tuned run distils into a smaller student (image, truncated text encoder, text rendered
as images) that is written and loaded back as a run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xfer
from xfer.compress.distill import Distill, distill_run, distillation_loss, tokenizer_digest
from xfer.errors import XferError
from xfer.runs.folder import RunFolder, write_run

# Tiny fits: the whole network, one epoch, no step floor, fp32; every run is saved (distillation reads its folder).
FAST = dict(strategy="full", epochs=1, min_steps=0, precision="no", quiet=True, batch_size=8, patience=0)

POSITIVE = ["a wonderful film", "great acting and a fine story", "I loved every minute", "brilliant and moving",
            "a joy to watch", "superb direction", "funny and warm", "the best film this year", "truly delightful",
            "a charming little gem", "beautifully shot", "smart and touching", "an excellent cast", "pure fun",
            "a lovely surprise"]
NEGATIVE = ["a boring mess", "terrible acting and a dull story", "I hated every minute", "awful and tedious",
            "a chore to sit through", "sloppy direction", "flat and cold", "the worst film this year",
            "truly dreadful", "a clumsy failure", "ugly to look at", "stupid and empty", "a wasted cast",
            "no fun at all", "a sad letdown"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "reviews.csv"
    rows = [(t, "good") for t in POSITIVE] + [(t, "bad") for t in NEGATIVE]
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def image_teacher(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "image-teacher"
    xfer.fit(data=str(image_folder), source="mobilenet_v2", image_size=32, out=str(out), **FAST)
    return xfer.load(out)


@pytest.fixture(scope="module")
def text_teacher(texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "text-teacher"
    xfer.fit(data=str(texts), source="all-MiniLM-L6-v2", max_length=16, out=str(out), **FAST)
    return xfer.load(out)


# --- the loss ------------------------------------------------------------------------------------------------

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.5]]
LABELS = [1, 2]


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_the_loss_is_hintons_on_a_hand_example():
    t = 2.0
    ce = sum(-math.log(_softmax(s)[y]) for s, y in zip(STUDENT, LABELS)) / 2
    # KL(p_teacher || p_student) at temperature 2, summed over classes, averaged over the 2 examples
    kl = sum(sum(p * math.log(p / q) for p, q in zip(_softmax([v / t for v in tr]), _softmax([v / t for v in sr])))
             for sr, tr in zip(STUDENT, TEACHER)) / 2
    expected = 0.5 * ce + 0.5 * t ** 2 * kl
    assert expected == pytest.approx(0.31001572470384875, abs=1e-12)  # the same numbers, written down once
    got = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), 2.0, 0.5)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_alpha_zero_is_plain_cross_entropy_and_alpha_one_the_soft_term_alone():
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    assert float(distillation_loss(s, t, y, 2.0, 0.0)) == pytest.approx(float(F.cross_entropy(s, y)), abs=1e-6)
    assert float(distillation_loss(s, s, y, 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)  # the student is the teacher
    # T^2 scaling: at alpha 1 the loss is T^2 * KL, so T=4 is 4x T=2 when the KL is the same (logits scaled by 2)
    assert float(distillation_loss(2 * s, 2 * t, y, 4.0, 1.0)) == pytest.approx(
        4 * float(distillation_loss(s, t, y, 2.0, 1.0)), rel=1e-5)
    with pytest.raises(XferError, match="temperature"):
        distillation_loss(s, t, y, 0.0, 0.5)
    with pytest.raises(XferError, match="alpha"):
        distillation_loss(s, t, y, 2.0, 1.5)


class Recorder(nn.Module):
    """A fixed linear teacher over pooled pixels that keeps the last batch it saw."""

    def __init__(self, channels=3, classes=3):
        super().__init__()
        self.linear = nn.Linear(channels, classes)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.linear(x.mean((2, 3)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_hooks_term_makes_the_loops_total_the_distillation_loss(smoothing):
    torch.manual_seed(0)
    teacher = Recorder()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    logits = torch.randn(4, 3, requires_grad=True)
    hook = Distill(teacher, temperature=3.0, alpha=0.7, label_smoothing=smoothing)
    # the loop: its own cross-entropy (with the fit's smoothing) plus the hooks' terms
    total = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, y) + hook.loss(logits, x, y)
    with torch.no_grad():
        expected = distillation_loss(logits, teacher(x), y, 3.0, 0.7)
    assert float(total) == pytest.approx(float(expected), abs=1e-6)
    (grad,) = torch.autograd.grad(total, logits)
    (want,) = torch.autograd.grad(distillation_loss(logits, teacher(x).detach(), y, 3.0, 0.7), logits)
    assert torch.allclose(grad, want, atol=1e-6)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_an_image_teacher_gets_the_batch_renormalised_with_its_own_statistics():
    teacher = Recorder()
    student_prep = {"kind": "image", "size": 8, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                    "interpolation": "bicubic", "channels": 3}
    teacher_prep = {**student_prep, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    pixels = torch.rand(2, 3, 8, 8)  # what both normalisations start from
    x_student = (pixels - 0.5) / 0.5
    hook = Distill(teacher, student_prep=student_prep, teacher_prep=teacher_prep)
    hook.teacher_logits(x_student)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(teacher.seen, (pixels - mean) / std, atol=1e-5)
    Distill(teacher, student_prep=student_prep, teacher_prep=student_prep).teacher_logits(x_student)
    assert torch.equal(teacher.seen, x_student)  # same statistics: the batch is passed as it is
    with pytest.raises(XferError, match="size"):
        Distill(teacher, student_prep={**student_prep, "size": 16}, teacher_prep=teacher_prep)


def test_the_tokenizer_check_ignores_call_settings_but_not_the_vocabulary(tmp_path):
    from xfer.data.loaders import load_tokenizer
    from xfer.sources import load_source, resolve_source

    source = load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir
    tok = load_tokenizer(source)
    tok(["some text to cut short"], truncation=True, max_length=5, padding=True)
    tok.save_pretrained(str(tmp_path / "same"))  # as a fit saves it: other truncation/padding bytes
    assert tokenizer_digest(tmp_path / "same") == tokenizer_digest(source)
    tok.add_tokens(["xferzzq"])
    tok.save_pretrained(str(tmp_path / "other"))
    assert tokenizer_digest(tmp_path / "other") != tokenizer_digest(source)


# --- end to end ----------------------------------------------------------------------------------------------

def _reload(variant, path):
    write_run(path, spec=variant.spec, weights=variant.model.state_dict(), backbone=variant.backbone)
    return xfer.load(path)


def test_an_image_run_distils_into_another_source_and_loads_back(image_teacher, image_folder, tmp_path):
    distilled = distill_run(image_teacher, "efficientnet_lite0", epochs=1)
    assert distilled.name == "distilled-efficientnet_lite0"
    assert set(distilled.metrics["test"]) >= {"accuracy", "macro_f1"} and "accuracy" in distilled.metrics["val"]
    assert distilled.spec["arch"] == "efficientnet_lite0" and distilled.backbone is None
    assert distilled.spec["prep"]["size"] == image_teacher.spec["prep"]["size"] == 32
    r = distilled.report
    assert r["teacher"] == str(image_teacher.path) and r["student"] == "efficientnet_lite0"
    assert (r["temperature"], r["alpha"], r["epochs"]) == (2.0, 0.5, 1)
    assert r["params_student"] == distilled.metrics["params"] == sum(p.numel() for p in distilled.model.parameters())
    assert r["transfer"]["backbone_fraction"] > 0.99  # the student's own pretrained weights, through `transfer`
    assert not distilled.model.training and next(distilled.model.parameters()).device.type == "cpu"

    run = _reload(distilled, tmp_path / "student")
    images = sorted(image_folder.rglob("*.png"))
    from xfer.data.task import Split

    split = Split(images, np.zeros(len(images), dtype=np.int64))
    expected = xfer.Run(distilled.model, distilled.spec).logits(split, precision="no")
    assert torch.allclose(run.logits(split, precision="no"), expected, atol=1e-5)

    # The control: the same student, same budget, no teacher. Only the hook differs, and it changed the weights.
    alone = distill_run(image_teacher, "efficientnet_lite0", epochs=1, teacher=False)
    assert alone.name == "student-efficientnet_lite0" and alone.report["temperature"] is None
    assert "accuracy" in alone.metrics["test"]
    w, v = distilled.model.state_dict(), alone.model.state_dict()
    assert not torch.equal(w["head.weight"], v["head.weight"])


def test_unknown_student_and_wrong_modality_are_user_errors(image_teacher):
    with pytest.raises(XferError, match="Unknown source 'mobilenet_v9'"):
        distill_run(image_teacher, "mobilenet_v9")
    with pytest.raises(XferError, match="student 'all-MiniLM-L6-v2' is a text model"):
        distill_run(image_teacher, "all-MiniLM-L6-v2")
    with pytest.raises(XferError, match="student_layers"):
        distill_run(image_teacher, "mobilenet_v2", student_layers=2)


def test_a_text_run_distils_into_a_truncated_minilm(text_teacher, tmp_path):
    distilled = distill_run(text_teacher, "all-MiniLM-L6-v2", student_layers=2, epochs=1)
    assert distilled.name == "distilled-all-MiniLM-L6-v2-2l"
    assert distilled.spec["encoder_layers"] == 2 and len(distilled.model.backbone.encoder.layer) == 2
    r = distilled.report
    assert r["student_layers"] == 2 and r["params_student"] < r["params_teacher"]
    assert r["transfer"]["backbone_fraction"] == 1.0  # layers 0-1 copied by name; 2-5 of the source unused
    assert r["transfer"]["unused_source_tensors"] > 0
    assert "accuracy" in distilled.metrics["test"]

    run = _reload(distilled, tmp_path / "student")
    assert run.model.backbone.config.num_hidden_layers == 2 and len(run.model.backbone.encoder.layer) == 2
    texts = ["a wonderful film", "a boring mess"]
    from xfer.data.task import Split

    split = Split(texts, np.zeros(2, dtype=np.int64))
    # the model in memory and the one rebuilt from the written spec and backbone/ give the same logits
    memory = xfer.Run(distilled.model, distilled.spec, path=run.path)
    assert torch.allclose(run.logits(split, precision="no"), memory.logits(split, precision="no"), atol=1e-5)


def test_a_student_with_another_tokenizer_is_refused(text_teacher, tmp_path):
    from xfer.data.loaders import load_tokenizer

    folder = RunFolder(text_teacher.path)
    tok = load_tokenizer(folder.backbone)
    tok.add_tokens(["xferzzq"])  # another vocabulary than the student's MiniLM

    def backbone(d):
        text_teacher.model.backbone.config.save_pretrained(d)
        tok.save_pretrained(str(d))

    write_run(tmp_path / "teacher", spec=text_teacher.spec, weights=text_teacher.model.state_dict(),
              config=folder.config(), backbone=backbone)
    with pytest.raises(XferError, match="same tokenizer"):
        distill_run(xfer.load(tmp_path / "teacher"), "all-MiniLM-L6-v2", student_layers=3, epochs=1)
    with pytest.raises(XferError, match="between 1 and 6"):
        distill_run(text_teacher, "all-MiniLM-L6-v2", student_layers=7, epochs=1)


def test_a_run_reading_rendered_text_distils_with_the_teachers_recipe(texts, tmp_path):
    out = tmp_path / "teacher"
    xfer.fit(data=str(texts), source="mobilenet_v2", render_size=32, render_font_size=8, out=str(out),
             **FAST)
    teacher = xfer.load(out)
    distilled = distill_run(teacher, "random:mobilenet_v2", epochs=1)
    assert distilled.spec["render"] == teacher.spec["render"] and distilled.spec["render"]["size"] == 32
    assert distilled.spec["prep"]["channels"] == teacher.spec["prep"]["channels"] == 1
    run = _reload(distilled, tmp_path / "student")
    assert [p["label"] for p in run.predict(["a wonderful film"])][0] in ("good", "bad")
