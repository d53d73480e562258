"""fovea's metrics against the installed lmms-eval's own scoring functions, case by case.

The fixed test vectors in test_metrics.py pin the published formulas; here the same kinds of
cases go through lmms-eval's code (the reference implementation) and fovea's, which must agree.
"""

from __future__ import annotations

import pytest
from lmms_eval.api.metrics import anls as lmms_anls
from lmms_eval.tasks._task_utils.mmmu_mcq_utils import parse_mmmu_multi_choice_response
from lmms_eval.tasks.chartqa.utils import chartqa_process_results
from lmms_eval.tasks.mme.utils import mme_process_results
from lmms_eval.tasks.mmmu.utils import eval_open, parse_open_response
from lmms_eval.tasks.ocrbench.utils import ocrbench_process_results

from fovea.eval import metrics

PREDICTIONS = [
    "12",
    "12.5",
    "12%",
    " 12",
    "0.12",
    "13",
    "0",
    "-4",
    "Yes",
    "yes.",
    "No, it is not",
    "n",
    "y",
    "",
    "The answer is (B).",
    "B",
    "C.",
    "I think D is right, not A",
    "The DNA shows it",
    "It is clearly a picture of two green cones on a table",
    "Paris",
    "paris ",
    "1,234",
    "x = 2.5e3",
    "so the result is 3.14159",
    "ＡＢＣ　１２",
    "a\nb",
    "x^{2}+1",
    "nothing",
    "maybe",
]


@pytest.mark.parametrize("target", ["12", "12%", "0", "paris", "Yes", "1234", "-4.1"])
def test_chartqa(target):
    for pred in PREDICTIONS:
        theirs = chartqa_process_results({"type": "human_test", "answer": target}, [pred])["relaxed_overall"]
        assert float(metrics.relaxed_correctness(pred, target)) == theirs, (pred, target)


@pytest.mark.parametrize(
    "answers", [["paris"], ["Paris", "paris france"], ["12"], [""], ["The DNA"], ["abc 12"]]
)
def test_anls(answers):
    for pred in PREDICTIONS:
        assert metrics.anls(pred, answers) == pytest.approx(lmms_anls(answers, [pred])["anls"]), (
            pred,
            answers,
        )


@pytest.mark.parametrize("dataset", ["IIIT5K", "HME100k"])
@pytest.mark.parametrize("answers", [["abc 12"], ["ABC12"], ["x^{2}+1"], ["paris", "london"], ["a b"]])
def test_ocrbench(dataset, answers):
    for pred in PREDICTIONS:
        doc = {"answer": answers, "dataset": dataset, "question_type": "Regular Text Recognition"}
        theirs = ocrbench_process_results(doc, [pred])["ocrbench_accuracy"]["score"]
        assert int(metrics.ocrbench_match(pred, answers, dataset)) == theirs, (pred, answers, dataset)


@pytest.mark.parametrize("gold", ["Yes", "No", "yes."])
def test_mme(gold):
    from fovea.eval.scorers import SCORERS
    from fovea.eval.tasks import load_task

    spec = load_task("mme")
    for pred in PREDICTIONS:
        doc = {"answer": gold, "category": "OCR", "question_id": "a.jpg"}
        theirs = mme_process_results(doc, [pred])["mme_perception_score"]["score"]
        assert SCORERS.get("mme").score(spec, doc, pred)["correct"] == theirs, (pred, gold)


def test_mmmu_multiple_choice():
    options = ["a red cube", "a blue sphere", "two green cones", "nothing at all"]
    index2ans = dict(zip("ABCD", options))
    for pred in PREDICTIONS:
        ours = metrics.mmmu_choice(pred, options)
        if ours is None:
            continue  # lmms-eval draws at random here; fovea scores it wrong (documented)
        assert parse_mmmu_multi_choice_response(pred, list("ABCD"), index2ans) == ours, pred


@pytest.mark.parametrize("gold", ["12", "1234", "3.14", "paris", "b", "2500", ["12", "13"], "0"])
def test_mmmu_open(gold):
    for pred in PREDICTIONS:
        assert metrics.mmmu_open_correct(pred, gold) == eval_open(gold, parse_open_response(pred)), (
            pred,
            gold,
        )
