"""The Task: what the user wants to classify, as plain data (no tensors, no transforms)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    items: list  # image: pathlib.Path or HxW / HxWx3 uint8 array; text: str
    labels: np.ndarray  # int64 indices into Task.labels

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx) -> "Split":
        return Split([self.items[i] for i in idx], self.labels[np.asarray(idx, dtype=np.int64)])


@dataclass(frozen=True)
class Task:
    name: str  # identifies the data for caches and run names, e.g. "builtin:mnist5k" or a file path
    modality: str  # "image" | "text"
    labels: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    channels: int = 3  # image tasks: 1 for grey-scale data, which adapts the source's first conv
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. "skipped 3 unreadable images"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        return (f"{self.name}: {self.modality}, {self.num_classes} classes, "
                f"{len(self.train)}/{len(self.val)}/{len(self.test)} train/val/test")


def few_shot(task: Task, shots: int, seed: int = 0) -> Task:
    """The task with only `shots` training and validation examples per class (seeded); the test split is kept
    whole, so few-shot results are measured on as many examples as full-data ones."""
    from dataclasses import replace

    from xfer.errors import XferError

    if shots < 1:
        raise XferError(f"--shots must be at least 1, got {shots}.")
    rng = np.random.default_rng(seed)

    def take(split: Split, what: str) -> Split:
        idx = []
        for c in range(task.num_classes):
            members = np.flatnonzero(split.labels == c)
            if len(members) < shots:
                raise XferError(f"--shots {shots}: class {task.labels[c]!r} has only {len(members)} {what} "
                                f"examples. Lower --shots.")
            idx += sorted(rng.choice(members, shots, replace=False).tolist())
        return split.subset(sorted(idx))

    return replace(task, train=take(task.train, "training"), val=take(task.val, "validation"),
                   notes=(*task.notes, f"few-shot: {shots} training and {shots} validation examples per class"))
