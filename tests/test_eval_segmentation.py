"""RefCOCO-style evaluation of a segmenting model: every sentence asked on its own, teacher-forced
(MLCD-Seg's protocol) or generate-then-segment, cIoU and gIoU equal to the recorded masks' sums,
the protocol recorded in run.json, a row that cannot be scored named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from fovea.eval.runner import evaluate
from fovea.seg.metrics import mask_iou
from fovea.seg.model import add_segmentation
from fovea.tiny import tiny_sam, tiny_vlm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import SamModel

    vlm = tiny_vlm(mode="square", grid_pinpoints=None)
    add_segmentation(vlm, SamModel.from_pretrained(tiny_sam(tmp_path_factory.mktemp("sam") / "sam")))
    return vlm.eval()


@pytest.fixture
def data_root(tmp_path):
    folder = tmp_path / "data" / "RefCOCO" / "val"
    folder.mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        rows.append({"question_id": f"q{k}", "image": f"{k}.png", "answer": ["the left thing", "it"],
                     "segmentation": [2.0, 2.0, 20.0, 2.0, 20.0, 25.0, 2.0, 25.0]})  # fmt: skip
    rows.append({"question_id": "bad", "image": "0.png", "answer": ["nothing"], "segmentation": []})
    (folder / "rows.json").write_text(json.dumps(rows))
    return tmp_path / "data"


def test_teacher_forced_scores_equal_the_recorded_masks_sums(model, data_root, tmp_path):
    results = evaluate(model, ["refcoco_val"], tmp_path / "run", data_root, progress=False)
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "refcoco_val" / "samples.jsonl").read_text().splitlines()
    ]
    assert len(records) == 3 and all(len(r["prediction"]["pairs"]) == 2 for r in records)
    assert all(a == "Sure, [SEG]." for r in records for a in r["prediction"]["answers"])
    pairs = [r["prediction"]["pairs"] for r in records]
    ciou = sum(i for p in pairs for i, _ in p) / (sum(u for p in pairs for _, u in p) + 1e-10)
    giou = np.mean([np.mean([mask_iou(i, u) for i, u in p]) for p in pairs])
    scores = results["tasks"]["refcoco_val"]["metrics"]
    assert results["tasks"]["refcoco_val"]["errors"] == 1
    assert scores["ciou"] == pytest.approx(ciou) and scores["giou"] == pytest.approx(giou)
    errors = (tmp_path / "run" / "refcoco_val" / "errors.jsonl").read_text()
    assert '"bad"' in errors and "no 'segmentation' polygons" in errors
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["tasks"]["refcoco_val"]["options"]["mode"] == "teacher_forced"


def test_generate_then_segment_is_a_task_option_recorded_in_run_json(model, data_root, tmp_path):
    from importlib.resources import files

    spec = yaml.safe_load((files("fovea.eval") / "tasks" / "refcoco_val.yaml").read_text())
    spec.update(name="refcoco_val_generate", options={"mode": "generate"}, max_new_tokens=3)
    task = tmp_path / "refcoco_val_generate.yaml"
    task.write_text(yaml.safe_dump(spec))
    results = evaluate(model, [task], tmp_path / "run", data_root, progress=False, limit=2)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["tasks"]["refcoco_val_generate"]["options"]["mode"] == "generate"
    records = (tmp_path / "run" / "refcoco_val_generate" / "samples.jsonl").read_text().splitlines()
    assert all("[SEG]" in a for line in records for a in json.loads(line)["prediction"]["answers"])
    assert results
