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
