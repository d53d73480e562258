"""Training a segmenting model (MLCD-Seg's recipe on a tiny model): records with [SEG] and masks,
loss = LM cross-entropy + 2.0 x BCE + 0.5 x Dice, SAM's image encoder frozen and its prompt
encoder, mask decoder and text2sam at their own rates; a record whose masks do not fit is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fovea
from fovea.config import from_dict, to_dict
from fovea.data.seg_scenes import make_seg_scenes
from fovea.tiny import tiny_sam
from fovea.train.loop import train
from fovea.train.recipe import Recipe, load_recipe

ROOT = Path(__file__).parents[1]
PARTS = {"connector": 1e-3, "lm": 1e-3, "seg.sam.prompt_encoder": 8e-4, "seg.sam.mask_decoder": 8e-4,
         "seg.text2sam": 3e-4}  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    make_seg_scenes(root / "scenes", 24, seed=0)
    return root, tiny_sam(root / "sam")


def _recipe(root: Path, sam: Path, out: Path, data: Path | None = None) -> Recipe:
    recipe = load_recipe(ROOT / "configs" / "tiny.yaml", [f"run.out_dir={out}", "run.progress=false",
                         "run.log_every=1", "run.report_to=[]", "run.save_every=100"])  # fmt: skip
    fields = to_dict(recipe)
    fields["model"]["sam"] = str(sam)
    fields["model"]["tokenizer_corpus"] = [
        "segment the red green blue yellow circle square triangle left right of sure"
    ]
    stage = {"name": "seg", "data": str(data or root / "scenes" / "records.json"), "train": PARTS,
             "max_steps": 3, "batch_size": 4}  # fmt: skip
    fields["stages"] = [stage]
    return from_dict(Recipe, fields)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_is_lm_plus_weighted_mask_losses_and_sams_encoder_stays_frozen(prepared, tmp_path):
    root, sam = prepared
    final = train(_recipe(root, sam, tmp_path / "run"))
    rows = _rows(tmp_path / "run")
    assert len(rows) == 3
    for row in rows:
        assert row["loss"] == pytest.approx(
            row["lm_loss"] + 2.0 * row["mask_bce"] + 0.5 * row["mask_dice"], rel=1e-5
        )
    model = fovea.load(final)
    assert model.config.seg is not None
    from transformers import SamModel

    start = SamModel.from_pretrained(sam).state_dict()
    trained = {
        k.removeprefix("seg.sam."): v for k, v in model.state_dict().items() if k.startswith("seg.sam.")
    }
    encoder = [k for k in start if k.startswith("vision_encoder.")]
    assert encoder and all(torch.equal(start[k], trained[k]) for k in encoder)
    decoder = [k for k in start if k.startswith("mask_decoder.") and start[k].is_floating_point()]
    assert any(not torch.equal(start[k], trained[k]) for k in decoder)


def test_a_record_whose_masks_do_not_fit_is_skipped_and_named(prepared, tmp_path, caplog):
    root, sam = prepared
    records = json.loads((root / "scenes" / "records.json").read_text())
    records[1]["segmentation"].append(records[1]["segmentation"][0])  # 1 [SEG], 2 masks
    records[2]["segmentation"] = [{"size": [10, 10], "counts": [0, 100]}]  # not the image's size
    data = root / "scenes" / "bad.json"
    data.write_text(json.dumps(records))
    with caplog.at_level("WARNING"):
        train(_recipe(root, sam, tmp_path / "run", data))
    text = caplog.text
    assert f"record {records[1]['id']}: 1 [SEG] tokens (after truncation) but 2 masks" in text
    assert f"record {records[2]['id']}: mask 0 is 10x10, its image 64x64" in text


def test_the_seg_demo_runs_offline_and_ends_with_its_checkpoint(tmp_path, capsys):
    from fovea.cli import main

    argv = [
        "demo",
        "seg",
        "--out",
        str(tmp_path),
        "--train-size",
        "16",
        "--eval-size",
        "4",
        "--epochs",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("checkpoint: ") and (tmp_path / "overlay.png").is_file()
    model = fovea.load(out[-1].removeprefix("checkpoint: "))
    assert model.config.seg is not None
    scores = json.loads((tmp_path / "results.json").read_text())["scores"]
    assert set(scores) == {"model", "best constant mask"} and scores["model"]["samples"] == 4
