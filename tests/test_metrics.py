"""Scoring functions against test vectors built from the published formulas (and nltk for BLEU)."""

from __future__ import annotations

import random
import warnings

import pytest

from fovea.eval.metrics import (
    anls,
    choice_letter,
    mme_parse,
    mme_scores,
    ocrbench_match,
    ocrbench_score,
    relaxed_correctness,
    robovqa_bleu_mlcd,
    robovqa_bleu_plain,
    sentence_bleu,
)


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("10.4", "10", True),
        ("10.6", "10", False),
        ("12%", "0.12", True),
        ("0.1205", "12%", True),
        ("Yes", "yes", True),
        (" yes", "yes", False),  # not stripped, as in lmms-eval
        ("0", "0", True),
        ("0.01", "0", False),  # zero target: exact string match only
        ("", "", True),
        ("abc", "10", False),
    ],
)
def test_chartqa_relaxed_correctness(pred, gold, ok):
    assert relaxed_correctness(pred, gold) is ok


def test_anls_vectors():
    assert anls("The Cat", ["the cat"]) == 1.0
    assert anls("  the   cat ", ["the cat"]) == 1.0
    assert anls("the cap", ["the cat"]) == pytest.approx(1 - 1 / 7)
    assert anls("dog", ["the cat"]) == 0.0  # below the 0.5 threshold
    assert anls("the cap", ["zzz", "the cat"]) == pytest.approx(1 - 1 / 7)  # best of several references
    assert anls("", [""]) == 1.0
    # lmms-eval divides by the raw lengths: extra spaces in the prediction lower the score
    assert anls("ab   ", ["ab"]) == pytest.approx(1.0)
    assert anls("ab", ["abcd  "]) == pytest.approx(1 - 2 / 6)


def test_ocrbench_rules_and_score():
    assert ocrbench_match("The sign says STOP here", ["stop"])
    assert ocrbench_match("ＳＴＯＰ", ["stop"])  # full-width folded
    assert not ocrbench_match("x ^ 2", ["X^2"], dataset="HME100k")  # case kept for handwritten maths
    assert ocrbench_match("x ^ 2 + 1", ["x^2"], dataset="HME100k")  # spaces removed there
    assert not ocrbench_match("", ["stop"])
    score = ocrbench_score(
        [
            ("Regular Text Recognition", True),
            ("Digit String Recognition", True),
            ("Doc-oriented VQA", False),
            ("Key Information Extraction", True),
        ]
    )
    assert score["Text Recognition"] == 2 and score["final_score"] == 3 and score["ocrbench"] == 0.003


def test_mme_parse_and_scores():
    assert [mme_parse(x) for x in ["Yes.", "no", "Y", "n", "yes, it is", "Nope", "maybe", ""]] == [
        "yes",
        "no",
        "yes",
        "no",
        "yes",
        "no",
        "other",
        "other",
    ]
    results = [
        ("color", "a", "yes", "Yes"),
        ("color", "a", "no", "No"),  # both right: 100 + 100
        ("color", "b", "yes", "Yes"),
        ("color", "b", "yes", "No"),  # one right: 50 + 0
        ("code_reasoning", "c", "no", "No"),
        ("code_reasoning", "c", "perhaps", "Yes"),
    ]
    scores = mme_scores(results)
    assert scores["color"] == pytest.approx((50 + 100) / 2 + 100 / 2 * 1)  # acc 75 + acc+ 50
    assert scores["perception"] == scores["color"] and scores["cognition"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="two questions"):
        mme_scores([("OCR", "x", "yes", "Yes")])


@pytest.mark.parametrize(
    ("pred", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("A. a red cube", "A"),
        ("The answer is (D).", "D"),
        ("Answer: B", "B"),
        ("a red cube", "A"),
        ("E", None),
        ("I am not sure", None),
        ("", None),
    ],
)
def test_choice_letter(pred, letter):
    assert choice_letter(pred, {"A": "a red cube", "B": "a dog", "C": "two", "D": "none"}) == letter


def test_sentence_bleu_equals_nltk():
    from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

    rng = random.Random(0)
    words = "the a robot arm picks up put cup red blue on table yes no".split()
    weights = [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (0.33, 0.33, 0.33, 0), (0.25, 0.25, 0.25, 0.25)]
    for _ in range(300):
        refs = [[rng.choice(words) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 2))]
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 8))]
        for w in weights:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = nltk_bleu(refs, hyp, weights=w)
            assert sentence_bleu(refs, hyp, w) == pytest.approx(expected, abs=1e-12), (refs, hyp, w)


def test_robovqa_protocols_differ_and_are_named():
    mlcd = robovqa_bleu_mlcd("Yes, it is", "yes")
    assert mlcd["bleu4"] == pytest.approx(sentence_bleu([["yes"]], ["yes", "it", "is"], (1, 0, 0, 0)))
    assert robovqa_bleu_mlcd("nothing", "no")["bleu1"] == 1.0  # "nothing" contains "no": the MLCD quirk
    short = robovqa_bleu_mlcd("pick up the cup", "pick cup")
    plain = robovqa_bleu_plain("pick up the cup", "pick cup")
    assert short["bleu4"] > plain["bleu4"]  # length-adapted weights vs standard: not comparable
