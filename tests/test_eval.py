"""`fovea eval`: bundled tasks end to end, resume after a stop, bad data, local formats, reports."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import fovea
from fovea.cli import main
from fovea.eval.provenance import run_identity
from fovea.eval.report import load_results, markdown, radar
from fovea.eval.runner import evaluate, read_errors, read_records
from fovea.eval.tasks import expand, load_task, samples
from fovea.tiny import tiny_vlm

from cli_checks import refused

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_vlm().save_pretrained(tmp_path_factory.mktemp("eval") / "tiny")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("benchmarks")


class Counting:
    """A model wrapper that counts the prompts it answers and can stop after some batches."""

    def __init__(self, model, stop_after: int | None = None):
        self.model, self.stop_after, self.prompts, self.batches = model, stop_after, 0, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, prompts, **kwargs):
        if self.stop_after is not None and self.batches == self.stop_after:
            raise KeyboardInterrupt  # what a kill looks like from inside the loop
        self.batches += 1
        self.prompts += len(prompts)
        return self.model.generate(prompts, **kwargs)


def test_cli_eval_on_bundled_tasks_writes_json_markdown_and_radar(checkpoint, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        ["eval", "--model", str(checkpoint), "--tasks", "synthetic", "--data-root", str(data_root)]
        + ["--out", str(run), "--batch-size", "16", "--quiet"]
    )
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert list(results["tasks"]) == expand(["synthetic"])
    for res in results["tasks"].values():
        assert res["samples"] == 40 and res["errors"] == 0
        assert 0.0 <= res["headline_percent"] <= 100.0 and res["protocol"]
    assert "| synth_colour (accuracy, %) |" in (run / "results.md").read_text()
    assert (run / "radar.png").read_bytes()[:8] == PNG
    assert "results:" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["tasks"]["synth_word"]["protocol"].startswith("fovea synthetic")
    assert info["template"] == "qwen_1_5"  # the checkpoint's own


def test_template_flag_wraps_the_prompts_and_is_recorded(checkpoint, data_root, tmp_path, capsys):
    args = ["eval", "--model", str(checkpoint), "--tasks", "synth_colour", "--data-root", str(data_root)]
    args += ["--limit", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "bad"), "--template", "qwen_9"]) == 2
    assert "unknown template 'qwen_9'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    seen = []
    model = Counting(fovea.load(checkpoint))
    model.generate = lambda prompts, **kw: seen.append(kw["template"]) or ["red"] * len(prompts)
    evaluate(
        model, ["synth_colour"], tmp_path / "run", data_root, limit=4, template="vicuna_v1", progress=False
    )
    assert seen == ["vicuna_v1"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["template"] == "vicuna_v1"


def test_a_stopped_run_resumes_without_recomputing(checkpoint, data_root, tmp_path):
    import fovea

    model = fovea.load(checkpoint)
    tasks = ["synth_colour", "synth_count"]
    stopped = Counting(model, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(stopped, tasks, tmp_path / "run", data_root, batch_size=8, progress=False)
    assert stopped.prompts == 24
    first = tmp_path / "run" / "synth_colour" / "samples.jsonl"
    with first.open("a") as f:
        f.write('{"id": "colour-999", "predic')  # a line torn by the kill
    resumed = Counting(model)
    results = evaluate(resumed, tasks, tmp_path / "run", data_root, batch_size=8, progress=False)
    assert resumed.prompts == 80 - 24  # only the unfinished samples were generated
    straight = evaluate(model, tasks, tmp_path / "straight", data_root, batch_size=8, progress=False)
    assert results["tasks"] == straight["tasks"]
    got = {r["id"]: r["prediction"] for r in read_records(tmp_path / "run" / "synth_colour")}
    want = {r["id"]: r["prediction"] for r in read_records(tmp_path / "straight" / "synth_colour")}
    assert got == want and len(got) == 40


def _write_custom_task(root, rows, name="mine", fmt="jsonl"):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "red.png")
    if fmt == "jsonl":
        text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows)
        (folder / "data.jsonl").write_text(text + "\n")
    task = root / f"{name}.yaml"
    task.write_text(
        f"name: {name}\nprotocol: test\ndata: {{local: {name}}}\nid: qid\n"
        "prompt: '{question}'\nmax_new_tokens: 4\nscorer: exact\n"
    )
    return task


def test_bad_samples_are_named_and_the_rest_is_scored(checkpoint, tmp_path):
    import fovea

    rows = [
        {"qid": "ok-1", "question": "What colour?", "answer": "red", "image": "red.png"},
        {"qid": "no-image", "question": "What colour?", "answer": "red", "image": "missing.png"},
        {"qid": "no-answer", "question": "What colour?", "image": "red.png"},
        '{"qid": "torn", "question": ',
        {"qid": "no-question", "answer": "red", "image": "red.png"},
        {"qid": "ok-2", "question": "Colour?", "answer": "red", "image": "red.png"},
    ]
    task = _write_custom_task(tmp_path, rows)
    results = evaluate(fovea.load(checkpoint), [task], tmp_path / "run", tmp_path, progress=False)
    res = results["tasks"]["mine"]
    assert res["samples"] == 2 and res["errors"] == 4
    errors = {e["id"]: e["error"] for e in read_errors(tmp_path / "run" / "mine")}
    assert "missing.png" in errors["no-image"]
    assert "'answer'" in errors["no-answer"]
    assert "not JSON" in errors["3"]  # a torn line has no id: its row number stands in
    assert "question" in errors["no-question"]


def test_unknown_task_fails_before_loading_anything(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "nowhere"), "--tasks", "chartqa,chrtqa"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown task 'chrtqa'" in err and "did you mean 'chartqa'" in err and "Traceback" not in err


def test_missing_benchmark_data_says_where_to_put_it(tmp_path):
    spec = load_task("chartqa")
    with pytest.raises(Exception, match="no data at .*ChartQA.*--hub.*lmms-lab-encoder/ChartQA"):
        list(samples(spec, tmp_path))


def test_parquet_with_embedded_images_jsonl_and_save_to_disk_read_alike(tmp_path):
    import io

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(buf, format="PNG")
    rows = [
        {
            "type": "human_test",
            "question": f"q{i}",
            "answer": str(i),
            "image": {"bytes": buf.getvalue(), "path": None},
        }
        for i in range(3)
    ]
    (tmp_path / "ChartQA").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ChartQA" / "test-0.parquet")
    spec = load_task("chartqa")
    from_parquet = list(samples(spec, tmp_path))
    assert [s.prompt for s in from_parquet] == [
        f"q{i}\nAnswer the question with a single word." for i in range(3)
    ]
    assert isinstance(from_parquet[0].images[0], bytes) and "image" not in from_parquet[0].doc

    features = datasets.Features(
        {
            "type": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )
    ds = datasets.Dataset.from_list(
        [{**r, "image": Image.open(io.BytesIO(buf.getvalue()))} for r in rows], features=features
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "disk" / "ChartQA"))
    from_disk = list(samples(spec, tmp_path / "disk"))
    assert [s.prompt for s in from_disk] == [s.prompt for s in from_parquet]
    assert from_disk[0].images[0].size == (32, 32)

    broken = tmp_path / "broken"
    (broken / "ChartQA").mkdir(parents=True)
    (broken / "ChartQA" / "test.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(Exception, match="test.parquet is not a readable parquet file"):
        list(samples(spec, broken))


def test_report_puts_runs_side_by_side(tmp_path):
    def fake(name, scores):
        tasks = {
            t: {
                "protocol": "p",
                "samples": 10,
                "errors": 0,
                "headline": "accuracy",
                "headline_percent": v,
                "metrics": {"accuracy": v / 100},
                "notes": [],
            }
            for t, v in scores.items()
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"model": name, "tasks": tasks}))
        return tmp_path / name

    a = fake("mlcd", {"chartqa": 70.0, "docvqa_val": 80.0, "mme": 60.0})
    b = fake("clip", {"chartqa": 60.0, "docvqa_val": 75.0, "ocrbench": 50.0})
    runs = [load_results(a), load_results(b)]
    table = markdown(runs)
    assert "| task | mlcd | clip |" in table and "| mme (accuracy, %) | 60.00 | – |" in table
    assert radar(runs, tmp_path / "r.png").read_bytes()[:8] == PNG
    assert main(["eval", "report", str(a), str(b), "--report-out", str(tmp_path / "cmp.md")]) == 0
    assert (tmp_path / "radar.png").read_bytes()[:8] == PNG
    with pytest.raises(Exception, match="at least 3 tasks"):
        radar([{"name": "x", "tasks": {"a": {}, "b": {}}}], tmp_path / "x.png")
    assert main(["eval", "report", str(tmp_path / "nothing")]) == 2


def test_two_processes_split_the_samples_and_score_like_one(checkpoint, data_root, tmp_path):
    """torchrun, 2 CPU processes (gloo): each answers every other sample into its own file; the
    main process scores them all, and the predictions equal a one-process run's."""
    import os
    import subprocess
    import sys

    import fovea

    tasks = "synth_colour,synth_shape,synth_word"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29551"]
    cmd += [
        "-m",
        "fovea.cli",
        "eval",
        "--model",
        str(checkpoint),
        "--tasks",
        tasks,
        "--data-root",
        str(data_root),
    ]
    cmd += ["--out", str(tmp_path / "two"), "--limit", "12", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        lines = (tmp_path / "two" / "synth_colour" / f"samples.rank{rank}.jsonl").read_text().splitlines()
        assert len(lines) == 6
    one = evaluate(
        fovea.load(checkpoint), tasks.split(","), tmp_path / "one", data_root, limit=12, progress=False
    )
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["tasks"] == json.loads(json.dumps(one["tasks"]))
    got = {r["id"]: r["prediction"] for r in read_records(tmp_path / "two" / "synth_word")}
    assert got == {r["id"]: r["prediction"] for r in read_records(tmp_path / "one" / "synth_word")}


def test_a_task_without_data_fails_alone_and_bad_parquet_rows_are_named(checkpoint, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "root" / "ChartQA"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), (0, 0, 200)).save(folder / "blue.png")
    rows = [
        {"type": "human_test", "question": "What colour?", "answer": "blue", "image": "blue.png"},
        {"type": "human_test", "question": "What colour?", "answer": None, "image": "blue.png"},  # malformed
        {"type": "human_test", "question": "What colour?", "answer": "3", "image": "gone.png"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "test.parquet")
    run = tmp_path / "run"
    args = [
        "eval",
        "--model",
        str(checkpoint),
        "--tasks",
        "chartqa,docvqa_val",
        "--data-root",
        str(tmp_path / "root"),
    ]
    assert (
        main(args + ["--out", str(run), "--quiet"]) == 1
    )  # docvqa_val has no data: it fails, chartqa is kept
    results = json.loads((run / "results.json").read_text())
    assert results["tasks"]["chartqa"]["samples"] == 1 and results["tasks"]["chartqa"]["errors"] == 2
    assert "no data at" in results["tasks"]["docvqa_val"]["failed"]
    errors = {e["id"]: e["error"] for e in read_errors(run / "chartqa")}
    assert "'answer'" in errors["1"] and "gone.png" in errors["2"]
    assert "docvqa_val: failed: task docvqa_val: no data at" in capsys.readouterr().err


def test_another_model_s_run_is_refused_and_overwrite_recomputes(checkpoint, data_root, tmp_path, capfd):
    """Two checkpoints both called `final`: the second never reports the first one's numbers."""
    other = tiny_vlm(seed=1).save_pretrained(tmp_path / "b" / "final")
    run = tmp_path / "run"
    args = ["eval", "--tasks", "synth_colour", "--data-root", str(data_root), "--limit", "6", "--quiet"]
    assert main([*args, "--model", str(checkpoint), "--out", str(run)]) == 0
    first = (run / "results.json").read_text()
    capfd.readouterr()
    assert main([*args, "--model", str(other), "--out", str(run)]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds another run (model" in err and "--overwrite" in err
    assert (run / "results.json").read_text() == first  # nothing of the first run was touched
    assert main([*args, "--model", str(other), "--out", str(run), "--overwrite"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["checkpoint"] == str(other.resolve())
    assert (
        info["identity"]["model_fingerprint"]
        == run_identity(fovea.load(other), [], None, ".")["model_fingerprint"]
    )
    records = read_records(run / "synth_colour")
    assert len(records) == 6 and len({r["id"] for r in records}) == 6  # recomputed, not appended


def test_a_folder_fovea_did_not_write_is_never_cleared(checkpoint, data_root, tmp_path, capfd):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ["eval", "--model", str(checkpoint), "--tasks", "synth_colour", "--data-root", str(data_root)]
    assert main([*args, "--out", str(mine), "--overwrite", "--quiet"]) == 2
    assert "not a fovea eval run" in capfd.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_task_name_that_is_a_path_is_refused_before_anything_is_written(checkpoint, tmp_path, capsys):
    from fovea.errors import ConfigError

    rows = [{"qid": "a", "question": "What colour?", "answer": "red", "image": "red.png"}]
    task = _write_custom_task(tmp_path, rows)
    task.write_text(task.read_text().replace("name: mine", "name: ../../escaped"))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    run = tmp_path / "a" / "b" / "run"
    args = ["eval", "--model", str(checkpoint), "--tasks", str(task), "--data-root", str(tmp_path)]
    code = main([*args, "--out", str(run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(task) in err and "'name'" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    for bad in ["sub/x", "..", ".", "a\\b", "x y", ""]:
        task.write_text(f"name: '{bad}'\nscorer: exact\n")
        with pytest.raises(ConfigError, match="plain file name"):
            load_task(task)


def test_rows_that_are_not_records_or_lack_their_image_are_named(checkpoint, tmp_path, capsys):
    """A string row, a line that is not UTF-8 and a row with `image: null` in an image task are
    error rows with their ids, never a traceback or a silent text-only sample."""
    folder = tmp_path / "root" / "ChartQA"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), (0, 0, 200)).save(folder / "blue.png")
    good = {"type": "human_test", "question": "What colour?", "answer": "blue", "image": "blue.png"}
    lines = [
        json.dumps(good).encode(),
        b'"a string row"',
        b'{"question": "caf\xe9", "answer": "x", "image": "blue.png"}',
        json.dumps({**good, "image": None}).encode(),
    ]
    (folder / "test.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run = tmp_path / "run"
    args = ["eval", "--model", str(checkpoint), "--tasks", "chartqa", "--data-root", str(tmp_path / "root")]
    assert main([*args, "--out", str(run), "--quiet"]) == 0
    errors = {e["id"]: e["error"] for e in read_errors(run / "chartqa")}
    assert set(errors) == {"1", "2", "3"} and len(read_records(run / "chartqa")) == 1
    assert (
        "not a record" in errors["1"]
        and "not UTF-8" in errors["2"]
        and "no image in column 'image'" in errors["3"]
    )


def test_a_task_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    task = tmp_path / "mine.yaml"
    task.write_bytes(b"name: mine\nscorer: exact\nprompt: caf\xe9\n")
    err = refused(["eval", "--tasks", task], capsys)
    assert f"{task}: not UTF-8 text" in err


@pytest.mark.parametrize("task", __import__("fovea.eval.tasks", fromlist=["x"]).available())
def test_every_builtin_task_loads_with_a_registered_scorer_and_its_protocol(task):
    from fovea.eval.scorers import SCORERS

    spec = load_task(task)
    assert spec.name == task and spec.scorer in SCORERS and spec.protocol


def test_a_bundled_set_drawn_before_the_frames_kind_is_named_not_scored_empty(tmp_path):
    """An earlier fovea drew the synthetic set without frames questions: synth_frames says so, with
    the folder to remove, instead of scoring nothing."""
    from fovea.data.synthetic import generate
    from fovea.eval.tasks import DataError

    generate(tmp_path / "synthetic", 12, kinds=("colour", "shape"))
    with pytest.raises(
        DataError, match=r"no \{'type': 'frames'\} questions in .*synthetic.*remove that folder"
    ):
        list(samples(load_task("synth_frames"), tmp_path))
    assert len(list(samples(load_task("synth_colour"), tmp_path))) == 6
