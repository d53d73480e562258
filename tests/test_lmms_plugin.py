"""The lmms-eval plugin, run by the installed lmms-eval package itself on a local task, offline."""

from __future__ import annotations

import json

import lmms_eval  # noqa: F401  (installed by the README's test command: pip install --no-deps lmms-eval)
import pytest
from PIL import Image

import fovea
from fovea.tiny import tiny_vlm

UTILS = """
import os
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [Image.open(os.path.join(HERE, doc["image"])).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact": float(results[0].strip().lower() == doc["answer"])}
"""

TASK = """task: fovea_local_shapes
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs: {{max_new_tokens: 6, temperature: 0, do_sample: false}}
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
metadata: {{version: 0.0}}
"""

QUESTIONS = [
    "What colour is the shape?",
    "What shape is it?",
    "How many shapes are there?",
    "Is it left or right?",
]


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    tasks = root / "tasks"
    tasks.mkdir()
    rows = []
    for i, question in enumerate(QUESTIONS):
        Image.new("RGB", (30 + 10 * i, 40), (40 * i, 90, 200)).save(tasks / f"im{i}.png")
        rows.append({"question": question, "answer": "red", "image": f"im{i}.png"})
    (tasks / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "fovea_local_shapes.yaml").write_text(TASK.format(data=tasks / "data.jsonl"))
    checkpoint = tiny_vlm().save_pretrained(root / "tiny")
    return root, tasks, checkpoint


def test_the_entry_point_registers_fovea():
    from lmms_eval.models import get_model

    from fovea.eval.lmms_model import FoveaLMM

    assert get_model("fovea") is FoveaLMM


def test_lmms_eval_runs_a_fovea_checkpoint_and_matches_fovea_s_own_answers(local_task, monkeypatch):
    root, tasks, checkpoint = local_task
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(root / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    import lmms_eval.evaluator as evaluator
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("WARNING", include_path=str(tasks), include_defaults=False, model_name="fovea")
    out = evaluator.simple_evaluate(
        model="fovea",
        model_args=f"pretrained={checkpoint}",
        tasks=["fovea_local_shapes"],
        task_manager=manager,
        batch_size=3,  # lmms-eval hands its --batch_size to the model
        log_samples=True,
        bootstrap_iters=0,
        process_docs_parallel=1,
    )
    samples = out["samples"]["fovea_local_shapes"]
    assert len(samples) == len(QUESTIONS)
    assert "exact,none" in out["results"]["fovea_local_shapes"]
    answers = {s["doc_id"]: s["resps"][0][0] for s in samples}
    model = fovea.load(checkpoint)
    expected = model.generate(
        QUESTIONS, images=[[tasks / f"im{i}.png"] for i in range(len(QUESTIONS))], max_new_tokens=6
    )
    assert [answers[i] for i in range(len(QUESTIONS))] == [e.split("\n\n")[0] for e in expected]


def test_loglikelihood_scores_the_model_s_own_greedy_answer_as_greedy(local_task):
    from lmms_eval.api.instance import Instance

    from fovea.eval.lmms_model import FoveaLMM

    root, tasks, checkpoint = local_task
    lm = FoveaLMM(pretrained=str(checkpoint))
    image = Image.open(tasks / "im0.png").convert("RGB")
    greedy = lm.model.generate(QUESTIONS[0], images=[image], max_new_tokens=3)
    lm.task_dict = {"t": {"test": {0: {"answer": greedy}}}}
    visual = lambda doc: [image]  # noqa: E731
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    requests = [
        Instance("loglikelihood", (QUESTIONS[0], lambda doc: doc["answer"], visual, 0, "t", "test"), 0, meta),
        Instance("loglikelihood", (QUESTIONS[0], "zebra banana", visual, 0, "t", "test"), 1, meta),
    ]
    (own, own_greedy), (other, other_greedy) = lm.loglikelihood(requests)
    assert own_greedy and not other_greedy
    assert own <= 0 and other < own


def test_missing_pretrained_is_a_clear_error():
    from fovea.eval.lmms_model import FoveaLMM

    with pytest.raises(ValueError, match="pretrained="):
        FoveaLMM()
