"""Text defences and attacks on a run: the run's softmax as the black-box scorer of xfer/robust/text.py.

`defended_logits` is what `Run.logits` answers for a run saved with a text defence; `text_robustness` is the text
half of `xfer robust`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from xfer.data.task import Split
from xfer.robust.text import (CHAR_KINDS, WORD_KINDS, apply_text_defence, greedy_attack, random_attack,
                              transferred)

GROUPS = {"char": CHAR_KINDS, "word": WORD_KINDS}


def vocabulary(run) -> set[str] | None:
    """Whole words of the run's tokenizer vocabulary: the dictionary of the spelling defence (no download)."""
    tok = run.tokenizer
    if tok is None and run.path is not None:
        from xfer.data.loaders import load_tokenizer
        from xfer.runs.folder import RunFolder

        tok = run.tokenizer = load_tokenizer(RunFolder(run.path).backbone)
    if tok is None:
        return None
    return {w for w in tok.get_vocab() if w.isalpha() and len(w) > 1}


def scorer(run, batch_size: int = 64, precision: str = "auto") -> Callable[[list[str]], np.ndarray]:
    """texts -> softmax probabilities of the undefended model."""
    def proba(texts: list[str]) -> np.ndarray:
        split = Split(list(texts), np.zeros(len(texts), dtype=np.int64))
        return run.logits(split, batch_size, precision, defence=False).float().softmax(1).numpy()

    return proba


def defended_scorer(run, defence: dict, proba: Callable[[list[str]], np.ndarray] | None = None, seed: int = 0,
                    vocab: set[str] | None = None):
    """The scorer behind a text defence (`proba`: the undefended scorer, default the run's own; `vocab`: the
    spelling defence's dictionary, default the run's tokenizer's). A randomised defence draws from its own
    generator, seeded here."""
    options = dict(defence["options"])
    if defence["name"] == "token-dropout":
        options.update(draws=defence["draws"], seed=seed)
    if defence["name"] == "spelling" and vocab is None:
        vocab = vocabulary(run)
    return apply_text_defence(defence["name"], options, proba or scorer(run), vocab)


def defended_logits(run, split: Split, defence: dict, batch_size: int = 64, precision: str = "auto") -> torch.Tensor:
    """Log-probabilities behind a text defence (a randomised one averaged over its draws, seeded: repeatable)."""
    if not len(split):
        return torch.zeros((0, len(run.labels)))
    probs = defended_scorer(run, defence, scorer(run, batch_size, precision))([str(t) for t in split.items])
    return torch.log(torch.as_tensor(probs, dtype=torch.float32) + 1e-12)


def text_robustness(run, split: Split, attacks: Sequence[str] | None, rates: Sequence[float], defences: list[dict],
                    candidates: int = 8, seed: int = 0, log: Callable[[str], None] = lambda m: None):
    """Clean accuracy, and rows of accuracy under random edits of each kind and the greedy attack of each group
    (char, word) at every rate; with defences, the naive and the adaptive greedy attack side by side."""
    from xfer.errors import XferError

    groups = list(attacks or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise XferError(f"Unknown text attack(s) {unknown}; text attacks: {', '.join(GROUPS)} (character or word "
                        f"edits).")
    if any(not 0 < r <= 1 for r in rates):
        raise XferError(f"--rates are edits per word, above 0 and at most 1, got {list(rates)}.")
    texts, labels = [str(t) for t in split.items], np.asarray(split.labels)
    proba = scorer(run)
    vocab = vocabulary(run) if any(d["name"] == "spelling" for d in defences) else None
    clean = float((proba(texts).argmax(1) == labels).mean())
    rows = []
    for d in defences:  # the defence's cost on clean inputs
        acc = float((defended_scorer(run, d, proba, seed, vocab)(texts).argmax(1) == labels).mean())
        rows.append({"attack": "none", "eps": 0.0, "defence": d["name"], "adaptive": False, "accuracy": acc,
                     "attack_success_rate": 0.0})
    for rate in rates:
        for group in groups:
            for kind in GROUPS[group]:
                r = random_attack(texts, labels, proba, kind, rate, seed)
                rows.append(_row(f"random-{kind}", rate, None, False, r))
            # Crafted once against the plain model: its own row, and the naive attack on every defence.
            crafted = greedy_attack(texts, labels, proba, GROUPS[group], rate, candidates, seed, return_texts=True)
            rows.append(_row(f"greedy-{group}", rate, None, False, crafted))
            for d in defences:
                defended = defended_scorer(run, d, proba, seed, vocab)
                rows.append(_row(f"greedy-{group}", rate, d["name"], False,
                                 transferred(texts, labels, crafted, defended)))
                rows.append(_row(f"greedy-{group}", rate, d["name"], True,
                                 greedy_attack(texts, labels, defended, GROUPS[group], rate, candidates, seed)))
            log(f"rate {rate:g} {group}: " + ", ".join(f"{x['attack']}{'+' + x['defence'] if x['defence'] else ''}"
                                                     f"{'(adaptive)' if x['adaptive'] else ''} {x['accuracy']:.3f}"
                                                     for x in rows if x["eps"] == rate))
    return clean, rows


def _row(attack: str, rate: float, defence: str | None, adaptive: bool, r: dict) -> dict:
    return {"attack": attack, "eps": rate, "defence": defence, "adaptive": adaptive, "accuracy": r["accuracy"],
            "attack_success_rate": r["attack_success_rate"], **({"queries": r["queries"]} if "queries" in r else {})}
