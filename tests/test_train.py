"""Training: loss falls, exact resume, N processes = 1 process, bad data, divergence, LoRA, recipes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fovea
from fovea.cli import main
from fovea.config import from_dict, to_dict
from fovea.data.synthetic import generate
from fovea.train.loop import train
from fovea.train.recipe import Recipe, load_recipe

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, 96, seed=1)
    return out


def _recipe(root: Path, out: Path, **stage1) -> Recipe:
    recipe = load_recipe(
        ROOT / "configs" / "tiny.yaml",
        [
            f"run.out_dir={out}",
            "run.progress=false",
            "run.log_every=1",
            "run.report_to=[]",
            f"stages.0.data={root / 'captions.json'}",
            "stages.0.max_steps=3",
            f"stages.1.data={root / 'qa.json'}",
            "stages.1.max_steps=12",
            "stages.1.batch_size=8",
        ],
    )
    fields = to_dict(recipe)
    fields["stages"][1].update(stage1)
    return from_dict(Recipe, fields)


def _metrics(out: Path, stage: str = "finetune") -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["stage"] == stage]


def _weights(path: Path) -> dict:
    return fovea.load(path).state_dict()


def test_two_stages_train_and_the_loss_falls(data, tmp_path):
    final = train(_recipe(data, tmp_path))
    losses = _metrics(tmp_path)
    assert len(losses) == 12 and losses[-1] < losses[0]
    model = fovea.load(final)
    assert isinstance(model.generate("What colour is the shape?", images=[data / "images/000000.png"]), str)
    assert (tmp_path / "recipe.json").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_to_the_same_weights(data, tmp_path, monkeypatch, caplog, workers):
    """Killed between steps 7 and 8 and resumed: the same weights as a run never killed, with the
    batches made here or by DataLoader workers (the uninterrupted run makes them here)."""
    caplog.set_level(logging.WARNING)
    reference = train(_recipe(data, tmp_path / "a", epochs=1))
    from fovea.train import loop

    original, calls = loop._StageLoop.step, {"n": 0}

    def dying_step(self, source, position):
        if self.stage.name == "finetune":
            calls["n"] += 1
            if calls["n"] == 8:
                raise KeyboardInterrupt  # killed between step 7 and 8
        return original(self, source, position)

    recipe = _recipe(data, tmp_path / "b", epochs=1)
    recipe.run.save_every, recipe.run.log_every, recipe.run.num_workers = 5, 1, workers
    monkeypatch.setattr(loop._StageLoop, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(recipe)
    monkeypatch.setattr(loop._StageLoop, "step", original)
    assert (tmp_path / "b" / "stage-1-finetune" / "checkpoints" / "step-00000005").is_dir()
    resumed = train(recipe)
    a, b = _weights(reference), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["stage"] == "finetune"]
    assert steps == list(range(1, len(steps) + 1))  # steps 6-7 of the killed run are not repeated
    # the tied lm_head that accelerate leaves out of each save comes back tied: no note about it
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_processes_equal_one(data, tmp_path, engine):
    """torchrun with gloo on CPU: 2 processes x 4 samples = 1 process x 8 samples, step by step,
    and (FSDP) the gathered final weights equal the single-process ones."""
    import yaml

    single = train(_recipe(data, tmp_path / "one"))
    two = _recipe(data, tmp_path / "two")
    two.run.distributed = engine
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(two)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = "29533" if engine == "ddp" else "29534"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "-m",
        "fovea.cli",
        "train",
        str(recipe),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, both = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(both) == 12
    assert max(abs(a - b) for a, b in zip(one, both)) < 1e-4 * max(one)
    a, b = _weights(single), _weights(tmp_path / "two" / "stage-1-finetune" / "final")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_bad_records_are_skipped_counted_and_named(data, tmp_path, caplog):
    records = json.loads((data / "qa.json").read_text())
    records[3]["image"] = "images/missing.png"
    records[5]["conversations"][0]["value"] = "<image><image> two tags"
    records[7]["conversations"] = []
    bad = tmp_path / "qa.json"
    bad.write_text(json.dumps(records))
    (tmp_path / "images").symlink_to(data / "images")
    caplog.set_level("WARNING")
    train(_recipe(data, tmp_path / "out", data=str(bad), epochs=1, max_steps=None))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == 3
    for rid in (records[3]["id"], records[5]["id"], records[7]["id"]):
        assert rid in caplog.text
    assert main(["data", "check", str(bad)]) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_jsonl_rows_and_images_are_skipped_with_id_and_file(data, tmp_path, caplog, workers):
    """Found in the main process or in a DataLoader worker, a bad record is named and counted."""
    records = json.loads((data / "qa.json").read_text())[:16]
    (tmp_path / "images").symlink_to(data / "images")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    null_image = {**records[1], "id": "null-image", "image": None}
    broken = {**records[2], "id": "broken-image", "image": "broken.png"}
    bad_rows = [
        b'{"id": "latin1", "conversations": "caf\xe9"}',  # not UTF-8: killed the run at step 1
        b'"a string row"',
        json.dumps({"id": "null-turns", "conversations": None}).encode(),
        json.dumps(null_image).encode(),
        json.dumps(broken).encode(),
    ]
    bad = tmp_path / "qa.jsonl"
    bad.write_bytes(b"\n".join([json.dumps(r).encode() for r in records] + bad_rows) + b"\n")
    caplog.set_level("WARNING")
    recipe = _recipe(data, tmp_path / "out", data=str(bad), epochs=1, max_steps=None, batch_size=7)
    recipe.run.num_workers = workers
    train(recipe)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == len(bad_rows)
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped: ")]
    assert len(skips) == len(bad_rows)
    for line, rid in enumerate(
        ("qa.jsonl:17", "qa.jsonl:18", "null-turns", "null-image", "broken-image"), 17
    ):
        assert any(s.startswith(f"skipped: {bad}:{line}: record {rid}: ") for s in skips), (rid, skips)
    assert any("broken.png" in line for line in skips)  # the image is named as well as the record


def test_divergence_stops_with_one_line(data, tmp_path, monkeypatch, capsys):
    from fovea.train import loop

    def diverged(self, batch):  # (token loss sum, mask loss sums): the token loss is nan
        zero = torch.zeros(())
        return torch.tensor(float("nan"), requires_grad=True), (zero, zero, zero)

    monkeypatch.setattr(loop._StageLoop, "forward", diverged)
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(_recipe(data, tmp_path / "out"))))
    assert main(["train", str(recipe)]) == 2
    assert "loss is nan at step 1" in capsys.readouterr().err


def test_lora_trains_adapters_and_merges(data, tmp_path):
    recipe = _recipe(data, tmp_path, train={"connector": 1e-3})
    fields = to_dict(recipe)
    fields["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    final = train(from_dict(Recipe, fields))
    model = fovea.load(final)  # merged: plain weights, no peft needed
    assert not any("lora" in k for k in model.state_dict())
    base = fovea.load(tmp_path / "stage-0-align" / "final")
    changed = [
        k
        for k in base.state_dict()
        if k.startswith("lm.") and not torch.equal(base.state_dict()[k], model.state_dict()[k])
    ]
    assert changed and all("proj" in k for k in changed)  # only LoRA-targeted projections moved


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.stages


def test_gradient_checkpointing_gives_the_same_step(data, tmp_path):
    plain = _recipe(data, tmp_path / "plain", max_steps=2)
    checkpointed = _recipe(data, tmp_path / "ckpt", max_steps=2)
    checkpointed.model.gradient_checkpointing = True
    a, b = _weights(train(plain)), _weights(train(checkpointed))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_packed_and_unpacked_runs_follow_the_same_loss_curve(data, tmp_path, monkeypatch):
    """Packing is a layout: the same samples each step, the same loss to 1e-5 at every step, and
    the same weights at the end (AdamW's steps compound float noise: 1e-4). Every micro-batch is
    packed here, however little padding it has."""
    from fovea.data import packing

    monkeypatch.setattr(packing, "PACK_BELOW", 2.0)
    packed = train(_recipe(data, tmp_path / "packed"))
    loose = train(_recipe(data, tmp_path / "loose", packing=False))
    a, b = _metrics(tmp_path / "packed"), _metrics(tmp_path / "loose")
    assert len(a) == len(b) == 12
    assert all(abs(x - y) < 1e-5 * max(1.0, abs(y)) for x, y in zip(a, b)), list(zip(a, b))
    wa, wb = _weights(packed), _weights(loose)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def test_compiled_blocks_train_as_uncompiled(data, tmp_path, monkeypatch):
    """model.compile: every tower and LM block compiled (dynamo traced; the eager backend here, so
    the test needs no C++ build), the same losses as uncompiled."""
    from fovea.train import build

    monkeypatch.setattr(build, "COMPILE_BACKEND", "eager")
    counted = []
    original = build.compile_blocks
    monkeypatch.setattr(build, "compile_blocks", lambda model: counted.append(original(model)) or counted[-1])
    compiled = _recipe(data, tmp_path / "compiled", max_steps=3)
    compiled.model.compile = True
    train(compiled)
    train(_recipe(data, tmp_path / "plain", max_steps=3))
    assert counted == [3 + 2]  # tiny.yaml: 3 CLIP encoder layers, 2 Qwen2 decoder layers
    a, b = _metrics(tmp_path / "compiled"), _metrics(tmp_path / "plain")
    assert len(a) == 3 and all(abs(x - y) < 1e-5 * max(1.0, abs(y)) for x, y in zip(a, b))
