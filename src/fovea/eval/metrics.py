"""Benchmark scoring as the published protocols define it: pure functions, no torch.

Each function names the protocol it follows (lmms-eval 0.7.2 for the general benchmarks, the
MLCD-Embodied scripts for RoboVQA); where a protocol has a quirk, fovea reproduces it and says so,
because matching published numbers is the point. Scores are fractions in [0, 1] unless stated.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

# -- ChartQA -------------------------------------------------------------------------------------


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA (lmms-eval, from Qwen-VL): numbers within 5% of a non-zero target, else exact
    case-insensitive match. "12%" reads as 0.12. The prediction is *not* stripped (as there)."""
    pred, gold = _to_float(prediction), _to_float(target)
    if pred is not None and gold:
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.lower() == target.lower()


# -- DocVQA / InfoVQA ----------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity for one question (DocVQA, InfoVQA; lmms-eval).

    Distances are between whitespace-normalised lower-case strings, but divided by the longer of
    the *raw* lengths — lmms-eval's quirk, kept so scores match. Below `threshold`, the score is 0.
    """
    det = " ".join(prediction.strip().lower().split())
    best = 1.0
    for answer in answers:
        gold = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        best = min(best, levenshtein(gold, det) / length if length else 0.0)
    score = 1.0 - best
    return score if score >= threshold else 0.0


# -- OCRBench ------------------------------------------------------------------------------------

OCRBENCH_CATEGORIES = {
    "Regular Text Recognition": "Text Recognition",
    "Irregular Text Recognition": "Text Recognition",
    "Artistic Text Recognition": "Text Recognition",
    "Handwriting Recognition": "Text Recognition",
    "Digit String Recognition": "Text Recognition",
    "Non-Semantic Text Recognition": "Text Recognition",
    "Scene Text-centric VQA": "Scene Text-centric VQA",
    "Doc-oriented VQA": "Doc-oriented VQA",
    "Key Information Extraction": "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition": "Handwritten Mathematical Expression Recognition",
}


def _fold_fullwidth(text: str) -> str:
    """Full-width ASCII (U+FF01..FF5E) to ASCII and the ideographic space to a space; nothing else."""
    return "".join(
        chr(ord(ch) - 0xFEE0) if "\uff01" <= ch <= "\uff5e" else " " if ch == "\u3000" else ch for ch in text
    )


def ocrbench_match(prediction: str, answers: Sequence[str], dataset: str = "") -> bool:
    """OCRBench: any answer is a substring of the (stripped) prediction. Full-width ASCII folded,
    lower-cased, stripped, newlines to spaces — except handwritten maths (dataset HME100k): no
    folding, case kept, all spaces removed."""
    pred = prediction.strip()
    for answer in answers:
        if dataset == "HME100k":
            if _no_spaces(answer) in _no_spaces(pred):
                return True
        elif _ocr_norm(answer) in _ocr_norm(pred):
            return True
    return False


def _no_spaces(text: str) -> str:
    return text.strip().replace("\n", " ").replace(" ", "")


def _ocr_norm(text: str) -> str:
    return _fold_fullwidth(text).lower().strip().replace("\n", " ")


def ocrbench_score(results: Sequence[tuple[str, bool]]) -> dict[str, float]:
    """(question_type, correct) pairs -> points per category, the final score out of 1000, and
    lmms-eval's returned metric (final / 1000). Fresh state every call (unlike lmms-eval's global)."""
    points = Counter()
    for question_type, correct in results:
        points[OCRBENCH_CATEGORIES.get(question_type, question_type)] += int(correct)
    final = sum(points.values())
    return {**{k: float(v) for k, v in points.items()}, "final_score": float(final), "ocrbench": final / 1000}


# -- MME -----------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(prediction: str) -> str:
    """yes / no / other, as lmms-eval's parse_pred_ans."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(results: Sequence[tuple[str, str, str, str]]) -> dict[str, float]:
    """(category, question_id, prediction, answer) -> per-category acc + acc+ (max 200 each),
    perception (max 2000) and cognition (max 800). Every image (question_id) has two questions."""
    by_category: dict[str, dict[str, list[bool]]] = {}
    for category, qid, prediction, answer in results:
        by_category.setdefault(category, {}).setdefault(qid, []).append(
            mme_parse(prediction) == answer.lower().strip().replace(".", "")
        )
    out = {}
    for category, images in by_category.items():
        if any(len(v) != 2 for v in images.values()):
            raise ValueError(f"MME category {category}: every image needs exactly two questions")
        acc = sum(sum(v) for v in images.values()) / (2 * len(images)) * 100
        acc_plus = sum(all(v) for v in images.values()) / len(images) * 100
        out[category] = acc + acc_plus
    out["perception"] = sum(out.get(c, 0.0) for c in MME_PERCEPTION)
    out["cognition"] = sum(out.get(c, 0.0) for c in MME_COGNITION)
    return out


# -- multiple choice -----------------------------------------------------------------------------

_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-Z])\)?\s*$"),  # "B", "(B)"
    re.compile(r"^\s*\(?([A-Z])[\).:]\s"),  # "B. text", "(B) text", "B: text"
    re.compile(r"answer(?: is)?\s*[:：]?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE),  # "The answer is (C)"
]


def choice_letter(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter a free-form answer picks, or None when it picks none (scored wrong).

    fovea's documented, deterministic rule for MMStar / SEED / AI2D / MMBench / RealWorldQA-style
    questions: a bare or bracketed letter, a letter opening the answer ("B. ..."), "the answer
    is X", or the full text of exactly one option. Letters outside `options` do not count.
    """
    text = prediction.strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(text)
        if match and match.group(1) in options:
            return match.group(1)
    named = [
        letter
        for letter, option in options.items()
        if option and option.strip().lower() == text.rstrip(".").lower()
    ]
    return named[0] if len(named) == 1 else None


# -- BLEU (RoboVQA) ------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(
    references: Sequence[Sequence[str]],
    hypothesis: Sequence[str],
    weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
) -> float:
    """Sentence BLEU with clipped n-gram precision and the brevity penalty, *no smoothing*,
    exactly as nltk's ``sentence_bleu`` computes it (an order with no match contributes
    log(min float), so a positive weight on it makes BLEU ~0; no unigram match gives 0)."""
    numerators, denominators = [], []
    for n in range(1, len(weights) + 1):
        counts = _ngrams(hypothesis, n)
        best = Counter()
        for ref in references:
            for gram, c in _ngrams(ref, n).items():
                best[gram] = max(best[gram], c)
        numerators.append(sum(min(c, best[g]) for g, c in counts.items()))
        denominators.append(max(1, sum(counts.values())))
    if numerators[0] == 0:
        return 0.0
    hyp_len = len(hypothesis)
    ref_len = min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))
    bp = 1.0 if hyp_len > ref_len else (0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len))
    logs = [
        w * math.log(Fraction(num, den) if num else 2.2250738585072014e-308)
        for w, num, den in zip(weights, numerators, denominators)
    ]
    return bp * math.exp(math.fsum(logs))


_ROBOVQA_WEIGHTS = {
    1: [(1, 0, 0, 0)] * 4,
    2: [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (0.5, 0.5, 0, 0), (0.5, 0.5, 0, 0)],
    3: [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (0.33, 0.33, 0.33, 0), (0.33, 0.33, 0.33, 0)],
    4: [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (0.33, 0.33, 0.33, 0), (0.25, 0.25, 0.25, 0.25)],
}
_STANDARD = [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (1 / 3, 1 / 3, 1 / 3, 0), (0.25, 0.25, 0.25, 0.25)]
_YES, _NO = re.compile(r"\b\w*yes\w*\b"), re.compile(r"\b\w*no\w*\b")


def robovqa_bleu_mlcd(prediction: str, answer: str) -> dict[str, float]:
    """RoboVQA BLEU-1..4 as the MLCD-Embodied scripts score it (robo_metric.py).

    Newlines removed and lower-cased; for a yes/no answer, every predicted word containing "yes"
    becomes "yes", then every word containing "no" becomes "no" (so "nothing" and "know" read as
    "no" — the original's quirk); tokens are ``split(" ")`` (so double spaces give empty tokens, as
    there); the n-gram weights depend on the answer's length: 1 word (1,0,0,0) for all four, 2 words
    (.5,.5) from BLEU-2 on, 3+ words use 0.33 (not 1/3) for BLEU-3, and BLEU-4 is uniform only from
    4 words. ``score`` = mean of BLEU-1..4. Not comparable with `robovqa_bleu_plain`; never mix the
    two in one table."""
    pred = prediction.replace("\n", "").lower()
    gold = answer.replace("\n", "").lower()
    if gold in ("yes", "no"):
        pred = _NO.sub("no", _YES.sub("yes", pred))
    gold_tokens, pred_tokens = gold.split(" "), pred.split(" ")
    weights = _ROBOVQA_WEIGHTS[min(len(gold_tokens), 4)]
    return _bleu_1_to_4(gold_tokens, pred_tokens, weights)


def robovqa_bleu_plain(prediction: str, answer: str) -> dict[str, float]:
    """Plain sentence BLEU-1..4 (standard cumulative weights, no length adaptation)."""
    gold, pred = answer.lower().split(), prediction.lower().split()
    return _bleu_1_to_4(gold, pred, _STANDARD)


def _bleu_1_to_4(gold: list[str], pred: list[str], weights: list[tuple]) -> dict[str, float]:
    scores = [sentence_bleu([gold], pred, w) for w in weights]
    return {**{f"bleu{n}": v for n, v in enumerate(scores, 1)}, "score": sum(scores) / 4}


# -- MMMU ----------------------------------------------------------------------------------------
# The official MMMU rules (MMMU-Benchmark eval_utils, as lmms-eval 0.7.2 runs them). Where nothing
# parses, lmms-eval draws a random option; fovea scores such an answer wrong unless `rng` is given
# (pass a seeded `random.Random`, or the `random` module seeded as lmms-eval seeds it, to compare).

_MMMU_STRIP = ",.!?;:'"
_MMMU_KEYS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def mmmu_choice(response: str, options: Sequence[str], rng=None) -> str | None:
    """The option letter (A, B, ...) a free-form MMMU answer picks.

    In order: a bracketed letter "(B)"; else a letter followed by a space ("B " — which also
    matches a word ending in a capital, e.g. "DNA ", as in the original); else a letter followed by
    a full stop; else, for answers of more than five words, an option's text. Several candidates:
    the one mentioned last wins. None (or ``rng.choice`` of the letters) when nothing matches."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    for ch in _MMMU_STRIP:
        response = response.strip(ch)
    text = f" {response} "
    for form in ("({})", "{} ", "{}."):
        found = [c for c in letters if form.format(c) in text]
        if found:
            tail = "({})" if form == "({})" else " {} "
            return max(found, key=lambda c: text.rfind(tail.format(c)))  # ties: the first letter
    if len(text.split()) > 5:
        lower = text.lower()
        found = [c for c, o in zip(letters, options) if str(o).lower() in lower]
        if found:
            return max(found, key=lambda c: lower.rfind(str(options[letters.index(c)]).lower()))
    return rng.choice(letters) if rng is not None else None


_NUMBER_FORMS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # 1.5e-3
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # 42, 3.14, .5
)


def _mmmu_normalise(text: str) -> list:
    """A number becomes a float rounded to 2 decimals; text is lower-cased, and a single character
    is padded with a space on either side (two forms) so it cannot match inside a word."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


def mmmu_open_candidates(response: str) -> list:
    """What an open MMMU answer may be saying: the tail after the last key phrase ("so ", "is ",
    "therefore ", "answer ", ... and "=" in the last sentence) of each sentence, or the whole answer
    when there is none, plus every number in them; all normalised."""
    text = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
    keys = []
    for i, sentence in enumerate(sentences):
        markers = _MMMU_KEYS + (("=",) if i == len(sentences) - 1 else ())
        tails = [sentence.split(m)[-1].strip() for m in markers if m in sentence]
        if tails:
            shortest = min(tails, key=len)
            if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
                keys.append(shortest)
    keys = keys or [text]
    found = keys + [n for k in keys for form in _NUMBER_FORMS for n in form.findall(k)]
    out = []
    for item in found:
        for norm in _mmmu_normalise(item):
            if norm not in out:
                out.append(norm)
    return out


def mmmu_open_correct(response: str, answer: str | Sequence[str]) -> bool:
    """An open MMMU answer is right when a normalised gold string is a substring of a candidate
    string, or a candidate number equals a normalised gold number."""
    golds = [answer] if isinstance(answer, str) else list(answer)
    norm = [g for a in golds for g in _mmmu_normalise(a)]
    for cand in mmmu_open_candidates(response):
        if isinstance(cand, str):
            if any(isinstance(g, str) and g in cand for g in norm):
                return True
        elif cand in norm:
            return True
    return False


MMMU_DOMAINS = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}


def mmmu_scores(results: Sequence[tuple[str, bool]]) -> dict[str, float]:
    """(subject, correct) -> accuracy per subject, per domain and overall, all weighted by
    question count (MMMU's instance-level accuracy); ``mmmu`` is the overall figure."""
    per: dict[str, list[bool]] = {}
    for subject, correct in results:
        per.setdefault(subject, []).append(bool(correct))
    out = {s: sum(v) / len(v) for s, v in per.items()}
    for domain, subjects in MMMU_DOMAINS.items():
        hits = [c for s in subjects for c in per.get(s, [])]
        if hits:
            out[domain] = sum(hits) / len(hits)
    total = [c for v in per.values() for c in v]
    out["mmmu"] = sum(total) / len(total) if total else 0.0
    return out
