"""Data sources, mixtures, sampling strategies, record checks; parts; deterministic data order."""

from __future__ import annotations

import json

import pytest

from fovea.data.records import BadRecord, normalise
from fovea.data.sources import RecordSource, sample_positions
from fovea.errors import ConfigError
from fovea.tiny import tiny_vlm
from fovea.train.data_order import epoch_order, micro_batches
from fovea.train.parts import assign


def _records(n: int) -> list[dict]:
    return [
        {"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("all", list(range(10))),
        ("first:3", [0, 1, 2]),
        ("end:2", [8, 9]),
        ("first:50%", [0, 1, 2, 3, 4]),
    ],
)
def test_sampling_strategies(strategy, expected):
    assert sample_positions(list(range(10)), strategy, seed=0) == expected


def test_random_strategy_is_seeded_and_bad_strategy_is_an_error():
    a = sample_positions(list(range(100)), "random:10", seed=3)
    assert a == sample_positions(list(range(100)), "random:10", seed=3) and len(set(a)) == 10
    with pytest.raises(ConfigError, match="sampling_strategy"):
        sample_positions([1], "last:3", seed=0)


def test_jsonl_and_yaml_mixture(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in _records(5)) + "\n{broken\n")
    (tmp_path / "b.json").write_text(json.dumps(_records(4)))
    (tmp_path / "mix.yaml").write_text(
        "datasets:\n  - {json_path: a.jsonl, sampling_strategy: all}\n  - {json_path: b.json, sampling_strategy: 'end:2'}\n"
    )
    source = RecordSource(tmp_path / "mix.yaml")
    assert len(source) == 8
    assert source.read(0)[0]["id"] == "r0" and source.read(7)[0]["id"] == "r3"
    bad, fallback = source.read(5)
    with pytest.raises(BadRecord, match="malformed JSON"):
        normalise(bad, None, fallback)


def test_record_normalisation(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    sample = normalise(
        {
            "id": "a",
            "image": "x.png",
            "conversations": [
                {"role": "user", "content": "What?"},
                {"role": "assistant", "content": "That."},
            ],
        },
        tmp_path,
        "f",
    )
    assert sample.messages[0]["content"] == "<image>\nWhat?"  # untagged image placed first, LLaVA style
    with pytest.raises(BadRecord, match="record b: no assistant answer"):
        normalise({"id": "b", "conversations": [{"from": "human", "value": "hi"}]}, None, "f")


def test_parts_pick_the_most_specific_rate():
    model = tiny_vlm()
    rates = assign(model, {"tower": 1e-5, "tower.layers.1": 3e-5, "connector": 1e-3})
    assert rates["tower.model.encoder.layers.1.mlp.fc1.weight"] == 3e-5
    assert rates["tower.model.encoder.layers.0.mlp.fc1.weight"] == 1e-5
    assert not any(n.startswith("lm.") for n in rates)
    assert not model.lm.model.embed_tokens.weight.requires_grad
    with pytest.raises(ConfigError, match="unknown part 'vision'"):
        assign(model, {"vision": 1e-3})


def test_data_order_splits_global_batches_across_processes():
    one = next(micro_batches(20, micro=4, world=1, rank=0, seed=0, start=(0, 2)))
    halves = [next(micro_batches(20, micro=2, world=2, rank=r, seed=0, start=(0, 2)))[2] for r in (0, 1)]
    assert one[2] == halves[0] + halves[1]
    grouped = epoch_order(8, 0, 0, lengths=[1, 9, 2, 8, 3, 7, 4, 6], group=4)
    assert sorted(grouped) == list(range(8)) and epoch_order(8, 0, 1) != epoch_order(8, 0, 0)


def test_modality_grouping_makes_one_modality_batches_and_resumes_exactly():
    """LLaVA-NeXT's group_by_modality_length: every global micro-batch all images or all text
    (what each modality leaves over comes mixed, last), lengths sorted within a chunk of 8
    batches, and a start in the middle gives the same batches as running there."""
    import random

    rng = random.Random(0)
    n, micro = 203, 4
    lengths = [rng.randint(10, 900) for _ in range(n)]
    images = [rng.random() < 0.6 for _ in range(n)]
    order = micro_batches(
        n, micro=micro, world=1, rank=0, seed=3, start=(0, 0), lengths=lengths, modality=images
    )
    batches = [next(order) for _ in range(n // micro)]
    flat = [j for _, _, b in batches for j in b]
    assert len(set(flat)) == len(flat) == n // micro * micro
    group = 8 * micro
    whole = sum(len([j for j in range(n) if images[j] == m]) // group * group for m in (True, False))
    pure = [b for _, _, b in batches[: whole // micro]]
    assert len(pure) == 40 and all(len({images[j] for j in b}) == 1 for b in pure)
    assert {images[b[0]] for b in pure} == {True, False}
    later = micro_batches(
        n, micro=micro, world=1, rank=0, seed=3, start=(0, 17), lengths=lengths, modality=images
    )
    assert [next(later) for _ in range(5)] == batches[17:22]
    plain = epoch_order(n, 3, 0, lengths, 8 * micro)
    assert plain == epoch_order(n, 3, 0, lengths, 8 * micro, None)  # without modality: as before


def _row(rid, first="q", **extra) -> bytes:
    turns = [{"from": "human", "value": first}, {"from": "gpt", "value": "a"}]
    return json.dumps({"id": rid, "conversations": turns, **extra}).encode()


# Every kind of bad row a JSONL file can hold; each must be skipped and named, none may raise.
_BAD_ROWS = {
    "bad.jsonl:2": b'{"id": "latin1", "conversations": "caf\xe9"}',  # not UTF-8: no id can be read
    "bad.jsonl:3": b'"just a string"',
    "bad.jsonl:4": b"[1, 2]",
    "bad.jsonl:5": b"42",
    "bad.jsonl:6": b"null",
    "null-turns": json.dumps({"id": "null-turns", "conversations": None}).encode(),
    "null-image": _row("null-image", "<image>\nq", image=None),
    "null-value": _row("null-value", None),
    "broken-image": _row("broken-image", "<image>\nq", image="broken.png"),
}


@pytest.fixture
def bad_jsonl(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([_row("good"), *_BAD_ROWS.values(), _row(None)]) + b"\n")
    return path


def test_every_bad_jsonl_row_is_a_named_skip_in_the_dataset(bad_jsonl):
    from fovea.data.dataset import Skipped, SupervisedDataset

    dataset = SupervisedDataset(RecordSource(bad_jsonl), tiny_vlm(), template="plain")
    assert dataset[0]["id"] == "good"
    assert dataset[len(dataset) - 1]["id"] == f"bad.jsonl:{len(dataset)}"  # a null id: FILE:LINE
    skipped = [dataset[i] for i in range(1, len(dataset) - 1)]
    assert all(isinstance(s, Skipped) for s in skipped)
    assert [s.id for s in skipped] == list(_BAD_ROWS)
    for line, s in enumerate(skipped, 2):  # one line naming FILE:LINE (as editors count) and the record
        assert s.reason.startswith(f"{bad_jsonl}:{line}: record {s.id}: ") and "\n" not in s.reason
    reasons = dict((s.id, s.reason) for s in skipped)
    assert "not UTF-8" in reasons["bad.jsonl:2"] and "not a JSON object" in reasons["bad.jsonl:3"]
    assert "conversations is null" in reasons["null-turns"]
    assert "1 <image> tags but image is null" in reasons["null-image"]
    assert "broken.png" in reasons["broken-image"]
    system = {
        "id": "sys",
        "conversations": [{"from": "system", "value": "s"}, *_records(1)[0]["conversations"]],
    }
    bad_jsonl.write_text(json.dumps(system) + "\n")  # `plain` has no system turn: this record is bad
    skipped = SupervisedDataset(RecordSource(bad_jsonl), tiny_vlm(), template="plain")[0]
    assert skipped.reason == f"{bad_jsonl}:1: record sys: template 'plain' has no system turn"


def test_data_check_names_every_bad_jsonl_row(bad_jsonl, capsys):
    from fovea.cli import main
    from fovea.data.check import check_data

    report = check_data(bad_jsonl, decode=True, progress=False)
    assert report.total == 2 + len(_BAD_ROWS)
    assert [p.split(": ")[1] for p in report.problems] == [f"record {rid}" for rid in _BAD_ROWS]
    assert [p.split(": ")[0] for p in report.problems] == [
        f"{bad_jsonl}:{n}" for n in range(2, 2 + len(_BAD_ROWS))
    ]
    capsys.readouterr()
    assert main(["data", "check", str(bad_jsonl), "--decode"]) == 1  # problems found, not a crash
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(_BAD_ROWS) + 1 and "Traceback" not in out + err


def test_json_list_or_mixture_that_is_not_utf8_or_yaml_is_one_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"id": "caf\xe9"}]')
    with pytest.raises(ConfigError, match=r"d\.json: not UTF-8 text: byte 0xe9 at offset 12$"):
        RecordSource(path)
    mixture = tmp_path / "mix.yaml"
    mixture.write_bytes(b"datasets:\n  - {json_path: caf\xe9.json}\n")
    with pytest.raises(ConfigError, match=r"mix\.yaml: not UTF-8 text"):
        RecordSource(mixture)
    mixture.write_text("datasets: [{json_path: a.json\n")
    with pytest.raises(ConfigError, match=r"mix\.yaml: not valid YAML \([^\n]*\)$"):
        RecordSource(mixture)


def test_synthetic_frames_questions_run_as_pooled_frames(tmp_path):
    """The `frames` kind: nine labelled frames, one red shape among them (the answer, 1-based); a
    training sample of nine images is nine pooled one-frame videos."""
    import json

    from PIL import Image

    from fovea.data.dataset import SupervisedDataset
    from fovea.data.sources import RecordSource
    from fovea.data.synthetic import COLOURS, generate
    from fovea.tiny import tiny_vlm

    qa, captions = generate(tmp_path, 4, kinds=("frames",), seed=3)
    records = json.loads(qa.read_text())
    for record in records:
        assert len(record["images"]) == 9 and record["answer"] in {str(i) for i in range(1, 10)}
        question = record["conversations"][0]["value"]
        assert question.startswith("Frame 1: <image>\nFrame 2: <image>\n") and question.count("<image>") == 9
        red = [
            i + 1
            for i, name in enumerate(record["images"])
            if COLOURS["red"]
            in {colour for _, colour in Image.open(tmp_path / name).convert("RGB").getcolors(4096)}
        ]
        assert red == [int(record["answer"])]
    dataset = SupervisedDataset(RecordSource(qa), tiny_vlm(), template="qwen_1_5")
    assert [layout.frames for layout in dataset[0]["image_layouts"]] == [1] * 9
    assert json.loads(captions.read_text())[0]["conversations"][0]["value"].endswith("Describe the frames.")


def test_a_json_list_names_each_record_by_the_line_it_begins_on(tmp_path):
    """Editors count lines from 1: a record is FILE:LINE where its object opens, blank lines and
    multi-line records included (a JSONL file: the line itself)."""
    records = _records(3)
    text = (
        "[\n"
        + json.dumps(records[0], indent=1)
        + ",\n\n  "
        + json.dumps(records[1])
        + ", "
        + '{"id": null,\n"x": 1}'
        + "\n]\n"
    )
    path = tmp_path / "d.json"
    path.write_text(text)
    source = RecordSource(path)
    first_lines = 2 + json.dumps(records[0], indent=1).count("\n")
    assert [source.line(i) for i in range(3)] == [2, first_lines + 2, first_lines + 2]
    assert source.read(2)[1] == f"d.json:{first_lines + 2}" and source.where(0) == f"{path}:2"
    path.write_text("[1, 2,]")
    with pytest.raises(ConfigError, match=r"d\.json: not valid JSON \(.* at line 1\)"):
        RecordSource(path)
    path.write_text('{"a": 1}')
    with pytest.raises(ConfigError, match=r"d\.json: expected a JSON list of records"):
        RecordSource(path)
    lines = tmp_path / "d.jsonl"
    lines.write_text("\n" + json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n")
    assert [RecordSource(lines).where(i) for i in range(2)] == [f"{lines}:2", f"{lines}:4"]
