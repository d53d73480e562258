"""RICE's region proposals: SAM's automatic mask generation (a tiny random SamModel) checked against
independent per-point forwards, NMS and stability by hand, PP-OCR (rapidocr's bundled models) on
rendered words, and the sharded, resumable manifest run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from fovea.cli import main
from fovea.errors import ConfigError
from fovea.pretrain.proposals import (
    OcrProposer,
    SamProposer,
    SamSettings,
    box_nms,
    mask_boxes,
    point_grid,
    propose,
    stability,
)
from fovea.pretrain.region_manifest import read_manifest
from fovea.tiny import tiny_sam


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    return tiny_sam(tmp_path_factory.mktemp("sam") / "sam")


def _words(path, words=(("EXIT", (20, 20)), ("fovea 42", (200, 90)))) -> None:
    image = Image.new("RGB", (400, 160), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    for text, where in words:
        draw.text(where, text, fill=(0, 0, 0), font=ImageFont.load_default(size=44))
    image.save(path)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 5]], dtype=torch.float)
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    # box 0 overlaps box 1 by 90/110 = 0.82 (dropped at 0.7); box 3 overlaps box 1 by 45/105 = 0.43 (kept)
    assert box_nms(boxes, scores, 0.7).tolist() == [1, 3, 2]
    assert box_nms(boxes, scores, 0.9).tolist() == [1, 3, 2, 0]


def test_mask_boxes_stability_and_the_point_grid():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 7] = True
    assert mask_boxes(masks).tolist() == [[2, 1, 5, 3], [7, 5, 8, 6]]
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])  # > 1: one pixel; > -1: three
    assert stability(logits, 1.0).tolist() == pytest.approx([1 / 3])
    assert point_grid(2, 10, 20).tolist() == [[5, 2.5], [15, 2.5], [5, 7.5], [15, 7.5]]


def test_sam_masks_are_the_models_own_masks_for_each_grid_point(sam):
    """With the filters off and no NMS, every mask the proposer keeps is one of the three masks an
    independent forward gives for its grid point (SamProcessor scaling the point itself), brought
    to the image's size."""
    from transformers import SamModel, SamProcessor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8))
    settings = SamSettings(str(sam), points_per_side=3, points_per_batch=4, iou_threshold=-np.inf,
                           stability_threshold=0.0, nms_threshold=1.0)  # fmt: skip
    got = SamProposer(settings)(image)
    model, processor = SamModel.from_pretrained(sam).eval(), SamProcessor.from_pretrained(sam)
    expected = []
    for x, y in point_grid(3, 90, 140).tolist():
        inputs = processor(images=image, input_points=[[[[x, y]]]], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, multimask_output=True)
        masks = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        expected += [m.numpy() for m in masks[0][0] if m.any()]
    assert all(mask.shape == (90, 140) for mask, _ in got)
    assert len(got) == len(expected)
    for mask, _ in got:
        assert any(np.array_equal(mask, e) for e in expected)


@pytest.fixture(scope="module")
def ocr():
    return OcrProposer()


def test_ocr_reads_rendered_words_with_their_boxes(ocr, tmp_path):
    _words(tmp_path / "w.png")
    words = ocr(Image.open(tmp_path / "w.png"))
    assert [w["text"] for w in words] == ["EXIT", "fovea 42"]
    x0, y0, x1, y1 = words[0]["box"]
    assert 10 <= x0 <= 25 and 15 <= y0 <= 35 and 100 <= x1 <= 150 and 55 <= y1 <= 90
    assert all(w["score"] >= 0.7 for w in words)


def test_propose_writes_a_manifest_shards_resumes_and_names_bad_images(sam, ocr, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        _words(images / f"{k}.png")
    (images / "bad.png").write_bytes(b"not an image")
    sam_settings = SamSettings(str(sam), points_per_side=4, iou_threshold=0.0, stability_threshold=0.0)
    run = dict(sam=sam_settings, ocr=0.7, min_edge=30, chunk_size=2)
    summary = propose([images], tmp_path / "one", **run)
    records, report = read_manifest(tmp_path / "one" / "regions.jsonl", 30)
    assert report.bad == [] and len(records) == summary["images"] == 3
    assert all([r.text for r in rec.ocr] == ["EXIT", "fovea 42"] for rec in records)
    assert all(rec.objects and rec.objects[0].mask.shape == (160, 400) for rec in records)
    assert summary["skipped"][0][0] == "images/bad.png"
    for rank in (1, 0):  # torchrun's environment: rank 1 then rank 0, which waits and joins the parts
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        propose([images], tmp_path / "two", **run)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    one = (tmp_path / "one" / "regions.jsonl").read_text()
    assert (tmp_path / "two" / "regions.jsonl").read_text() == one
    (tmp_path / "two" / "parts" / "part-000001.json").unlink()  # killed before part 1 was finished
    propose([images], tmp_path / "two", **run)
    assert (tmp_path / "two" / "regions.jsonl").read_text() == one
    with pytest.raises(ConfigError, match="begun with other settings"):
        propose([images], tmp_path / "two", **{**run, "min_edge": 10})


def test_the_command_refuses_a_run_with_nothing_to_propose_in_one_line(tmp_path, capsys):
    assert main(["pretrain", "propose", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fovea: error: give SAM (--sam MODEL), OCR (--ocr), or both"]
