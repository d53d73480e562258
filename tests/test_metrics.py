"""Scoring functions against test vectors built from the published formulas (and nltk for BLEU)."""

from __future__ import annotations

import random
import re
import warnings

import pytest
from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

from fovea.eval.metrics import (
    anls,
    choice_letter,
    mme_parse,
    mme_scores,
    mmmu_choice,
    mmmu_open_correct,
    mmmu_scores,
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
    # the MLCD protocol tokenises with split(" "): "yes," stays "yes," and scores 0 against "yes"
    assert robovqa_bleu_mlcd("Yes, it is", "yes")["score"] == 0.0
    # one-word answer: BLEU-1 weights throughout; 1 of 3 unigrams matches, no brevity penalty
    assert robovqa_bleu_mlcd("Yes it is", "yes")["bleu4"] == pytest.approx(1 / 3)
    assert robovqa_bleu_mlcd("nothing", "no")["bleu1"] == 1.0  # "nothing" contains "no": the MLCD quirk
    assert robovqa_bleu_mlcd("yesterday", "no")["bleu1"] == 0.0  # "yesterday" becomes "yes" first
    short = robovqa_bleu_mlcd("pick up the cup", "pick cup")
    plain = robovqa_bleu_plain("pick up the cup", "pick cup")
    assert short["bleu4"] > plain["bleu4"]  # length-adapted weights vs standard: not comparable


def _robovqa_oracle(prediction, answer):
    """The MLCD-Embodied robo_metric.py behaviour restated on nltk, as the test oracle."""
    pred, gold = prediction.replace("\n", "").lower(), answer.replace("\n", "").lower()
    if gold in ("yes", "no"):
        pred = re.sub(r"\b\w*no\w*\b", "no", re.sub(r"\b\w*yes\w*\b", "yes", pred))
    ref, cand = [gold.split(" ")], pred.split(" ")
    n = len(ref[0])
    table = {
        1: [(1, 0, 0, 0)] * 4,
        2: [(1, 0, 0, 0)] + [(0.5, 0.5, 0, 0)] * 3,
        3: [(1, 0, 0, 0), (0.5, 0.5, 0, 0)] + [(0.33, 0.33, 0.33, 0)] * 2,
    }.get(n, [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (0.33, 0.33, 0.33, 0), (0.25,) * 4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [nltk_bleu(ref, cand, weights=w) for w in table]


@pytest.mark.parametrize(
    "prediction,answer",
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("I know it", "no"),
        ("", "yes"),
        ("put the cup\nin the sink", "put the cup in the sink"),
        ("put  the cup in the sink", "put the cup in the sink"),  # double space: an empty token
        ("the cup in the sink", "put the cup in the sink"),
        ("pick the red block", "pick red block"),
        ("place it on the table now", "place it on the table"),
        ("done", ""),
        ("move the arm left then grasp", "move arm left grasp the mug"),
    ],
)
def test_robovqa_mlcd_matches_the_original_on_nltk(prediction, answer):
    ours = robovqa_bleu_mlcd(prediction, answer)
    expected = _robovqa_oracle(prediction, answer)
    assert [ours[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(expected, abs=1e-12)
    assert ours["score"] == pytest.approx(sum(expected) / 4, abs=1e-12)


OPTIONS = ["a red cube", "a blue sphere", "two green cones", "nothing at all"]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The answer is (A).", "A"),
        ("A. a red cube", "A"),
        ("Between (A) and (D), I pick (D)", "D"),  # several: the last mentioned
        ("I think D is right, not A", "A"),  # "D " and "A " both match; " A " comes last
        ("The DNA shows it", "A"),  # "A " inside "DNA ": the official rule's quirk
        ("C.", "C"),  # trailing punctuation stripped first
        ("It is clearly a picture of two green cones on a table", "C"),  # option text, > 5 words
        ("two green cones", None),  # option text only counts for answers over five words
        ("", None),
        ("E", None),  # not an option
    ],
)
def test_mmmu_choice(response, letter):
    assert mmmu_choice(response, OPTIONS) == letter


def test_mmmu_choice_random_fallback_is_opt_in_and_reproducible():
    draws = [mmmu_choice("no idea", OPTIONS, rng=random.Random(s)) for s in range(20)]
    assert set(draws) <= set("ABCD") and len(set(draws)) > 1
    assert draws == [mmmu_choice("no idea", OPTIONS, rng=random.Random(s)) for s in range(20)]
    assert mmmu_choice("B", OPTIONS, rng=random.Random(0)) == "B"  # the draw only when nothing parses


@pytest.mark.parametrize(
    ("response", "answer", "ok"),
    [
        ("42", "42", True),
        ("The total is 1,234.", "1234", True),  # commas dropped from numbers
        ("so the result is 3.14159", "3.14", True),  # numbers compared at 2 decimals
        ("x = 2.5e3", "2500", True),  # scientific notation
        ("Therefore the answer is Paris", "paris", True),
        ("The answer is B", "b", True),  # one character: matched as " b" / "b "
        ("The answer is about", "b", False),  # ... so it does not match inside "about"
        ("17", "18", False),
        ("", "0", False),
        ("It is 12 or 13", ["13", "14"], True),  # several gold answers
    ],
)
def test_mmmu_open(response, answer, ok):
    assert mmmu_open_correct(response, answer) is ok


def test_mmmu_scores_are_instance_weighted():
    results = [("Art", True), ("Art", False), ("Math", True), ("Physics", True), ("Physics", True)]
    scores = mmmu_scores(results)
    assert scores["Art"] == 0.5 and scores["Science"] == 1.0 and scores["Art and Design"] == 0.5
    assert scores["mmmu"] == pytest.approx(4 / 5)  # not the mean of domain means (0.75)
