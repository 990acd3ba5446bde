"""Text robustness: character and word perturbations, random and greedy black-box attacks, and text defences.

Everything works on a black-box scorer `proba(texts) -> (n, classes) probabilities` (a fine-tuned text run's
softmax), so an attack needs no gradients and a defence is simply composed in front of the scorer.

Perturbations (`perturb`): character edits `swap`, `delete`, `insert`, `typo` in the spirit of DeepWordBug (Gao et
al., 2018, "Black-box generation of adversarial text sequences to evade deep learning classifiers"): one edit each
in distinct words; word edits `word-delete`, `word-shuffle`. An edit rate r gives max(1, round(r * words)) edits
(half rounded up) of either kind, so 5/10/20% mean the same number of edits for both; r = 0 means no edit.

Attacks: `random_attack` (one random perturbation per text) and `greedy_attack` (per step, score `candidates`
single edits and keep the one that lowers the true label's probability most: the black-box analogue of HotFlip's
greedy flips, Ebrahimi et al., 2018, and of DeepWordBug's scored edits).

Defences (strings in, strings out): `normalise_lookalikes`, `remove_spelling_noise` (a cheap word-recognition
step after Pruthi et al., 2019, "Combating Adversarial Misspellings with Robust Word Recognition"), and the
randomised `token_dropout`, averaged over draws by `randomised_proba`. `apply_text_defence` returns a defended
scorer. Evaluating a defence honestly needs both attacks (`attack_defended` runs them side by side):
- adaptive: `greedy_attack` against the defended scorer; it queries the whole pipeline (for token dropout, the
  average over draws: Expectation over Transformation, Athalye et al., 2018), so it searches for edits that survive;
- naive (transfer): adversarial texts crafted against the undefended scorer, then scored by the defended one
  (`transfer_attack`). A defence that only beats the naive attack is not robust.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from xfer.errors import XferError

Proba = Callable[[list[str]], np.ndarray]

CHAR_KINDS = ("swap", "delete", "insert", "typo")
WORD_KINDS = ("word-delete", "word-shuffle")
KINDS = CHAR_KINDS + WORD_KINDS
SHUFFLE_WINDOW = 3  # word-shuffle swaps two words at most this many positions apart

# Keys that touch each other on a US QWERTY keyboard (same row left/right, and the two nearest keys of the rows above
# and below, with the rows' stagger: a sits between q and w, z between a and s). Symmetric; tested.
QWERTY = {
    "q": "wa", "w": "qeas", "e": "wrsd", "r": "etdf", "t": "ryfg", "y": "tugh", "u": "yihj", "i": "uojk",
    "o": "ipkl", "p": "ol",
    "a": "sqwz", "s": "adwezx", "d": "sferxc", "f": "dgrtcv", "g": "fhtyvb", "h": "gjyubn", "j": "hkuinm",
    "k": "jliom", "l": "kop",
    "z": "xas", "x": "zcsd", "c": "xvdf", "v": "cbfg", "b": "vngh", "n": "bmhj", "m": "njk",
}


# --- a text as words and the whitespace between them ---------------------------------------------------------------

class _Text(NamedTuple):
    """Words, the whitespace around them (len(words) + 1 pieces) and which words an edit has touched."""
    words: tuple[str, ...]
    seps: tuple[str, ...]
    touched: tuple[bool, ...]


def _parse(text: str) -> _Text:
    parts = re.split(r"(\S+)", text)
    words = tuple(parts[1::2])
    return _Text(words, tuple(parts[0::2]), (False,) * len(words))


def _join(t: _Text) -> str:
    return "".join(s + w for s, w in zip(t.seps, t.words + ("",)))


def _without(t: _Text, i: int) -> _Text:
    """Word i removed with one of the whitespace pieces beside it (the one after, or before the last word)."""
    j = i + 1 if i < len(t.words) - 1 else i
    return _Text(t.words[:i] + t.words[i + 1:], t.seps[:j] + t.seps[j + 1:], t.touched[:i] + t.touched[i + 1:])


def _budget(n_words: int, rate: float) -> int:
    """max(1, round(rate * words)) edits, half rounded up; rate 0 (or no words) is no edit."""
    if rate == 0 or n_words == 0:
        return 0
    return max(1, int(np.floor(rate * n_words + 0.5)))


# --- single edits ----------------------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _spots(word: str, kind: str) -> list[int]:
    """Where a character edit of this kind can go in this word (only letters are edited)."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if kind == "swap":
        return [i for i in letters if i + 1 < len(word) and word[i + 1].isalpha() and word[i] != word[i + 1]]
    if kind == "delete":
        return letters if len(letters) >= 2 else []  # never delete a word's only letter
    if kind == "insert":
        return sorted({p for i in letters for p in (i, i + 1)})
    return [i for i in letters if word[i].lower() in QWERTY]  # typo


def _char_edit(word: str, kind: str, i: int, rng: np.random.Generator) -> str:
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "delete":
        return word[:i] + word[i + 1:]
    if kind == "insert":
        beside = word[i] if i < len(word) and word[i].isalpha() else word[i - 1]
        c = string.ascii_lowercase[int(rng.integers(26))]
        return word[:i] + (c.upper() if beside.isupper() else c) + word[i:]
    c = _pick(rng, QWERTY[word[i].lower()])
    return word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1:]


def _edit(t: _Text, kind: str, rng: np.random.Generator) -> _Text | None:
    """One edit of this kind at a random place, or None where none is possible."""
    if kind in CHAR_KINDS:
        spots = {i: _spots(w, kind) for i, w in enumerate(t.words) if not t.touched[i]}
        spots = {i: s for i, s in spots.items() if s}
        n_letters = {i: sum(ch.isalpha() for ch in t.words[i]) for i in spots}
        # words of one letter ("a", "I") only when no longer word is left
        words = [i for i in spots if n_letters[i] >= 2] or list(spots)
        if not words:
            return None
        i = _pick(rng, words)
        w = _char_edit(t.words[i], kind, _pick(rng, spots[i]), rng)
        return _Text(t.words[:i] + (w,) + t.words[i + 1:], t.seps, t.touched[:i] + (True,) + t.touched[i + 1:])
    n = len(t.words)
    if kind == "word-delete":
        return _without(t, int(rng.integers(n))) if n >= 2 else None  # never leave a text without words
    pairs = [(i, j) for i in range(n) for j in range(i + 1, min(n, i + SHUFFLE_WINDOW + 1)) if t.words[i] != t.words[j]]
    fresh = [(i, j) for i, j in pairs if not (t.touched[i] or t.touched[j])]
    if not pairs:
        return None
    i, j = _pick(rng, fresh or pairs)
    words, touched = list(t.words), list(t.touched)
    words[i], words[j] = words[j], words[i]
    touched[i] = touched[j] = True
    return _Text(tuple(words), t.seps, tuple(touched))


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise XferError(f"Unknown perturbation {kind!r}; choose one of: {', '.join(KINDS)}.")
    return kind


def _check_rate(rate: float) -> float:
    if not 0 <= rate <= 1:
        raise XferError(f"An edit rate is a fraction of the words in [0, 1] (0.05: one edit per 20 words); got {rate}.")
    return float(rate)


def perturb(text: str, kind: str, rate: float, rng: np.random.Generator) -> str:
    """`text` with max(1, round(rate * words)) random edits of `kind` (none at rate 0).

    Character edits go to distinct words (one each, as DeepWordBug), touch only letters and skip one-letter words
    unless no longer word is left; fewer edits are made when fewer words can take one. Whitespace is kept as it
    was. A text never loses its last word (word-delete stops at one); a text with nothing to edit is returned as is.
    """
    _check_kind(kind)
    t = _parse(text)
    for _ in range(_budget(len(t.words), _check_rate(rate))):
        edited = _edit(t, kind, rng)
        if edited is None:
            break
        t = edited
    return _join(t)


# --- attacks ---------------------------------------------------------------------------------------------------------

def _check_inputs(texts: Sequence[str], labels) -> tuple[list[str], np.ndarray]:
    texts = list(texts)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not texts:
        raise XferError("No texts to attack: give at least one labelled example.")
    if len(labels) != len(texts):
        raise XferError(f"{len(texts)} texts but {len(labels)} labels: give one label per text.")
    return texts, labels


def _score(proba: Proba, texts: list[str], labels: np.ndarray | None = None) -> np.ndarray:
    p = np.asarray(proba(texts), dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(texts):
        raise XferError(f"The scorer must return an (n, classes) probability array; for {len(texts)} texts it "
                        f"returned shape {p.shape}.")
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= p.shape[1]):
        raise XferError(f"Labels must lie in 0..{p.shape[1] - 1} (the scorer's classes), got {labels.min()}.."
                        f"{labels.max()}.")
    return p


def _summary(correct0: np.ndarray, correct: np.ndarray, **extra) -> dict:
    """Accuracy under attack counts an example only when it was right before and after: an attack never fixes one."""
    correct = correct & correct0
    n_right = int(correct0.sum())
    return {"accuracy": float(correct.mean()), "clean_accuracy": float(correct0.mean()),
            "attack_success_rate": float((correct0 & ~correct).sum() / n_right) if n_right else 0.0,
            "n": len(correct0), **extra}


def random_attack(texts: Sequence[str], labels, proba: Proba, kind: str, rate: float, seed: int = 0) -> dict:
    """One random perturbation per text: {"accuracy", "clean_accuracy", "attack_success_rate", "n"}.

    The success rate is the fraction of originally correct examples that the perturbation makes wrong, so accuracy
    = clean_accuracy * (1 - attack_success_rate).
    """
    texts, labels = _check_inputs(texts, labels)
    _check_kind(kind)
    _check_rate(rate)
    rng = np.random.default_rng(seed)
    noisy = [perturb(t, kind, rate, rng) for t in texts]
    p = _score(proba, texts + noisy, labels)
    pred = p.argmax(1)
    n = len(texts)
    return _summary(pred[:n] == labels, pred[n:] == labels)


def greedy_attack(texts: Sequence[str], labels, proba: Proba, kinds: str | Sequence[str] = CHAR_KINDS,
                  rate: float = 0.1, candidates: int = 8, seed: int = 0, return_texts: bool = False) -> dict:
    """Greedy black-box attack: per step, `candidates` single edits (kinds drawn at random), keep the best one.

    Each originally correct example gets at most max(1, round(rate * words)) steps; a step scores distinct
    single-edit variants of the current text and keeps the one with the lowest true-label probability if it is
    lower than now (otherwise the text stays as it is); the example stops once it is misclassified. All examples'
    candidates of a step go to the scorer in one call. Originally wrong examples are not attacked and stay wrong.

    Returns {"accuracy", "clean_accuracy", "attack_success_rate", "n", "queries"} (queries: texts scored,
    the clean ones included), and "texts" (the adversarial texts, in order) with `return_texts`.
    """
    texts, labels = _check_inputs(texts, labels)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise XferError(f"Give at least one perturbation kind: {', '.join(KINDS)}.")
    for k in kinds:
        _check_kind(k)
    _check_rate(rate)
    if candidates < 1:
        raise XferError(f"candidates is the number of edits scored per step, at least 1; got {candidates}.")
    rng = np.random.default_rng(seed)
    p = _score(proba, texts, labels)
    queries = len(texts)
    correct0 = p.argmax(1) == labels
    correct = correct0.copy()
    current = list(texts)
    states = [_parse(t) for t in texts]
    true_p = p[np.arange(len(texts)), labels]
    steps_left = [_budget(len(s.words), rate) for s in states]
    active = [i for i in range(len(texts)) if correct0[i] and steps_left[i] > 0]
    while active:
        batch: list[str] = []
        owners: list[tuple[int, _Text]] = []
        for i in active:
            seen = {current[i]}
            for _ in range(candidates):
                edited = _edit(states[i], _pick(rng, kinds), rng)
                if edited is not None and (t := _join(edited)) not in seen:
                    seen.add(t)
                    batch.append(t)
                    owners.append((i, edited))
        if not batch:
            break
        scores = _score(proba, batch)
        queries += len(batch)
        best: dict[int, int] = {}
        for k, (i, _) in enumerate(owners):
            p_true = scores[k, labels[i]]
            if p_true < true_p[i] and (i not in best or p_true < scores[best[i], labels[i]]):
                best[i] = k
        for i, k in best.items():
            states[i], current[i] = owners[k][1], batch[k]
            true_p[i] = scores[k, labels[i]]
            correct[i] = scores[k].argmax() == labels[i]
        had_candidates = {i for i, _ in owners}
        for i in active:
            steps_left[i] -= 1
        active = [i for i in active if correct[i] and steps_left[i] > 0 and i in had_candidates]
    result = _summary(correct0, correct, queries=queries)
    if return_texts:
        result["texts"] = current
    return result


def transfer_attack(texts: Sequence[str], labels, proba_attack: Proba, proba_eval: Proba,
                    kinds: str | Sequence[str] = CHAR_KINDS, rate: float = 0.1, candidates: int = 8,
                    seed: int = 0) -> dict:
    """The naive attack on a defence: greedy texts crafted against `proba_attack` (the undefended model), then
    scored by `proba_eval` (the defended one). Counts as `greedy_attack` does, from `proba_eval`'s clean
    predictions; "queries" are the crafting queries."""
    texts, labels = _check_inputs(texts, labels)
    crafted = greedy_attack(texts, labels, proba_attack, kinds, rate, candidates, seed, return_texts=True)
    return transferred(texts, labels, crafted, proba_eval)


def transferred(texts: Sequence[str], labels, crafted: dict, proba_eval: Proba) -> dict:
    """Texts a `greedy_attack(..., return_texts=True)` crafted against one scorer, scored by another (the naive
    attack on a defence), counted from `proba_eval`'s clean predictions; "queries" are the crafting queries."""
    texts, labels = _check_inputs(texts, labels)
    pred = _score(proba_eval, texts + list(crafted["texts"]), labels).argmax(1)
    n = len(texts)
    return _summary(pred[:n] == labels, pred[n:] == labels, queries=crafted["queries"])


# --- defences --------------------------------------------------------------------------------------------------------

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))  # zero-width chars, soft hyphen
# Cyrillic and Greek letters drawn like Latin ones (after Unicode's confusables.txt, the common subset).
_LOOKALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i", "ѕ": "s", "ԁ": "d", "ј": "j",
    "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X",
    "У": "Y", "І": "I", "Ѕ": "S", "Ј": "J", "Ԛ": "Q", "Ԝ": "W",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o", "ι": "i", "ν": "v", "α": "a", "υ": "u", "κ": "k",
})


def normalise_lookalikes(text: str, mixed_script_only: bool = False) -> str:
    """Undo look-alike characters: zero-width characters and soft hyphens removed, Unicode NFKC (fullwidth
    letters, ligatures, mathematical letters -> plain), then common Cyrillic/Greek look-alikes -> Latin.

    Protects against homoglyph and invisible-character attacks that leave a word looking unchanged ("gооd" with
    Cyrillic o's). Does not protect against look-alikes outside the table, accented letters ("göod"), or any edit a
    reader can see (typos, deletions, word edits). It rewrites genuine Cyrillic or Greek words too; with
    `mixed_script_only` only words that also hold a Latin letter are mapped (an all-Cyrillic look-alike then passes).
    """
    text = unicodedata.normalize("NFKC", text.translate(_INVISIBLE))
    if not mixed_script_only:
        return text.translate(_LOOKALIKES)
    return re.sub(r"\S+", lambda m: m[0].translate(_LOOKALIKES) if re.search("[A-Za-z]", m[0]) else m[0], text)


def vocabulary_from(texts: Iterable[str], min_count: int = 1) -> dict[str, int]:
    """Word frequencies (lower case, alphabetic words, outer punctuation stripped) of the training texts: the
    vocabulary `remove_spelling_noise` repairs towards, with no download. Build it from training texts only."""
    counts: dict[str, int] = {}
    for text in texts:
        for token in text.split():
            _, core, _ = _split_outer(token)
            if core.isalpha():
                counts[core.lower()] = counts.get(core.lower(), 0) + 1
    return {w: c for w, c in counts.items() if c >= min_count}


def _split_outer(token: str) -> tuple[str, str, str]:
    """Leading punctuation, the core (first to last letter or digit), trailing punctuation."""
    m = re.match(r"^([\W_]*)(.*?)([\W_]*)$", token, flags=re.S)
    return m[1], m[2], m[3]


def _one_edit_away(word: str) -> set[str]:
    """Every string at Damerau-Levenshtein distance 1 (a-z letters), as Norvig's spelling corrector builds them."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in string.ascii_lowercase}
    out |= {a + c + b for a, b in splits for c in string.ascii_lowercase}
    out.discard(word)
    return out


def _same_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def _fix_word(core: str, vocabulary: Mapping[str, int] | set[str] | None) -> str:
    core = re.sub(r"([^\W\d_])\1{2,}", r"\1\1", core)  # "baaaad" -> "baad"
    parts = re.split(r"[^\w'’]+|_", core)  # inner punctuation; apostrophes (don't, it's) are left alone
    if len(parts) > 1 and all(p.isalpha() for p in parts):
        joined = "".join(parts)
        if all(len(p) == 1 for p in parts) or (
                vocabulary is not None and joined.lower() in vocabulary
                and not all(p.lower() in vocabulary for p in parts)):
            core = joined  # "b.a.d" -> "bad"; "gr-eat" -> "great", but "well-known" stays
    if vocabulary is None or not core.isalpha() or len(core) < 2 or core.lower() in vocabulary:
        return core
    near = [w for w in _one_edit_away(core.lower()) if w in vocabulary]
    if isinstance(vocabulary, Mapping) and len(near) > 1:
        top = max(vocabulary[w] for w in near)
        near = [w for w in near if vocabulary[w] == top]
    return _same_case(near[0], core) if len(near) == 1 else core


def remove_spelling_noise(text: str, vocabulary: Mapping[str, int] | set[str] | None = None) -> str:
    """Undo common misspelling noise, word by word (whitespace and outer punctuation kept):
    - runs of 3+ identical letters -> 2 ("gooood" -> "good");
    - punctuation inside a word removed when every piece is one letter ("b.a.d", "g-o-o-d"), or, given a
      vocabulary, when the joined word is known and the pieces are not all known ("gr-eat" -> "great";
      "well-known" stays); apostrophes are never removed;
    - given a vocabulary (`vocabulary_from(training texts)`), an unknown alphabetic word becomes the known word at
      Damerau-Levenshtein distance 1 (one insertion, deletion, substitution or adjacent swap) when there is exactly
      one; with frequencies (a dict), the most frequent one (a tie leaves the word alone). This is a cheap word
      recognition step after Pruthi et al. (2019).

    Protects against single character edits per word (typos, swaps, insertions, deletions, repeated letters) that
    produce a non-word. Does not protect against edits that make another known word ("good" -> "food"), two or
    more edits in one word, ambiguous repairs, word deletion or reordering, or look-alike characters (apply
    `normalise_lookalikes` first); it can also "repair" a correct rare word missing from the vocabulary.
    """
    def fix(m: re.Match) -> str:
        lead, core, trail = _split_outer(m[0])
        return lead + _fix_word(core, vocabulary) + trail if core else m[0]
    return re.sub(r"\S+", fix, text)


def token_dropout(text: str, p: float, rng: np.random.Generator) -> str:
    """Each word dropped with probability p, at least one kept (p = 0: the text unchanged). A randomised defence:
    averaged over draws (`randomised_proba`) it dilutes a few edited words among many clean ones. It does not
    remove an edit, only sometimes hides it, so an attack against the average (EOT) still finds edits that work;
    it also costs clean accuracy when the class hangs on a single word."""
    if not 0 <= p < 1:
        raise XferError(f"token-dropout p is the probability of dropping a word, in [0, 1); got {p}.")
    t = _parse(text)
    if p == 0 or not t.words:
        return text
    keep = rng.random(len(t.words)) >= p
    if not keep.any():
        keep[int(rng.integers(len(keep)))] = True
    for i in np.flatnonzero(~keep)[::-1]:
        t = _without(t, int(i))
    return _join(t)


def randomised_proba(proba: Proba, texts: Sequence[str], p: float, draws: int,
                     seed: int | np.random.Generator = 0) -> np.ndarray:
    """The average of `proba` over `draws` token dropouts of every text (one scorer call): what predict returns
    with this defence, and what an EOT attack queries."""
    if draws < 1:
        raise XferError(f"draws is the number of random dropouts averaged, at least 1; got {draws}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    texts = list(texts)
    dropped = [token_dropout(t, p, rng) for _ in range(draws) for t in texts]
    return _score(proba, dropped).reshape(draws, len(texts), -1).mean(0)


DEFENCES: dict[str, Callable[..., str]] = {
    "lookalikes": normalise_lookalikes,
    "spelling": remove_spelling_noise,
    "token-dropout": token_dropout,
}
_OPTIONS = {"lookalikes": {"mixed_script_only"}, "spelling": set(), "token-dropout": {"p", "draws", "seed"}}


def apply_text_defence(name: str, options: Mapping | None, proba: Proba,
                       vocabulary: Mapping[str, int] | set[str] | None = None) -> Proba:
    """A defended scorer: the defence's transform, then `proba`. Chain calls to stack defences.

    Options: lookalikes {mixed_script_only}; spelling: none (the `vocabulary` argument); token-dropout {p (0.1),
    draws (8), seed (0)}: every call averages `draws` fresh dropouts from one generator seeded once, so repeated
    queries see new randomness, as a deployed model's would, while a whole run stays reproducible.
    """
    if name not in DEFENCES:
        raise XferError(f"Unknown text defence {name!r}; choose one of: {', '.join(DEFENCES)}.")
    options = dict(options or {})
    if unknown := set(options) - _OPTIONS[name]:
        raise XferError(f"Text defence {name!r} has no option(s) {', '.join(sorted(unknown))}; its options: "
                        f"{', '.join(sorted(_OPTIONS[name])) or 'none'}.")
    if name == "lookalikes":
        mixed = bool(options.get("mixed_script_only", False))
        return lambda texts: proba([normalise_lookalikes(t, mixed) for t in texts])
    if name == "spelling":
        return lambda texts: proba([remove_spelling_noise(t, vocabulary) for t in texts])
    p, draws = float(options.get("p", 0.1)), int(options.get("draws", 8))
    if not 0 <= p < 1:
        raise XferError(f"token-dropout p is the probability of dropping a word, in [0, 1); got {p}.")
    rng = np.random.default_rng(int(options.get("seed", 0)))
    return lambda texts: randomised_proba(proba, texts, p, draws, rng)


def attack_defended(texts: Sequence[str], labels, proba: Proba, defence: str, options: Mapping | None = None, *,
                    kinds: str | Sequence[str] = CHAR_KINDS, rate: float = 0.1, candidates: int = 8, seed: int = 0,
                    vocabulary: Mapping[str, int] | set[str] | None = None) -> dict:
    """Naive and adaptive attacks on a defence, side by side: {"undefended", "naive", "adaptive"}, each a
    `greedy_attack`-style summary, and "robust_accuracy", the lower of the two attacks' accuracies.

    "undefended": greedy against `proba`; "naive": those texts scored through the defence (`transfer_attack`);
    "adaptive": greedy against the defended scorer itself (black-box, so it attacks the whole pipeline; for token
    dropout, the average over draws, i.e. EOT). Against a deterministic transform the adaptive attack is normally
    the stronger; against a randomised one its search steers by noisy scores and can end a little weaker than the
    transfer of a noise-free search, which is why the robust accuracy is the worse of the two.
    """
    defended = apply_text_defence(defence, options, proba, vocabulary)
    crafted = greedy_attack(texts, labels, proba, kinds, rate, candidates, seed, return_texts=True)
    naive = transferred(texts, labels, crafted, defended)
    adaptive = greedy_attack(texts, labels, defended, kinds, rate, candidates, seed)
    undefended = {k: v for k, v in crafted.items() if k != "texts"}
    return {"undefended": undefended, "naive": naive, "adaptive": adaptive,
            "robust_accuracy": min(naive["accuracy"], adaptive["accuracy"])}
