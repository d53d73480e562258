"""RICE's region manifest: boxes, COCO RLE (compressed and plain) and polygon masks, OCR boxes with
text; regions under 128 px dropped and counted; a bad line named by FILE:LINE and image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fovea.imaging.masks import mask_runs, polygon_mask, rle_decode, rle_encode
from fovea.pretrain.region_manifest import RegionError, parse_line, read_manifest


def _runs(mask: np.ndarray) -> list[int]:
    """COCO's run lengths of a mask: column-major, background first."""
    flat = mask.T.reshape(-1).astype(np.int8)
    runs, value, length = [], 0, 0
    for pixel in flat:
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    return runs + [length]


@pytest.mark.parametrize("seed", range(5))
def test_rle_in_both_forms_gives_the_mask_back(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((37, 23), dtype=bool)
    for _ in range(4):
        y, x = rng.integers(0, 30), rng.integers(0, 18)
        mask[y : y + rng.integers(1, 8), x : x + rng.integers(1, 6)] = True
    runs = _runs(mask)
    assert mask_runs(mask) == runs
    assert np.array_equal(rle_decode({"size": [37, 23], "counts": runs}), mask)
    encoded = rle_encode(mask)  # pycocotools' compressed string, decoded by a separate reader
    assert isinstance(encoded["counts"], str) and np.array_equal(rle_decode(encoded), mask)


def test_a_polygon_fills_what_it_encloses():
    mask = polygon_mask([[2, 2, 12, 2, 12, 8, 2, 8]], [10, 16])
    assert mask[3:8, 3:12].all() and not mask[9].any() and not mask[:, 14:].any()


def test_every_kind_of_region_is_read_and_small_ones_are_dropped_and_counted(tmp_path):
    big = np.zeros((300, 400), dtype=bool)
    big[10:210, 20:170] = True  # 200 x 150: kept
    lines = [
        {"image": "a.jpg", "objects": [{"box": [0, 0, 200, 130]}, {"box": [0, 0, 100, 300]},
                                      {"mask": rle_encode(big)}],
         "ocr": [{"box": [5, 5, 300, 140], "text": "EXIT"}, {"box": [0, 0, 50, 20], "text": "no"}]},
        {"image": "b.jpg", "objects": [{"polygon": [[0, 0, 150, 0, 150, 150, 0, 150]], "size": [200, 200]}]},
    ]  # fmt: skip
    manifest = tmp_path / "regions.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records, report = read_manifest(manifest)
    assert [r.image for r in records] == ["a.jpg", "b.jpg"]
    a, b = records
    assert [o.box for o in a.objects] == [(0, 0, 200, 130), (20, 10, 170, 210)]  # the 100-px one dropped
    assert [o.text for o in a.ocr] == ["EXIT"] and a.objects[1].mask is not None
    assert b.objects[0].box == (0, 0, 151, 151)  # PIL fills the edge pixels too
    assert (report.records, report.kept, report.small, report.bad) == (2, 4, 2, [])


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "not JSON"),
        ('{"objects": []}', "no 'image' id"),
        ('{"image": "c.jpg", "objects": [{"box": [10, 10, 5, 40]}]}', "image c.jpg: a box needs x1 > x0"),
        ('{"image": "c.jpg", "ocr": [{"box": [0, 0, 200, 200]}]}', "image c.jpg: an OCR region needs its 'text'"),
        ('{"image": "c.jpg", "objects": [{"mask": {"size": [4, 4], "counts": [3, 2]}}]}', "runs cover 5 pixels, not its 4x4"),
        ('{"image": "c.jpg", "objects": [{"polygon": [[0, 0, 1, 1]]}]}', "needs the image size"),
        ('{"image": "c.jpg", "objects": "box"}', "'objects' must be a list"),
    ],
)  # fmt: skip
def test_a_bad_line_is_named_by_file_line_and_image(tmp_path, line, why):
    with pytest.raises(RegionError, match=why):
        parse_line(line)
    manifest = tmp_path / "regions.jsonl"
    manifest.write_text('{"image": "ok.jpg"}\n' + line + "\n")
    records, report = read_manifest(manifest)
    assert [r.image for r in records] == ["ok.jpg"] and len(report.bad) == 1
    assert report.bad[0].startswith(f"{manifest}:2: ") and why in report.bad[0]
