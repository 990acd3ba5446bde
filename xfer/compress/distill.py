"""Knowledge distillation (Hinton et al., 2015): a smaller student learns the task from a fine-tuned run's logits.

The student is built as a fit builds any model (`prepare`: its own pretrained source, the normal `transfer`) on
the run's own task (same splits, seed and few-shot subset; texts rendered with the run's recipe), then fine-tuned
through the fitting core with a `Distill` hook that adds the teacher's soft targets to the loss. The control the
comparison needs, the same student fine-tuned with the same budget and no teacher, is `distill_run(...,
teacher=False)`.

A text student may keep only the first k layers of its encoder (`student_layers`): a 3-layer MiniLM is built from
MiniLM's config with `num_hidden_layers=3`, and the name-aware transfer copies layers 0..2 and leaves 3..5 unused.
The depth is recorded in the spec (`encoder_layers`) and in the student's own encoder config (backbone/).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xfer.compress.retrain import retrain, run_task
from xfer.compress.variant import Compressed
from xfer.data.loaders import ImagePrep, prep_from_dict
from xfer.errors import XferError
from xfer.fitting.device import seed_everything
from xfer.fitting.hooks import Hook
from xfer.fitting.prepare import Prepared, prepare
from xfer.hashing import sha256_file
from xfer.models import build_from_spec
from xfer.runs.folder import RunFolder
from xfer.runs.run import Run
from xfer.sources import load_source, resolve_source
from xfer.transfer import transfer


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    The KL is summed over classes and averaged over the batch ("batchmean", the true KL per example); T^2 keeps
    the soft term's gradients at the scale of the hard term's whatever the temperature (Hinton et al., 2015, 2.1).
    """
    _check_options(temperature, alpha)
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature ** 2 * soft


class Distill(Hook):
    """The teacher's soft targets as a loss term, at the loop's `loss` event.

    The loop always computes its own cross-entropy and adds the hooks' terms to it, so this hook returns
    `distillation_loss - CE`, with CE computed exactly as the loop does (mean over the batch, the fit's label
    smoothing): the loop's total is then `distillation_loss` itself, and the hard-label weight is (1 - alpha)
    instead of 1 + (1 - alpha). The teacher is frozen, in eval mode, run without gradients, and moved to the
    device of the batch when it first sees one.

    Image teachers get the student's batch re-normalised with their own statistics (x_t = (x_s * std_s + mean_s -
    mean_t) / std_t per channel) when `student_prep` and `teacher_prep` differ; the two must agree on size and
    channels, which `distill_run` ensures by building the student at the teacher's size.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 0.5,
                 label_smoothing: float = 0.0, student_prep: ImagePrep | dict | None = None,
                 teacher_prep: ImagePrep | dict | None = None):
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing
        self.scale = self.shift = None
        if student_prep is not None and teacher_prep is not None:
            s, t = _image_prep(student_prep), _image_prep(teacher_prep)
            if s.size != t.size or s.channels != t.channels:
                raise XferError(f"The student reads {s.channels}x{s.size}x{s.size} images and the teacher "
                                f"{t.channels}x{t.size}x{t.size}; distillation feeds both the same batch, so size "
                                f"and channels must match (build the student at the teacher's image size).")
            if (s.mean, s.std) != (t.mean, t.std):
                mean_s, std_s, mean_t, std_t = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                                                for v in (s.mean, s.std, t.mean, t.std))
                self.scale, self.shift = std_s / std_t, (mean_s - mean_t) / std_t

    def teacher_logits(self, inputs) -> torch.Tensor:
        """The teacher's logits for a student batch (same device, re-normalised for an image teacher)."""
        device = inputs.device if torch.is_tensor(inputs) else inputs["input_ids"].device
        first = next(self.teacher.parameters(), None)
        if first is not None and first.device != device:
            self.teacher.to(device)
        if self.scale is not None:
            self.scale, self.shift = self.scale.to(device), self.shift.to(device)
            inputs = inputs * self.scale.to(inputs.dtype) + self.shift.to(inputs.dtype)
        with torch.no_grad():
            return self.teacher(inputs).float()

    def loss(self, logits: torch.Tensor, inputs, labels: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_logits(inputs)
        loop_ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return distillation_loss(logits, teacher, labels, self.temperature, self.alpha) - loop_ce


def tokenizer_digest(folder: Path) -> str:
    """What identifies a tokenizer's behaviour: sha256 of its tokenizer.json (vocabulary, normaliser, special and
    added tokens) without the `truncation` and `padding` entries, which are per-call settings that
    `save_pretrained` writes as last used (a run saved after tokenising at max_length 16 differs from its source
    in those bytes only). Folders without tokenizer.json (slow tokenizers) are identified by their vocabulary
    files."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise XferError(f"{path} is not valid JSON ({e}).") from e
        content.pop("truncation", None)
        content.pop("padding", None)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    vocab = sorted(p for p in folder.iterdir() if p.name in ("vocab.txt", "vocab.json", "merges.txt")
                   or p.suffix == ".model")
    if not vocab:
        raise XferError(f"{folder} holds no tokenizer files (tokenizer.json, vocab.txt, ...).")
    return hashlib.sha256("|".join(f"{p.name}:{sha256_file(p)}" for p in vocab).encode()).hexdigest()


def distill_run(run: Run, student: str, *, epochs: int = 2, temperature: float = 2.0, alpha: float = 0.5,
                student_layers: int | None = None, lr: float | None = None, teacher: bool = True,
                log: Callable[[str], None] | None = None) -> Compressed:
    """Distil the fine-tuned `run` (the teacher) into the pretrained source `student`, on the run's own task.

    `student_layers` keeps the first k encoder layers of a text student. `teacher=False` fine-tunes the same
    student for the same epochs without a teacher: the control that says what distillation added. The returned
    variant's metrics are val/test as `fit` writes them, plus "params".
    """
    log = log or (lambda msg: None)
    source = resolve_source(student)  # an unknown name fails here, before any data is read
    if epochs < 1:
        raise XferError(f"Distillation needs at least 1 epoch, got {epochs}.")
    _check_options(temperature, alpha)
    if source.modality != run.spec["modality"]:
        seen = "rendered images" if run.spec.get("render") else run.spec["modality"]
        raise XferError(f"The run's model reads {seen} but the student {student!r} is a {source.modality} model; "
                        f"teacher and student are fed the same batches, so the student must be a "
                        f"{run.spec['modality']} source too.")
    if student_layers is not None and source.modality != "text":
        raise XferError(f"student_layers keeps the first layers of a text encoder; {student!r} is an image model. "
                        f"Pick a smaller image architecture as the student instead.")
    cfg, task = run_task(run)
    if tuple(task.labels) != run.labels:
        raise XferError(f"The labels of {cfg.data} ({list(task.labels)[:10]}) are not the run's "
                        f"({list(run.labels)[:10]}); the data changed since {run.path} was fitted.")
    loaded = load_source(source)
    if source.modality == "text":
        teacher_dir = RunFolder(run.path).backbone
        if tokenizer_digest(teacher_dir) != tokenizer_digest(loaded.hf_dir):
            raise XferError(f"Distillation needs the same tokenizer for teacher and student: the student "
                            f"{student!r} splits text into other tokens than the run {run.path} "
                            f"({teacher_dir / 'tokenizer.json'}), so the teacher could not read the student's "
                            f"batches. Pick a student with the teacher's tokenizer (e.g. the teacher's source with "
                            f"student_layers=k).")
    scfg = replace(cfg, source=student, arch=None, strategy="full", baseline=False,
                   image_size=run.spec["prep"]["size"] if source.modality == "image" else cfg.image_size)
    prep = prepare(scfg, task=task, source=loaded, log=log)
    if student_layers is not None:
        _truncate(prep, student_layers, log)
    spec = prep.spec
    if spec.get("render") != run.spec.get("render"):
        raise XferError(f"The student renders texts as {spec.get('render')} but the teacher as "
                        f"{run.spec.get('render')}; distillation needs both to read the same images.")
    if spec["modality"] == "image":
        s, t = prep_from_dict(spec["prep"]), prep_from_dict(run.spec["prep"])
        if (s.size, s.channels) != (t.size, t.channels):
            raise XferError(f"The student was built for {s.channels}x{s.size} px inputs and the teacher reads "
                            f"{t.channels}x{t.size} px; they must match.")
    hooks = ()
    if teacher:
        hooks = (Distill(run.model, temperature=temperature, alpha=alpha, label_smoothing=prep.cfg.label_smoothing,
                         student_prep=spec["prep"] if spec["modality"] == "image" else None,
                         teacher_prep=run.spec["prep"] if spec["modality"] == "image" else None),)
    teacher_device = next(run.model.parameters()).device
    name = f"{'distilled' if teacher else 'student'}-{student}" + (f"-{student_layers}l" if student_layers else "")
    log(f"[bold]{name}:[/] {epochs} epoch(s) " + (f"with the teacher {run.path} (T={temperature:g}, "
                                                   f"alpha={alpha:g})" if teacher else "without a teacher"))
    metrics = retrain(prep.model, prep.cfg, prep.datasets, task.labels, epochs=epochs, lr=lr, hooks=hooks, log=log)
    run.model.to(teacher_device)
    model = prep.model.cpu().eval()
    params_student = sum(p.numel() for p in model.parameters())
    params_teacher = sum(p.numel() for p in run.model.parameters())
    metrics["params"] = params_student
    report = {"teacher": str(run.path) if run.path else None, "student": student, "student_layers": student_layers,
              "distilled": teacher, "temperature": temperature if teacher else None,
              "alpha": alpha if teacher else None, "epochs": epochs, "params_teacher": params_teacher,
              "params_student": params_student, "transfer": prep.report.summary()}
    backbone = _encoder_writer(model, prep.tokenizer) if spec["modality"] == "text" else None
    return Compressed(name, model, spec, metrics, report, backbone)


def _truncate(prep: Prepared, layers: int, log: Callable[[str], None]) -> None:
    """Rebuild the prepared text model with its first `layers` encoder layers and transfer into it again.

    `prepare` has no notion of depth, so the spec gets `encoder_layers` and the model is built from it as `load`
    will build it; name matching copies the kept layers and leaves the source's deeper ones unused."""
    prep.spec["encoder_layers"] = layers
    seed_everything(prep.cfg.seed)
    prep.model = build_from_spec(prep.spec, prep.source.hf_dir)
    prep.report = transfer(prep.source.state_dict, prep.model,
                           allow_partial=prep.cfg.allow_partial_transfer or prep.source.spec.origin == "random")
    s = prep.report.summary()
    log(f"student: the first {layers} encoder layers; transfer: {s['copied']} copied, {s['re-initialised']} "
        f"re-initialised, {s['unused_source_tensors']} source tensors unused (deeper layers); "
        f"{s['backbone_fraction']:.1%} of backbone parameters from the source")


def _encoder_writer(model: nn.Module, tokenizer) -> Callable[[Path], None]:
    """A text student's backbone/ folder: its own (possibly truncated) encoder config and the tokenizer."""
    def write(folder: Path) -> None:
        model.backbone.config.save_pretrained(folder)
        tokenizer.save_pretrained(str(folder))
    return write


def _check_options(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise XferError(f"The distillation temperature must be positive (e.g. 2), got {temperature}.")
    if not 0.0 <= alpha <= 1.0:
        raise XferError(f"The distillation weight alpha must be between 0 and 1 (e.g. 0.5), got {alpha}.")


def _image_prep(prep: ImagePrep | dict) -> ImagePrep:
    return prep if isinstance(prep, ImagePrep) else prep_from_dict(prep)
