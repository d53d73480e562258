"""Embodied benchmarks: converters to the reference parquet schemas, RoboVQA BLEU and the OpenEQA
LLM-Match judge (scripted, and through fovea's own OpenAI-compatible server)."""

from __future__ import annotations

import io
import json
import threading
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

import fovea
from fovea.cli import main
from fovea.eval.convert import robovqa_questions
from fovea.eval.judge import LLMJudge, judge_prompt, parse_mark
from fovea.eval.runner import evaluate, read_records
from fovea.eval.scorers import embodied_prompt
from fovea.tiny import tiny_vlm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fovea.load(tiny_vlm().save_pretrained(tmp_path_factory.mktemp("emb") / "tiny"))


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, format="JPEG")
    return buf.getvalue()


EPISODE = (
    "<task:success:discrete:False>\nput the cup in the sink Q: satisfied? <PRED>A: <PRED:ANSWER><PRED:DISCRETE>"
    "<PRED:BINARY>no</PRED:BINARY></PRED:DISCRETE></PRED:ANSWER>\n</PRED><task:planning:freeform>\n"
    "current goal is: tidy the kitchen Q: immediate next step? <PRED>A: put the cup in the sink\n</PRED>"
)


def test_robovqa_episode_text_becomes_questions_as_the_original_rewrites_them():
    assert robovqa_questions(EPISODE) == [
        ("task:success:discrete:False", "put the cup in the sink. is it satisfied?", "no"),
        (
            "task:planning:freeform",
            "current goal is: tidy the kitchen. what is the immediate next step?",
            "put the cup in the sink",
        ),
    ]


def test_robovqa_convert_then_evaluate(tmp_path, model):
    from tfrecord import TFRecordWriter

    src = tmp_path / "tfrecord"
    src.mkdir()
    writer = TFRecordWriter(str(src / "val-00000"))
    frames = [_jpeg((10 * k, 0, 0)) for k in range(18)]
    writer.write({}, {"images": (frames, "byte"), "texts": ([EPISODE.encode()], "byte")})
    writer.write({}, {"images": (frames[:4], "byte"), "texts": ([b"<task:x> no answer here"], "byte")})
    writer.close()
    out = tmp_path / "data" / "RoboVQA"
    assert main(["bench", "convert", "robovqa", str(src), str(out), "--quiet"]) == 0
    table = pq.read_table(out / "robovqa_val.parquet")
    assert table.column_names == ["id", "question", *[f"image{k}" for k in range(1, 9)], "answer"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [
        "robovqa_220577_task:success:discrete:False",
        "robovqa_220577_task:planning:freeform",
    ]
    assert rows[0]["image8"] == "robovqa_val/robovqa_220577/08.jpg"
    assert (out / rows[0]["image8"]).read_bytes() == frames[14]  # every other frame: the 8th kept is frame 14
    prompt = embodied_prompt(rows[0]["question"] + " Please answer yes or no. ", 8)
    assert prompt.startswith("Image 1:\n<image>\nImage 2:\n<image>\n") and prompt.endswith(
        "\nYour answer is:"
    )
    assert "Please observe these 8 images carefully" in prompt

    results = evaluate(model, ["robovqa"], tmp_path / "run", tmp_path / "data", progress=False)
    res = results["tasks"]["robovqa"]
    assert res["samples"] == 2 and set(res["metrics"]) == {f"mlcd_bleu{n}" for n in range(1, 5)} | {
        "mlcd_score"
    }
    record = read_records(tmp_path / "run" / "robovqa")[0]
    assert record["prompt"].count("<image>") == 8 and record["prompt"].endswith(
        "Please answer yes or no. \nYour answer is:"
    )


def _openeqa_source(root):
    questions = [
        {
            "question_id": "q1",
            "question": "What colour is the sofa?",
            "answer": "grey",
            "category": "attribute recognition",
            "episode_history": "hm3d-v0/000-abc",
        },
        {
            "question_id": "q2",
            "question": "Is the door open?",
            "answer": "yes",
            "extra_answers": ["it is open"],
            "category": "object state recognition",
            "episode_history": "scannet-v0/scene0001",
        },
        {
            "question_id": "q3",
            "question": "Where?",
            "answer": "x",
            "category": "localization",
            "episode_history": "other-v0/e",
        },
        {
            "question_id": "q4",
            "question": "Where?",
            "answer": "x",
            "category": "localization",
            "episode_history": "hm3d-v0/no-frames",
        },
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "open-eqa-v0.json").write_text(json.dumps(questions))
    for episode, n in (("hm3d-v0/000-abc", 70), ("scannet-v0/scene0001", 5)):
        folder = root / "frames" / episode
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (i, i, i)).save(folder / f"{i:05d}-rgb.png")
            (folder / f"{i:05d}-depth.png").write_bytes(b"")


def test_openeqa_convert_keeps_the_reference_schema_and_names_bad_questions(tmp_path, capsys):
    _openeqa_source(tmp_path / "src")
    out = tmp_path / "OpenEQA"
    assert main(["bench", "convert", "openeqa", str(tmp_path / "src"), str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert (
        "openeqa question q3: unknown scene source 'other-v0'" in err
        and "openeqa question q4: no *-rgb.png" in err
    )
    hm3d = pq.read_table(out / "openeqa_hm3d.parquet")
    assert hm3d.column_names == ["id", "type", "question", "images", "answer", "extra_answers"]
    row = hm3d.to_pylist()[0]
    assert row["type"] == "openeqa_hm3d-v0_attribute-recognition" and row["extra_answers"] is None
    assert len(row["images"]) == 32 and row["images"][:2] == [
        "openeqa_val/hm3d-v0/000-abc/00000-rgb.png",
        "openeqa_val/hm3d-v0/000-abc/00002-rgb.png",
    ]
    scan = pq.read_table(out / "openeqa_scannet.parquet").to_pylist()[0]
    assert len(scan["images"]) == 5 and scan["extra_answers"] == ["it is open"]


@pytest.mark.parametrize(
    ("reply", "mark"),
    [
        ("5", 5),
        (" 3\n", 3),
        ("Your mark: 4", 4),
        ("Reasoning...\nYour mark: 2\nThanks", 2),
        ("Your mark: 7", None),
        ("great answer", None),
        ("", None),
    ],
)
def test_parse_mark(reply, mark):
    assert parse_mark(reply) == mark


def test_judge_prompt_carries_every_field():
    plain = judge_prompt("Is it open?", "yes", "It is.")
    assert (
        "Question: Is it open?\nAnswer: yes\nResponse: It is.\nYour mark:" in plain
        and "Extra Answers" not in plain
    )
    extra = judge_prompt("Is it open?", "yes", "It is.", ["open"])
    assert "Answer: yes\nExtra Answers: ['open']\nResponse: It is." in extra


def test_openeqa_llm_match_is_cached_resumable_and_reports_unmarked_answers(tmp_path, model):
    _openeqa_source(tmp_path / "src")
    from fovea.eval.convert import openeqa

    openeqa(tmp_path / "src", tmp_path / "data" / "OpenEQA", frames=4, progress=False)
    calls = []

    def scripted(prompt: str) -> str:
        calls.append(prompt)
        return "Your mark: 5" if "sofa" in prompt else "I cannot say"

    run = tmp_path / "run"
    no_judge = evaluate(model, ["openeqa"], run, tmp_path / "data", progress=False)
    assert (
        no_judge["tasks"]["openeqa"]["notes"] and "llm_match" not in no_judge["tasks"]["openeqa"]["metrics"]
    )
    judge = LLMJudge(model="scripted", complete=scripted)
    res = evaluate(model, ["openeqa"], run, tmp_path / "data", judge=judge, progress=False)["tasks"][
        "openeqa"
    ]
    assert res["metrics"]["llm_match"] == 1.0 and res["metrics"]["attribute-recognition"] == 1.0
    assert res["metrics"]["openeqa_hm3d-v0"] == 1.0 and res["metrics"]["unjudged"] == 1.0
    assert len(calls) == 2
    evaluate(model, ["openeqa"], run, tmp_path / "data", judge=judge, progress=False)
    assert len(calls) == 3  # the marked answer came from the cache; only the unmarked one was asked again


def test_the_judge_can_be_fovea_s_own_server(tmp_path, model):
    """The wire protocol end to end: fovea serve is an OpenAI-compatible judge. A tiny random model
    gives no mark, which must come back as a recorded judge error, not a crash."""
    import uvicorn

    from fovea.infer.server import ServeConfig, create_app

    uv = uvicorn.Server(
        uvicorn.Config(
            create_app(model, ServeConfig(name="judge")), host="127.0.0.1", port=0, log_level="warning"
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        judge = LLMJudge(f"http://127.0.0.1:{port}/v1", "judge", max_tokens=4)
        records = [
            {
                "id": "a",
                "doc": {"question": "Is it open?", "answer": "yes"},
                "prediction": "yes",
                "scores": {},
            }
        ]

        class Spec:
            name, answer = "openeqa", "answer"

        judge.score(Spec, records, tmp_path / "judgements.jsonl", progress=False)
        entry = json.loads((tmp_path / "judgements.jsonl").read_text())
        assert entry["id"] == "a" and "judge call failed" not in entry["reply"]
        assert ("llm_match" in records[0]["scores"]) != ("judge_error" in records[0]["scores"])
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def test_openeqa_runs_its_32_frames_pooled_and_says_so(tmp_path, model, monkeypatch):
    """The published protocol: up to 32 evenly strided frames (70 in the episode), each a pooled
    one-frame video because a sample has more than 8 images; run.json records the rule."""
    _openeqa_source(tmp_path / "src")
    from fovea.eval.convert import openeqa

    openeqa(tmp_path / "src", tmp_path / "data" / "OpenEQA", frames=32, progress=False)
    seen, real = [], model.processor.sample

    def recording(items):
        processed = real(items)
        seen.append([(layout.frames, layout.mode) for layout in processed.layouts])
        return processed

    monkeypatch.setattr(model.processor, "sample", recording)
    evaluate(model, ["openeqa"], tmp_path / "run", tmp_path / "data", progress=False)
    counts = sorted(len(layouts) for layouts in seen)
    assert counts == [5, 32]  # scannet's 5 frames stay images; hm3d's 70 give 32
    assert all(layout == (1, "pad") for layouts in seen if len(layouts) == 32 for layout in layouts)
    assert all(layout[0] == 0 for layouts in seen if len(layouts) == 5 for layout in layouts)
    frames = json.loads((tmp_path / "run" / "run.json").read_text())["frames"]
    assert frames["images_above"] == 8 and frames["pool"] == "bilinear" and frames["stride"] == 2
