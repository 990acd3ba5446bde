"""Text perturbations, attacks and defences (xfer/robust/text.py) against a hand-written keyword scorer."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from xfer.errors import XferError
from xfer.robust.text import (
    CHAR_KINDS, KINDS, QWERTY, WORD_KINDS, apply_text_defence, attack_defended, greedy_attack,
    normalise_lookalikes, perturb, random_attack, randomised_proba, remove_spelling_noise, token_dropout,
    transfer_attack, vocabulary_from,
)

POSITIVE = {"good", "great", "fine", "superb"}
NEGATIVE = {"bad", "awful", "poor", "dull"}
# Filler words that sit one edit away from the keywords: a real vocabulary has such neighbours, and they are what
# an adaptive attack on the spelling defence looks for (good -> food/gold/god, bad -> had/bar/bid ...).
FILLER = ("the movie was and its plot food gold god hood had bar bid bed fire fined fuel pool doll dell dual "
          "grand treat ball read some with film story into over actors scene").split()
TEN = "the movie was really quite good and its plot works"  # ten words, each of 2+ letters


def keyword_proba(texts: list[str]) -> np.ndarray:
    """Classes (negative, positive, neutral): logits 2 * keyword counts and a constant 1 for neutral, so a text
    whose one keyword is broken falls to neutral, wrong for either true label."""
    out = []
    for t in texts:
        words = [w.strip(".,!?").lower() for w in t.split()]
        logits = np.array([2.0 * sum(w in NEGATIVE for w in words), 2.0 * sum(w in POSITIVE for w in words), 1.0])
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return np.array(out)


def toy_data(n: int = 40, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Ten-word texts with one keyword of their class; every fifth has none (neutral: originally wrong)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, 10))
        if i % 5:
            words[int(rng.integers(10))] = str(rng.choice(sorted(POSITIVE if label else NEGATIVE)))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


def changed_words(a: str, b: str) -> list[tuple[str, str]]:
    wa, wb = a.split(), b.split()
    assert len(wa) == len(wb)
    return [(x, y) for x, y in zip(wa, wb) if x != y]


# --- perturbations ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,k", [(0.05, 1), (0.1, 1), (0.2, 2), (0.25, 3), (0.5, 5)])
def test_char_edits_change_the_expected_amount(rate, k):
    for seed in range(5):
        deleted = perturb(TEN, "delete", rate, np.random.default_rng(seed))
        assert len(deleted) == len(TEN) - k
        assert len(changed_words(TEN, deleted)) == k  # one edit each in k distinct words
        assert all(len(a) - len(b) == 1 and any(a[:i] + a[i + 1:] == b for i in range(len(a)))
                   for a, b in changed_words(TEN, deleted))
        inserted = perturb(TEN, "insert", rate, np.random.default_rng(seed))
        assert len(inserted) == len(TEN) + k and len(changed_words(TEN, inserted)) == k
        swapped = perturb(TEN, "swap", rate, np.random.default_rng(seed))
        pairs = changed_words(TEN, swapped)
        assert len(pairs) == k and all(sorted(a) == sorted(b) and len(a) == len(b) for a, b in pairs)
        assert all(sum(x != y for x, y in zip(a, b)) == 2 for a, b in pairs)  # one adjacent transposition
        typo = perturb(TEN, "typo", rate, np.random.default_rng(seed))
        pairs = changed_words(TEN, typo)
        assert len(pairs) == k
        for a, b in pairs:
            diff = [(x, y) for x, y in zip(a, b) if x != y]
            assert len(a) == len(b) and len(diff) == 1 and diff[0][1] in QWERTY[diff[0][0]]


@pytest.mark.parametrize("rate,k", [(0.1, 1), (0.2, 2), (0.5, 5)])
def test_word_edits_change_the_expected_amount(rate, k):
    words = TEN.split()
    for seed in range(5):
        out = perturb(TEN, "word-delete", rate, np.random.default_rng(seed)).split()
        assert len(out) == len(words) - k
        it = iter(words)
        assert all(w in it for w in out)  # what is left is the original order, minus k words
        shuffled = perturb(TEN, "word-shuffle", rate, np.random.default_rng(seed)).split()
        assert Counter(shuffled) == Counter(words) and shuffled != words
        moved = [i for i, (a, b) in enumerate(zip(words, shuffled)) if a != b]
        assert 2 <= len(moved) <= 2 * k
        if k <= 2:  # swaps prefer words no earlier swap moved
            assert len(moved) == 2 * k
        kept = perturb("  one two three four\n", "word-delete", rate, np.random.default_rng(seed))
        assert kept.startswith("  ") and kept.endswith("\n") and "  " not in kept.strip()  # whitespace as it was
    one = perturb(TEN, "word-shuffle", 0.1, np.random.default_rng(3)).split()
    i, j = [i for i, (a, b) in enumerate(zip(words, one)) if a != b]
    assert j - i <= 3 and (one[i], one[j]) == (words[j], words[i])


def test_perturbations_are_deterministic_rate_zero_is_no_edit_and_kinds_are_listed():
    assert set(KINDS) == set(CHAR_KINDS) | set(WORD_KINDS) and len(KINDS) == 6
    for kind in KINDS:
        a = [perturb(TEN, kind, 0.3, np.random.default_rng(7)) for _ in range(2)]
        assert a[0] == a[1] != TEN
        assert perturb(TEN, kind, 0.3, np.random.default_rng(8)) != a[0] or kind == "word-shuffle"
        assert perturb(TEN, kind, 0.0, np.random.default_rng(7)) == TEN
    with pytest.raises(XferError, match="edit rate"):
        perturb(TEN, "swap", 1.5, np.random.default_rng(0))
    with pytest.raises(XferError, match="word-shuffle"):
        perturb(TEN, "flip", 0.1, np.random.default_rng(0))


def test_perturbations_never_empty_and_leave_digits_punctuation_and_short_words_alone():
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for text in ("word", "a", "ok", "42 !!", "x y"):
            out = perturb(text, kind, 1.0, rng)
            assert out.strip(), (kind, text)
        for seed in range(20):
            out = perturb("a 42 ! I movie, 7", kind, 0.2, np.random.default_rng(seed))
            if kind in CHAR_KINDS:  # only the one word of 2+ letters is edited; digits and marks untouched
                assert re.sub(r"\w+,", "W,", out) == "a 42 ! I W, 7"
    assert perturb("word", "word-delete", 1.0, rng) == "word"
    assert len(perturb("one two three", "word-delete", 1.0, rng).split()) == 1
    assert perturb("a", "delete", 1.0, rng) == "a"  # never deletes a word's only letter
    assert perturb("  spaced\tout  text ", "typo", 0.1, rng).startswith("  ")  # whitespace kept


def test_qwerty_map_covers_a_to_z_and_is_symmetric():
    assert sorted(QWERTY) == [chr(c) for c in range(ord("a"), ord("z") + 1)]
    assert all(a in QWERTY[b] for a, ns in QWERTY.items() for b in ns)


# --- attacks ---------------------------------------------------------------------------------------------------------

def test_greedy_is_stronger_than_random_which_is_below_clean():
    texts, labels = toy_data()
    clean = float((keyword_proba(texts).argmax(1) == labels).mean())
    assert clean == pytest.approx(0.8)
    rnd = random_attack(texts, labels, keyword_proba, "delete", 0.1, seed=0)
    greedy = greedy_attack(texts, labels, keyword_proba, ("delete",), 0.1, candidates=8, seed=0, return_texts=True)
    for r in (rnd, greedy):
        assert r["n"] == 40 and r["clean_accuracy"] == pytest.approx(clean)
        assert r["accuracy"] == pytest.approx(clean * (1 - r["attack_success_rate"]))
    assert greedy["accuracy"] < rnd["accuracy"] < clean
    # one random deletion hits the keyword 1 time in 10; 8 scored tries about 1 - 0.9^8 = 57% of the time
    assert rnd["attack_success_rate"] < 0.25 < greedy["attack_success_rate"]
    # originally wrong texts are not attacked; the adversarial texts really are misclassified
    adv = greedy["texts"]
    wrong0 = keyword_proba(texts).argmax(1) != labels
    assert all(a == t for a, t, w in zip(adv, texts, wrong0) if w)
    adv_right = keyword_proba(adv).argmax(1) == labels
    assert adv_right.mean() == pytest.approx(greedy["accuracy"])
    assert all(len(a) == len(t) - 1 for a, t in zip(adv, texts) if a != t)  # one deletion: the budget at 10%
    # the queries: the clean texts once, then at most `candidates` per attacked text per step
    assert len(texts) < greedy["queries"] <= len(texts) + 8 * 32
    again = greedy_attack(texts, labels, keyword_proba, ("delete",), 0.1, candidates=8, seed=0, return_texts=True)
    assert again == greedy


def test_greedy_batches_scorer_calls_and_stops_when_wrong():
    texts, labels = toy_data(20, seed=1)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return keyword_proba(batch)

    r = greedy_attack(texts, labels, counting, CHAR_KINDS + WORD_KINDS, 0.3, candidates=4, seed=2)
    assert len(calls) <= 1 + 3  # the clean call plus one per step (budget 3 at 30% of ten words)
    assert sum(calls) == r["queries"]
    assert r["accuracy"] <= r["clean_accuracy"]


def test_attack_never_makes_accuracy_worse_than_clean_for_a_useless_attack():
    texts, labels = toy_data(10)
    # a scorer that ignores the text cannot be attacked: nothing changes
    const = lambda batch: np.tile([0.2, 0.7, 0.1], (len(batch), 1))  # noqa: E731
    r = greedy_attack(texts, labels, const, CHAR_KINDS, 0.2, seed=0, return_texts=True)
    assert r["accuracy"] == r["clean_accuracy"] == pytest.approx(0.5) and r["attack_success_rate"] == 0
    assert r["texts"] == texts  # no edit lowered the true label's probability, so none was kept
    with pytest.raises(XferError, match="labels"):
        greedy_attack(texts, labels[:3], keyword_proba)
    with pytest.raises(XferError, match="shape"):
        greedy_attack(texts, labels, lambda b: np.zeros(len(b)))


# --- defences --------------------------------------------------------------------------------------------------------

def test_normalise_lookalikes():
    assert normalise_lookalikes("g\u043e\u043ed") == "good"  # Cyrillic o's
    assert normalise_lookalikes("go\u200bo\u200dd\u2060\ufeff") == "good"
    assert normalise_lookalikes("gre\u00adat") == "great"
    assert normalise_lookalikes("\uff47\uff4f\uff4f\uff44") == "good"  # fullwidth, by NFKC
    assert normalise_lookalikes("\u0412\u0410\u0414 \u0391\u0392\u0395 \u0440\u0435\u0441") == "BAД ABE pec"
    assert normalise_lookalikes("\u0440\u0435\u0441 g\u043e", mixed_script_only=True) == "\u0440\u0435\u0441 go"
    assert normalise_lookalikes("plain text, 42!") == "plain text, 42!"


def test_remove_spelling_noise():
    vocab = vocabulary_from(["Great film, bad acting.", "a great great story", "the bid and bed were bad"])
    assert vocab["great"] == 3 and vocab["bad"] == 2 and "film" in vocab and "film," not in vocab
    assert remove_spelling_noise("grreat and baad", vocab) == "great and bad"
    assert remove_spelling_noise("Graet! BAAAAD", vocab) == "Great! BAD"
    assert remove_spelling_noise("b.a.d g-r-e-a-t gr-eat well-known don't", vocab) == "bad great great well-known don't"
    assert remove_spelling_noise("gooood b.a.d grreat") == "good bad grreat"  # no vocabulary: no spell fix
    # "bd" is one edit from bad, bid and bed: a set leaves it, frequencies pick the most frequent (bad, 2)
    assert remove_spelling_noise("bd", set(vocab)) == "bd"
    assert remove_spelling_noise("bd", vocab) == "bad"
    assert remove_spelling_noise("bd", {"bad": 1, "bid": 1}) == "bd"  # a tie is left alone
    assert remove_spelling_noise("keep  spacing,\tplease 42", vocab) == "keep  spacing,\tplease 42"


def test_token_dropout_and_randomised_proba():
    rng = np.random.default_rng(0)
    assert token_dropout(TEN, 0.0, rng) == TEN
    for _ in range(50):
        out = token_dropout(TEN, 0.95, rng)
        assert 1 <= len(out.split()) <= 10 and set(out.split()) <= set(TEN.split())
    assert token_dropout(TEN, 0.5, np.random.default_rng(4)) == token_dropout(TEN, 0.5, np.random.default_rng(4))
    texts, _ = toy_data(6)
    one = randomised_proba(keyword_proba, texts, 0.3, draws=1, seed=0)
    many = randomised_proba(keyword_proba, texts, 0.3, draws=64, seed=0)
    assert one.shape == many.shape == (6, 3) and np.allclose(many.sum(1), 1)
    assert not np.allclose(one, many)
    assert np.array_equal(many, randomised_proba(keyword_proba, texts, 0.3, draws=64, seed=0))
    # the average equals the mean of the single draws it is made of
    rng = np.random.default_rng(5)
    singles = [keyword_proba([token_dropout(t, 0.3, rng) for t in texts]) for _ in range(8)]
    assert np.allclose(randomised_proba(keyword_proba, texts, 0.3, draws=8, seed=5), np.mean(singles, 0))
    assert np.allclose(randomised_proba(keyword_proba, texts, 0.0, draws=3, seed=1), keyword_proba(texts))


def test_apply_text_defence():
    texts, labels = toy_data(10)
    attacked = [t.replace("o", "\u043e") for t in texts]
    plain = keyword_proba(texts)
    assert np.allclose(apply_text_defence("lookalikes", {}, keyword_proba)(attacked), plain)
    vocab = vocabulary_from(texts)
    spelled = apply_text_defence("spelling", None, keyword_proba, vocab)
    assert np.allclose(spelled([t.replace("good", "goood") for t in texts]), plain)
    dropout = apply_text_defence("token-dropout", {"p": 0.2, "draws": 4, "seed": 3}, keyword_proba)
    a, b = dropout(texts), dropout(texts)
    assert a.shape == (10, 3) and not np.allclose(a, b)  # fresh randomness per call, like a deployed model
    assert np.allclose(apply_text_defence("token-dropout", {"p": 0.2, "draws": 4, "seed": 3}, keyword_proba)(texts), a)
    with pytest.raises(XferError, match="lookalikes"):
        apply_text_defence("blur", {}, keyword_proba)
    with pytest.raises(XferError, match="no option"):
        apply_text_defence("spelling", {"p": 0.1}, keyword_proba)


def test_adaptive_attack_beats_the_naive_transfer_attack_on_the_spelling_defence():
    texts, labels = toy_data(40, seed=3)
    vocab = vocabulary_from(FILLER + sorted(POSITIVE | NEGATIVE))
    defended = apply_text_defence("spelling", {}, keyword_proba, vocab)
    kinds = ("typo", "delete", "swap")
    naive = transfer_attack(texts, labels, keyword_proba, defended, kinds, 0.3, candidates=24, seed=0)
    adaptive = greedy_attack(texts, labels, defended, kinds, 0.3, candidates=24, seed=0)
    undefended = greedy_attack(texts, labels, keyword_proba, kinds, 0.3, candidates=24, seed=0)
    assert naive["clean_accuracy"] == adaptive["clean_accuracy"] == undefended["clean_accuracy"] == 0.8
    # the defence repairs most single-letter edits crafted against the plain model ...
    assert undefended["accuracy"] < 0.1 and naive["accuracy"] > 0.4
    # ... but an attack that queries the defended pipeline finds edits it cannot repair (good -> food, bad -> bid)
    assert adaptive["accuracy"] <= naive["accuracy"] - 0.2
    both = attack_defended(texts, labels, keyword_proba, "spelling", kinds=kinds, rate=0.3, candidates=24, seed=0,
                           vocabulary=vocab)
    assert both["naive"] == naive and both["adaptive"] == adaptive and both["undefended"] == undefended
    assert both["robust_accuracy"] == adaptive["accuracy"]


def test_eot_attack_on_token_dropout():
    texts, labels = toy_data(20)
    both = attack_defended(texts, labels, keyword_proba, "token-dropout", {"p": 0.1, "draws": 8, "seed": 0},
                           kinds=CHAR_KINDS, rate=0.2, candidates=8, seed=0)
    # dropping words cannot repair a broken keyword: the transferred texts fool the defended model as well
    assert both["naive"]["accuracy"] == both["undefended"]["accuracy"] < 0.2
    adaptive = both["adaptive"]
    assert adaptive["accuracy"] < 0.3 < 0.8 == adaptive["clean_accuracy"]
    assert both["robust_accuracy"] == min(both["naive"]["accuracy"], adaptive["accuracy"])
