"""Scorers: how each benchmark turns a row into a prompt and a prediction into numbers.

A scorer has a per-sample ``score(spec, doc, prediction) -> {metric: value}``, an ``aggregate``
over the run's records, and a ``headline`` metric on a 0–100 scale for tables and radar charts.
It may also build the prompt (MMMU, multiple choice, the embodied benchmarks) and choose the image
columns. The arithmetic lives in `fovea.eval.metrics`; this module only wires rows to it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..registry import Registry
from . import metrics

if TYPE_CHECKING:  # annotations only: tasks.py reads the scorers
    from .tasks import TaskSpec

Record = dict  # {"id", "doc", "prediction", "scores"}


@dataclass
class Scorer:
    score: Callable[[TaskSpec, dict, str], dict[str, float]]
    headline: str
    """The metric shown in summaries and radar charts."""
    scale: float = 1.0
    """The headline's maximum (1 for fractions, 2000 for MME perception): shown as a percentage."""
    aggregate: Callable[[TaskSpec, list[Record]], dict[str, float]] | None = None
    prompt: Callable[[TaskSpec, dict], str] | None = None
    image_columns: Callable[[TaskSpec, dict], list[str]] | None = None
    answer_optional: bool = False
    judged: bool = False
    """Per-sample scores come from an LLM judge (OpenEQA), not from the prediction alone."""
    predict: Callable | None = None
    """``(model, spec, samples, images, options) -> predictions``: the scorer answers the samples
    itself (masks for referring segmentation) instead of ``model.generate``; JSON-able predictions."""


SCORERS: Registry[Scorer] = Registry("scorer")


def mean_by_group(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    """Every per-sample metric averaged over the task, then per value of the task's group column."""
    out: dict[str, float] = {}
    names = sorted({k for r in records for k in r["scores"]})
    for name in names:
        values = [r["scores"][name] for r in records if name in r["scores"]]
        out[name] = sum(values) / len(values) if values else 0.0
    if spec.group:
        groups: dict[str, list[float]] = {}
        for r in records:
            key = str(r["doc"].get(spec.group))
            for name in names[:1] if len(names) > 1 else names:
                groups.setdefault(f"{spec.group}={key}", []).append(r["scores"].get(name, 0.0))
        out.update({k: sum(v) / len(v) for k, v in sorted(groups.items())})
    return out


def aggregate(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    scorer = SCORERS.get(spec.scorer)
    return (scorer.aggregate or mean_by_group)(spec, records)


def headline(spec: TaskSpec, results: dict[str, float]) -> float | None:
    """The task's headline score as a percentage, or None when it was not computed."""
    scorer = SCORERS.get(spec.scorer)
    value = results.get(scorer.headline)
    return None if value is None else 100.0 * value / scorer.scale


# -- the bundled synthetic benchmark -------------------------------------------------------------

SYNTHETIC_SIZE, SYNTHETIC_SEED = 280, 20_000


def make_synthetic(where: Path) -> None:
    """Draw the bundled benchmark (280 questions, 40 per type, seed 20000: not `fovea demo`'s
    training or held-out seeds) into ``where`` (a folder, or its ``qa.json``)."""
    from ..data.synthetic import generate

    folder = where.parent if where.suffix == ".json" else where
    generate(folder, SYNTHETIC_SIZE, seed=SYNTHETIC_SEED)
    (folder / "captions.json").unlink()


def _synthetic_prompt(spec: TaskSpec, row: dict) -> str:
    """The question as `fovea demo` trains it, its image tags (and frame labels) included; a row
    without conversations gets its type's question (its image placed before it)."""
    from ..data.synthetic import QUESTIONS

    turns = row.get("conversations")
    return turns[0]["value"] if turns else QUESTIONS[row["type"]]


def _exact(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    return {"accuracy": float(prediction.strip().lower() == str(doc[spec.answer]).strip().lower())}


SCORERS.add(
    "synthetic",
    Scorer(_exact, "accuracy", prompt=_synthetic_prompt),
    "exact match (case-insensitive, stripped) per question type; the bundled offline benchmark",
)
SCORERS.add("exact", Scorer(_exact, "accuracy"), "exact match, case-insensitive and stripped")


# -- ChartQA, DocVQA / InfoVQA, OCRBench, MME ----------------------------------------------------


def _chartqa(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    return {"relaxed_overall": float(metrics.relaxed_correctness(prediction, str(doc[spec.answer])))}


def _chartqa_aggregate(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    out = mean_by_group(spec, records)
    for split, name in (("human_test", "relaxed_human_split"), ("augmented_test", "relaxed_augmented_split")):
        hits = [r["scores"]["relaxed_overall"] for r in records if r["doc"].get("type") == split]
        if hits:
            out[name] = sum(hits) / len(hits)
    return out


SCORERS.add(
    "chartqa",
    Scorer(_chartqa, "relaxed_overall", aggregate=_chartqa_aggregate),
    "ChartQA relaxed accuracy (lmms-eval 0.7.2)",
)


def _answers(doc: dict, column: str) -> list[str]:
    value = doc[column]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


SCORERS.add(
    "anls",
    Scorer(lambda spec, doc, p: {"anls": metrics.anls(p, _answers(doc, spec.answer))}, "anls"),
    "ANLS, threshold 0.5, lmms-eval's raw-length quirk (DocVQA, InfoVQA)",
)


def _ocrbench(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    hit = metrics.ocrbench_match(prediction, _answers(doc, spec.answer), str(doc.get("dataset", "")))
    return {"correct": float(hit)}


def _ocrbench_aggregate(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    return metrics.ocrbench_score(
        [(r["doc"]["question_type"], bool(r["scores"]["correct"])) for r in records]
    )


SCORERS.add(
    "ocrbench",
    Scorer(_ocrbench, "ocrbench", aggregate=_ocrbench_aggregate),
    "OCRBench substring rules, 10 categories, final score /1000 (lmms-eval 0.7.2)",
)


def _mme(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    gold = str(doc[spec.answer]).lower().strip().replace(".", "")
    return {"correct": float(metrics.mme_parse(prediction) == gold)}


def _mme_aggregate(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    rows = [
        (r["doc"]["category"], str(r["doc"]["question_id"]), r["prediction"], str(r["doc"][spec.answer]))
        for r in records
    ]
    return metrics.mme_scores(rows)


def _mme_prompt(spec: TaskSpec, row: dict) -> str:
    """lmms-eval's MME prompt: the dataset's " Please answer yes or no." replaced by the post-prompt."""
    post = spec.options.get("post_prompt", "")
    question = row["question"].strip()
    return question.replace(" Please answer yes or no.", "") + post if post else question


SCORERS.add(
    "mme",
    Scorer(_mme, "perception", scale=2000.0, aggregate=_mme_aggregate, prompt=_mme_prompt),
    "MME acc + acc+ per category; perception /2000, cognition /800 (lmms-eval 0.7.2)",
)


# -- MMMU -----------------------------------------------------------------------------------------


def _mmmu_options(doc: dict) -> list[str]:
    options = doc.get("options") or "[]"
    return [str(o) for o in (ast.literal_eval(options) if isinstance(options, str) else options)]


def _mmmu_prompt(spec: TaskSpec, row: dict) -> str:
    """lmms-eval's MMMU prompt: question, "A. option" lines, then the instruction."""
    if row["question_type"] == "multiple-choice":
        lines = "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(_mmmu_options(row)))
        return f"{row['question']}\n{lines}\n\n{spec.options.get('mc_prompt', MMMU_MC_PROMPT)}"
    return f"{row['question']}\n\n{spec.options.get('open_prompt', MMMU_OPEN_PROMPT)}"


MMMU_MC_PROMPT = "Answer with the option's letter from the given choices directly."
MMMU_OPEN_PROMPT = "Answer the question using a single word or phrase."


def _mmmu_images(spec: TaskSpec, row: dict) -> list[str]:
    """The images the prompt refers to (``<image 2>`` -> column image_2), once each, sorted."""
    text = _mmmu_prompt(spec, row)
    return sorted({m.replace(" ", "_") for m in re.findall(r"<(image \d+)>", text)})


def _mmmu(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    if doc["question_type"] == "multiple-choice":
        rng = None
        if spec.options.get("random_fallback"):
            import random

            rng = random.Random(f"{spec.options.get('seed', 0)}:{doc.get('id')}")
        return {
            "correct": float(metrics.mmmu_choice(prediction, _mmmu_options(doc), rng) == doc[spec.answer])
        }
    return {"correct": float(metrics.mmmu_open_correct(prediction, doc[spec.answer]))}


def _mmmu_subject(sample_id: str) -> str:
    """validation_Art_Theory_12 -> Art_Theory."""
    return "_".join(sample_id.split("_")[1:-1])


def _mmmu_aggregate(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    return metrics.mmmu_scores(
        [(_mmmu_subject(str(r["doc"]["id"])), bool(r["scores"]["correct"])) for r in records]
    )


SCORERS.add(
    "mmmu",
    Scorer(_mmmu, "mmmu", aggregate=_mmmu_aggregate, prompt=_mmmu_prompt, image_columns=_mmmu_images),
    "MMMU official parsing; unparsable choices are wrong unless options.random_fallback",
)


# -- multiple choice (MMStar, SEED, AI2D, MMBench, RealWorldQA) ---------------------------------


def _choices(spec: TaskSpec, row: dict) -> dict[str, str]:
    """Option letter -> text, from a list column (options.list) or letter columns (options.columns)."""
    if "list" in spec.options:
        values = row[spec.options["list"]]
        values = ast.literal_eval(values) if isinstance(values, str) else values
        return {chr(ord("A") + i): str(v) for i, v in enumerate(values)}
    columns = spec.options.get("columns", [])
    return {
        chr(ord("A") + i): str(row[c]) for i, c in enumerate(columns) if row.get(c) not in (None, "", "nan")
    }


def _choice_prompt(spec: TaskSpec, row: dict) -> str:
    base = spec.prompt.format(**row)
    hint = row.get(spec.options.get("hint", ""))
    if hint and str(hint) != "nan":
        base = f"{hint}\n{base}"
    options = _choices(spec, row)
    lines = "".join(f"\n{k}. {v}" for k, v in options.items())
    post = spec.options.get(
        "post_prompt", "\nAnswer with the option's letter from the given choices directly."
    )
    return f"{base}{lines}{post}"


def _choice(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    options = _choices(spec, doc) or {c: "" for c in spec.options.get("letters", "ABCD")}
    answer = doc[spec.answer]
    if isinstance(answer, int) or (
        isinstance(answer, str) and answer.strip().isdigit() and "list" in spec.options
    ):
        answer = chr(ord("A") + int(answer))  # AI2D stores the option's index
    gold = str(answer).strip()
    if len(gold) == 1 and gold.isalpha():
        return {"accuracy": float(metrics.choice_letter(prediction, options) == gold.upper())}
    # a free-form answer (some RealWorldQA questions): exact match, case-insensitive, no final stop
    return {"accuracy": float(prediction.strip().rstrip(".").lower() == gold.rstrip(".").lower())}


SCORERS.add(
    "choice",
    Scorer(_choice, "accuracy", prompt=_choice_prompt),
    "multiple-choice letter (fovea's deterministic rule: letter, 'X.', 'answer is X', or an option's text)",
)


# -- embodied: RoboVQA, OpenEQA (MLCD-Embodied protocol) ----------------------------------------


def embodied_prompt(question: str, n_images: int) -> str:
    """The MLCD-Embodied evaluation prompt: numbered images ("Image 1:" then the image tag, one
    line each), the instruction naming how many images there are, the question, "Your answer is:"."""
    if n_images == 1:
        head = "Please observe the image carefully and answer following question based on the image.\n"
    elif n_images > 1:
        head = (
            f"Please observe these {n_images} images carefully and answer following question based on them.\n"
        )
    else:
        head = ""
    prefix = "".join(f"Image {k}:\n<image>\n" for k in range(1, n_images + 1))
    return f"{prefix}{head}{question}\nYour answer is:"


def _robovqa_images(spec: TaskSpec, row: dict) -> list[str]:
    return sorted((k for k in row if re.fullmatch(r"image\d+", k) and row[k]), key=lambda k: int(k[5:]))


def _robovqa_prompt(spec: TaskSpec, row: dict) -> str:
    question = row["question"]
    if ". is it" in question:
        question += " Please answer yes or no. "
    return embodied_prompt(question, len(_robovqa_images(spec, row)))


def _last_line(prediction: str) -> str:
    return prediction.split("\n")[-1]


def _robovqa(spec: TaskSpec, doc: dict, prediction: str) -> dict[str, float]:
    protocol = spec.options.get("bleu", "mlcd")
    fn = {"mlcd": metrics.robovqa_bleu_mlcd, "plain": metrics.robovqa_bleu_plain}[protocol]
    return {f"{protocol}_{k}": v for k, v in fn(_last_line(prediction), str(doc[spec.answer])).items()}


SCORERS.add(
    "robovqa",
    Scorer(_robovqa, "mlcd_score", prompt=_robovqa_prompt, image_columns=_robovqa_images),
    "RoboVQA BLEU-1..4, MLCD length-adaptive (options.bleu: plain for plain sentence BLEU)",
)


def _openeqa_prompt(spec: TaskSpec, row: dict) -> str:
    return embodied_prompt(row["question"], len(row.get("images") or []))


def _openeqa_category(doc: dict) -> str:
    return str(doc.get("type", "")).split("_")[-1]


def _openeqa_aggregate(spec: TaskSpec, records: list[Record]) -> dict[str, float]:
    """LLM-Match per category (type_level_1) and per scene source (type_level_2), and overall."""
    judged = [r for r in records if "llm_match" in r["scores"]]
    out: dict[str, float] = {}
    if judged:
        out["llm_match"] = sum(r["scores"]["llm_match"] for r in judged) / len(judged)
    groups: dict[str, list[float]] = {}
    for r in judged:
        kind = str(r["doc"].get("type", ""))
        source = "_".join(kind.split("_")[:2])
        for key in (_openeqa_category(r["doc"]), source):
            groups.setdefault(key, []).append(r["scores"]["llm_match"])
    out.update({k: sum(v) / len(v) for k, v in sorted(groups.items())})
    out["unjudged"] = float(len(records) - len(judged))
    return out


SCORERS.add(
    "openeqa",
    Scorer(
        lambda spec, doc, p: {},
        "llm_match",
        aggregate=_openeqa_aggregate,
        prompt=_openeqa_prompt,
        image_columns=lambda spec, row: ["images"],
        judged=True,
    ),
    "OpenEQA LLM-Match: a judge model marks 1-5, normalised (mark-1)/4, averaged per category",
)


# -- referring segmentation (eval/segmentation.py) ----------------------------------------------


def _segmentation():
    from . import segmentation  # torch and SAM only when a segmentation task runs

    return segmentation


SCORERS.add(
    "refer_seg",
    Scorer(
        lambda spec, doc, prediction: _segmentation().score(spec, doc, prediction),
        "ciou",
        aggregate=lambda spec, records: _segmentation().aggregate(spec, records),
        prompt=lambda spec, row: _segmentation().first_prompt(spec, row),
        answer_optional=True,
        predict=lambda *args: _segmentation().predict(*args),
    ),
    "referring segmentation (LISA / MLCD-Seg): cIoU = sum(I) / sum(U) over masks, gIoU = mean IoU; "
    "teacher-forced or generate-then-segment (options.mode)",
)
