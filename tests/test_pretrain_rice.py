"""RICE end to end on tiny random models: region features and OCR labels (sharded, resumable, bad
records named), region training (two processes equal one, a killed run resumes exactly), and the
exported tower."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fovea.cli import main
from fovea.config import from_dict, to_dict
from fovea.pretrain.features import compute_features, load_features
from fovea.pretrain.recipe import PretrainRecipe
from fovea.pretrain.region_features import RegionRows, load_regions
from fovea.pretrain.region_manifest import read_manifest
from fovea.pretrain.regions import region_visibility
from fovea.pretrain.rice_scenes import make_region_scenes
from fovea.pretrain.teacher import TeacherSpec, build_teacher
from fovea.pretrain.train import train_encoder
from fovea.tiny_tokenizers import tiny_tokenizer

TINY_VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2}  # fmt: skip
TEACHER = "clip-vit-l14-336-tiny"
STUDENT = "rice-vit-l14-560-tiny"


def _regions_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "regions", "--manifest", str(root / "images" / "regions.jsonl"), "--tower", TEACHER,
            "--random-weights", "--min-edge", "8", "--tokenizer", str(root / "tok"), "--ocr-labels", "3",
            str(root / "images"), "--out", str(out), "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Scenes -> image features, centres, labels; region features, region centres, region labels."""
    root = tmp_path_factory.mktemp("rice")
    make_region_scenes(root / "images", 24, seed=0)
    tiny_tokenizer(corpus=["cat dog sun map"]).save_pretrained(root / "tok")
    steps = [
        ["features", "--tower", TEACHER, "--random-weights", str(root / "images"), "--out", str(root / "feats"),
         "--quiet"],
        ["cluster", str(root / "feats"), "--centres", "6", "--out", str(root / "centres")],
        ["assign", str(root / "feats"), "--centres", str(root / "centres"), "--labels", "2", "--out",
         str(root / "labels")],
        _regions_args(root, root / "regions")[1:],
        ["cluster", str(root / "regions"), "--centres", "5", "--out", str(root / "rcentres")],
        ["assign", str(root / "regions"), "--centres", str(root / "rcentres"), "--labels", "1", "--out",
         str(root / "rlabels")],
    ]  # fmt: skip
    for args in steps:
        assert main(["pretrain", *args]) == 0, args
    return root


# -- region features ---------------------------------------------------------------------------------


def test_every_kept_region_is_a_row_and_every_ocr_region_has_its_tokens(prepared):
    records, report = read_manifest(prepared / "images" / "regions.jsonl", 8)
    table = load_regions(prepared / "regions")
    assert table.rows == sum(len(r.objects) for r in records) == len(load_features(prepared / "regions").ids)
    assert load_features(prepared / "regions").ids[:2] == [f"{records[0].image}#0", f"{records[0].image}#1"]
    tokenizer = tiny_tokenizer(corpus=["cat dog sun map"])
    for record in records:
        got = table.ocr.get(record.image, [])
        assert [region.text for _, region in got] == [region.text for region in record.ocr]
        for tokens, region in got:
            ids = tokenizer(region.text, add_special_tokens=False)["input_ids"]
            assert tokens == list(dict.fromkeys(ids))[:3]
    assert table.vocab == len(tokenizer)


@pytest.mark.parametrize("pool", ["crop", "roi"])
def test_a_region_row_is_its_teacher_feature(prepared, tmp_path, pool):
    """crop: the teacher's embedding of the box cut from the image; roi: the mean of the patch tokens
    the region sees on the teacher's view, normalised; both computed here independently."""
    from PIL import Image

    out = tmp_path / pool
    rows = RegionRows(prepared / "images" / "regions.jsonl", pool=pool, min_edge=8)
    spec = TeacherSpec(TEACHER, pretrained=False)
    compute_features(spec, [prepared / "images"], out, rows=rows)
    teacher = build_teacher(spec)
    feats, table = load_features(out), load_regions(out)
    image_id = feats.ids[0].split("#")[0]
    image = Image.open(prepared / "images" / Path(image_id).name).convert("RGB")
    for row, region in table.objects[image_id]:
        if pool == "crop":
            box = tuple(int(round(v)) for v in region.box)
            expected = teacher.embed(teacher.processor([image.crop(box)]).pixels)[0]
        else:
            tokens, grid = teacher.patch_tokens(teacher.processor([image]).pixels)
            config = teacher.processor.config
            visible = region_visibility(
                region, (image.height, image.width), config.size, config.resize, grid, 0.5
            )
            expected = F.normalize(tokens[0][visible].mean(0), dim=0)
        assert torch.allclose(torch.from_numpy(feats.array[row]), expected, atol=2e-3)


def test_bad_records_are_named_and_counted_never_dropped_silently(prepared, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(prepared / "images", images)
    (images / "000003.png").write_bytes(b"not a png")
    lines = (images / "regions.jsonl").read_text().splitlines()
    lines[5] = '{"image": "images/000005.png", "objects": [{"box": [1, 2]}]}'
    second = json.loads(lines[6])
    second["objects"].append({"mask": {"size": [20, 20], "counts": [0, 400]}})
    lines[6] = json.dumps(second)
    lines.append(json.dumps({"image": "images/elsewhere.png", "objects": [{"box": [0, 0, 20, 20]}]}))
    (images / "regions.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "regions"
    compute_features(TeacherSpec(TEACHER, pretrained=False), [images], out,
                     rows=RegionRows(images / "regions.jsonl", min_edge=8))  # fmt: skip
    report = json.loads((out / "manifest.json").read_text())
    assert report["bad_lines"] == [f"{images / 'regions.jsonl'}:6: image images/000005.png: a box is "
                                   "[x0, y0, x1, y1] in pixels, got [1, 2]"]  # fmt: skip
    assert report["images_not_in_inputs"] == 1 and report["first_missing"] == ["images/elsewhere.png"]
    skipped = json.loads((out / "parts" / "part-000000.json").read_text())["skipped"]
    assert skipped[0][0] == "images/000003.png" and "image" in skipped[0][1]
    k = len(json.loads(lines[6])["objects"]) - 1
    assert [f"images/000006.png#{k}", "its mask is 20x20, the image 64x64"] in skipped


def test_processes_share_the_parts_and_a_killed_run_finishes_them(prepared, tmp_path, monkeypatch):
    """Two processes (torchrun's RANK / WORLD_SIZE; rank 1 first, then rank 0, which waits for the
    parts and writes the index) give the folder one process gives; a deleted part is recomputed."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_regions_args(prepared, one, "--chunk-size", "5")) == 0
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(_regions_args(prepared, two, "--chunk-size", "5")) == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    a, b = load_features(one), load_features(two)
    assert a.ids == b.ids and np.array_equal(a.array, b.array)
    assert load_regions(one).ocr == load_regions(two).ocr
    for path in (two / "parts" / "part-000002.json", two / "features.json"):
        path.unlink()
    assert main(_regions_args(prepared, two, "--chunk-size", "5")) == 0
    assert np.array_equal(load_features(two).array, a.array)


# -- training ----------------------------------------------------------------------------------------


def _recipe(root: Path, out: Path, **changes) -> PretrainRecipe:
    fields = {
        "encoder": {"tower": STUDENT, "tower_config": TINY_VIT, "embedding_dim": 16,
                    "image": {"mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"}},
        "data": {"features": str(root / "feats"), "labels": str(root / "labels")},
        "regions": {"features": str(root / "regions"), "labels": str(root / "rlabels"),
                    "attention": {"regions": 4}},
        "loss": {"type": "mlcd", "sample_rate": 0.5},
        "optim": {"lr": 1e-3, "batch_size": 8, "max_steps": 6, "warmup_ratio": 0.0},
        "run": {"out_dir": str(out), "progress": False, "log_every": 1, "save_every": 3, "report_to": []},
    }  # fmt: skip
    for section, values in changes.items():
        fields[section] = {**fields[section], **values}
    return from_dict(PretrainRecipe, fields)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_loss_is_logged_and_the_tower_exports_without_region_layers(prepared, tmp_path):
    tower = train_encoder(_recipe(prepared, tmp_path))
    for row in _metrics(tmp_path):
        total = row["image_loss"] + row["object_loss"] + row["ocr_loss"]
        assert abs(row["loss"] - total) < 1e-3 * total
    weights = load_file(str(tower / "model.safetensors"))
    assert not any("region" in key for key in weights)
    regions = load_file(str(tower / "region_layers.safetensors"))
    assert {"layers.query", "head.weight"} <= set(regions)


def test_the_exported_tower_loads_in_mlcd_vision_model_with_foveas_features(prepared, tmp_path, capsys):
    """The released RICE-L-560's layout: transformers' MLCDVisionModel reads the export and gives
    the features fovea's tower gives; `fovea extract` and `fovea pretrain probe` take it as a tower."""
    from PIL import Image
    from transformers import MLCDVisionModel

    from fovea.towers.presets import build_tower

    tower_dir = train_encoder(_recipe(prepared, tmp_path / "run", optim={"max_steps": 2}))
    assert json.loads((tower_dir / "config.json").read_text())["model_type"] == "mlcd_vision_model"
    hf = MLCDVisionModel.from_pretrained(tower_dir).eval()
    ours, _ = build_tower(str(tower_dir), pretrained=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        got = ours.eval()(pixels).hidden_states[-1]
    assert torch.allclose(got, expected, atol=1e-4)
    image = prepared / "images" / "000000.png"
    Image.open(image).save(tmp_path / "one.png")
    out = tmp_path / "feats.safetensors"
    assert main(["extract", "--tower", str(tower_dir), str(tmp_path / "one.png"), "--out", str(out)]) == 0
    assert load_file(str(out))
    for k in range(8):  # an ImageFolder of two classes
        folder = tmp_path / "classes" / "ab"[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(prepared / "images" / f"{k:06d}.png", folder / f"{k}.png")
    probe = ["pretrain", "probe", "--tower", str(tower_dir), "--train", str(tmp_path / "classes"), "--val",
             str(tmp_path / "classes"), "--methods", "knn", "--ks", "1", "--out", str(tmp_path / "probe"), "--quiet"]  # fmt: skip
    assert main(probe) == 0 and (tmp_path / "probe" / "probe.json").is_file()


def test_a_killed_run_resumes_to_identical_weights(prepared, tmp_path, monkeypatch):
    train_encoder(_recipe(prepared, tmp_path / "a"))
    from fovea.pretrain import train as module

    original, calls = module._EncoderLoop.step, {"n": 0}

    def dying(self, source, position):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, source, position)

    monkeypatch.setattr(module._EncoderLoop, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(_recipe(prepared, tmp_path / "b"))
    monkeypatch.setattr(module._EncoderLoop, "step", original)
    train_encoder(_recipe(prepared, tmp_path / "b"))
    assert _metrics(tmp_path / "a") == [
        {**row, "samples_per_s": a["samples_per_s"]}
        for row, a in zip(_metrics(tmp_path / "b"), _metrics(tmp_path / "a"))
    ]
    for name in ("model.safetensors", "region_layers.safetensors"):
        a, b = (load_file(str(tmp_path / run / "tower" / name)) for run in ("a", "b"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_train_like_one(prepared, tmp_path):
    """torchrun, 2 CPU processes: image, object and OCR centres each sharded by PartialFC (r = 1)
    give the losses and the final tower and region layers of one process with the whole batch."""
    import yaml

    full = {"loss": {"type": "mlcd", "sample_rate": 1.0}, "optim": {"max_steps": 3}}
    changes = {**full, "regions": {"object_loss": {"type": "mlcd", "sample_rate": 1.0},
                                   "ocr_loss": {"type": "mlcd", "sample_rate": 1.0}}}  # fmt: skip
    train_encoder(_recipe(prepared, tmp_path / "one", **changes))
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(_recipe(prepared, tmp_path / "two", **changes))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29593",
           "-m", "fovea.cli", "pretrain", "train", str(recipe)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for key in ("loss", "image_loss", "object_loss", "ocr_loss"):
        assert max(abs(a[key] - b[key]) for a, b in zip(one, two)) < 1e-4 * max(a[key] for a in one), key
    for name in ("model.safetensors", "region_layers.safetensors"):
        a, b = (load_file(str(tmp_path / run / "tower" / name)) for run in ("one", "two"))
        moved = [k for k in a if not k.endswith("k_proj.bias") and not k.endswith("k.bias")]
        assert max((a[k] - b[k]).abs().max().item() for k in moved) < 1e-5, name


# -- region probe and demo ----------------------------------------------------------------------------


def test_the_region_probe_scores_objects_and_words_apart_and_refuses_an_unlabelled_region(prepared, tmp_path):
    from fovea.errors import ConfigError
    from fovea.pretrain.region_probe import region_probe

    images = prepared / "images"
    manifest = images / "regions.jsonl"
    result = region_probe(
        TeacherSpec(TEACHER, pretrained=False), [images], manifest, manifest, tmp_path / "p"
    )
    records, _ = read_manifest(manifest, 0)
    objects = sum(len(r.objects) for r in records)
    assert result["kinds"]["object"]["train"] == result["kinds"]["object"]["val"] == objects
    assert result["kinds"]["ocr"]["classes"] == len({r.text for rec in records for r in rec.ocr})
    assert (tmp_path / "p" / "region_probe.md").read_text().startswith("| regions |")
    lines = manifest.read_text().splitlines()
    first = json.loads(lines[0])
    del first["objects"][0]["label"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match=f"image {first['image']}: a region has no 'label'"):
        region_probe(TeacherSpec(TEACHER, pretrained=False), [images], bad, manifest, tmp_path / "q")


def test_the_rice_demo_runs_offline_and_ends_with_its_tower(tmp_path, capsys):
    from transformers import MLCDVisionModel

    argv = [
        "demo",
        "rice",
        "--out",
        str(tmp_path),
        "--images",
        "64",
        "--steps",
        "3",
        "--seeds",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("tower: ")
    tower = Path(out[-1].removeprefix("tower: "))
    MLCDVisionModel.from_pretrained(tower)
    results = json.loads((tmp_path / "results.json").read_text())["accuracy"]
    assert set(results) == {
        "untrained encoder (floor)",
        "MLCD, image-level only",
        "RICE, image + region losses",
    }
    assert all(len(kinds["object"]) == len(kinds["ocr"]) == 1 for kinds in results.values())


def test_the_rice_demo_refuses_fewer_images_than_centres_before_any_work(tmp_path, capsys):
    from fovea.cli import main

    assert main(["demo", "rice", "--out", str(tmp_path / "out"), "--images", "10", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fovea: error: the demo clusters its images into 48 centres: give at least 48 images (--images), got 10"
    ]
    assert not (tmp_path / "out").exists()
