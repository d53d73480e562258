"""`fovea pretrain features`: teacher embeddings equal the tower's own pooled output (and UNICOM-style
joint image+text CLIP embeddings their formula), L2-normalised, float16, every id exactly once; a
killed run resumes without recomputing finished parts; torchrun with 2 processes equals one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fovea.cli import main
from fovea.imaging.processor import ImageConfig, ImageProcessor
from fovea.pretrain.data import scan
from fovea.pretrain.features import compute_features, load_features
from fovea.pretrain.teacher import TeacherSpec
from fovea.towers.presets import TOWER_PRESETS, build_tower
from test_pretrain_data import COLOURS, image_bytes, make_dataset

from cli_checks import refused, snapshot

TINY = "clip-vit-l14-336-tiny"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny teacher's weights in a file: every process and every run sees the same teacher."""
    tower, _ = build_tower(TINY)
    path = tmp_path_factory.mktemp("teacher") / "tiny.safetensors"
    save_file(tower.model.state_dict(), str(path))
    return path


@pytest.fixture
def data(tmp_path):
    found = make_dataset(tmp_path / "data")
    return [str(found["folder"]), str(found["list"]), str(found["shards"] / "{00000..00001}.tar")]


def _run(data, out, weights, *extra) -> list[str]:
    argv = ["pretrain", "features", "--tower", TINY, "--weights", weights, *data, "--out", out, *extra]
    return [str(a) for a in argv]


def _direct(refs, tower_weights) -> np.ndarray:
    """The tower's own pooled output (post-LN CLS), normalised, from its own preprocessing."""
    tower, image = build_tower(TINY, weights=tower_weights)
    pixels = ImageProcessor(ImageConfig(**image)).__call__([ref.load() for ref in refs]).pixels
    with torch.no_grad():
        return F.normalize(tower.model(pixel_values=pixels).pooler_output, dim=-1).numpy()


def test_features_are_the_towers_pooled_output_normalised_in_float16(data, tmp_path, weights, caplog):
    summary = compute_features(
        TeacherSpec(TINY, weights=str(weights)), data, tmp_path / "feats", chunk_size=2, batch_size=2
    )
    feats = load_features(tmp_path / "feats")
    refs = [ref for chunk in scan(data, chunk_size=2) for ref in chunk if ref.id != "photos/sub/c.png"]
    assert feats.ids == [ref.id for ref in refs] and feats.refs == refs and len(set(feats.ids)) == 10
    assert np.abs(feats.array - _direct(refs, weights)).max() < 1e-3  # float16 rounding only
    assert np.allclose(np.linalg.norm(feats.array, axis=1), 1, atol=2e-3) and feats.array.dtype == np.float32
    part = np.load(tmp_path / "feats" / "parts" / "part-000000.npy")
    assert part.dtype == np.float16 and part.shape == (2, 32)
    # the corrupt image: named in the log and in its part, the rest extracted
    assert "skipped photos/sub/c.png: cannot decode image" in caplog.text
    skipped = json.loads((tmp_path / "feats" / "parts" / "part-000001.json").read_text())["skipped"]
    assert [s[0] for s in skipped] == ["photos/sub/c.png"] and "cannot decode" in skipped[0][1]
    index = json.loads((tmp_path / "feats" / "features.json").read_text())
    assert (index["dim"], index["count"], index["skipped"], index["dtype"]) == (32, 10, 1, "float16")
    assert [p["count"] for p in index["parts"]] == [2, 1, 1, 3, 3] and index["embedding"] == "pooler_output"
    assert (summary.images, summary.skipped, summary.dim) == (10, 1, 32)
    assert (summary.parts, summary.computed) == (5, 5)
    # a chunk of bad images only is an empty part, not a gap
    spec = TeacherSpec(TINY, weights=str(weights))
    alone = compute_features(spec, data[:1], tmp_path / "singly", chunk_size=1)
    assert np.load(tmp_path / "singly" / "parts" / "part-000002.npy").shape == (0, 32) and alone.images == 2
    assert load_features(tmp_path / "singly").ids == ["photos/a.png", "photos/sub/b.jpg"]


@pytest.mark.parametrize("preset", [name for name in TOWER_PRESETS if name.endswith("-tiny")])
def test_every_tower_preset_is_a_teacher_through_its_own_pooling(preset, tmp_path):
    """CLIP / MLCD: post-LN CLS; SigLIP: attention-pool head; UNICOM: its embedding head."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate(COLOURS[:3]):
        (folder / f"{i}.png").write_bytes(image_bytes(colour, size=(30 + 9 * i, 21)))
    compute_features(TeacherSpec(preset, pretrained=False), [folder], tmp_path / "feats")
    feats = load_features(tmp_path / "feats")
    torch.manual_seed(0)  # random weights are seeded with 0: every process builds the same teacher
    tower, image = build_tower(preset)
    pixels = ImageProcessor(ImageConfig(**image))([ref.load() for ref in feats.refs]).pixels
    with torch.no_grad():
        pooled = tower.model.eval()(pixel_values=pixels).pooler_output
    assert feats.array.shape == tuple(pooled.shape) and feats.ids == [
        "images/0.png",
        "images/1.png",
        "images/2.png",
    ]
    assert np.abs(feats.array - F.normalize(pooled, dim=-1).numpy()).max() < 1e-3


def test_a_killed_run_resumes_without_recomputing_finished_parts(data, tmp_path, weights):
    spec = TeacherSpec(TINY, weights=str(weights))
    out = tmp_path / "feats"
    compute_features(spec, data, out, chunk_size=2)
    before = load_features(out)
    parts = out / "parts"
    # a kill: chunk 1 never written, chunk 3 killed between its array and its JSON, no index yet
    for name in ("part-000001.npy", "part-000001.json", "part-000003.json", "../features.json"):
        (parts / name).unlink()
    kept = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.iterdir() if "000001" not in p.name
    }
    with pytest.raises(ValueError, match=r"incomplete, 2 of 5 parts missing \(part-000001, part-000003\)"):
        load_features(out)
    summary = compute_features(spec, data, out, chunk_size=2)
    assert summary.computed == 2 and summary.images == 10
    for name, stamp in kept.items():
        if "000003" not in name:  # finished parts are untouched: not rewritten, not recomputed
            assert ((parts / name).stat().st_ino, (parts / name).stat().st_mtime_ns) == stamp
    after = load_features(out)
    assert after.ids == before.ids and len(set(after.ids)) == len(after.ids) == 10
    assert np.array_equal(after.array, before.array)
    assert not [p for p in parts.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_the_command_line_end_to_end_then_cluster_and_assign_read_the_folder(data, tmp_path, weights, capsys):
    feats = tmp_path / "feats"
    assert main(_run(data, feats, weights, "--chunk-size", "2", "--quiet")) == 0
    line = capsys.readouterr().out
    assert "10 images, 1 skipped (listed in the parts)" in line and "32-d float16" in line
    assert "5 computed here" in line and "images/s" in line
    assert main(["pretrain", "cluster", str(feats), "--centres", "3", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "cluster.json").read_text())["points"] == 10
    labels = tmp_path / "labels"
    argv = ["pretrain", "assign", str(feats), "--centres", str(tmp_path / "c"), "--labels", "2"]
    assert main([*argv, "--out", str(labels)]) == 0
    assert np.load(labels / "labels.npy").shape == (10, 2)
    assert main(_run(data, feats, weights, "--chunk-size", "2", "--quiet")) == 0  # done: nothing to do
    assert "0 computed here" in capsys.readouterr().out


def test_a_resume_with_other_settings_is_refused(data, tmp_path, weights, capsys):
    feats = tmp_path / "feats"
    argv = ["pretrain", "features", "--tower", "clip-vit-l14-336", *data, "--out", feats]
    assert "tower weights 'openai/clip-vit-large-patch14-336'" in refused(argv, capsys)  # offline
    assert not feats.exists()  # a failed download writes nothing
    # a run killed before its first part was done may start over with other settings
    assert main(_run(data, feats, weights, "--chunk-size", "3", "--quiet")) == 0
    for path in [*(feats / "parts").iterdir(), feats / "features.json"]:
        path.unlink()
    assert main(_run(data, feats, weights, "--chunk-size", "2", "--quiet")) == 0
    kept = snapshot(feats)
    err = refused(_run(data, feats, weights, "--chunk-size", "3", "--quiet"), capsys)
    assert "was begun with chunk_size=2, this run has chunk_size=3" in err and "choose another --out" in err
    err = refused(_run(data, feats, weights, "--chunk-size", "2", "--view", "pad"), capsys)
    assert 'begun with image.mode="square", this run has image.mode="pad"' in err
    assert snapshot(feats) == kept


def test_an_output_fovea_did_not_write_is_refused(data, tmp_path, weights, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    err = refused(_run(data, mine, weights), capsys)
    assert "was not written by fovea pretrain features" in err and (mine / "notes.txt").read_text() == "keep"
    (mine / "run.json").write_text('{"someone": "else"}')
    assert "was not written by fovea" in refused(_run(data, mine, weights), capsys)
    assert "is a file; --out is a folder" in refused(_run(data, mine / "notes.txt", weights), capsys)
    assert set(os.listdir(mine)) == {"notes.txt", "run.json"}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tower", TINY, "--random-weights", "{data}/x", "--out", "{out}"], "x: no such file or folder"),
        (["--tower", "clip-vit-l14-336-tin", "{data}", "--out", "{out}"], "unknown tower preset"),
        (["--tower", TINY, "{data}", "--out", "{out}"], "has no published weights (a tiny test preset?)"),
        (["--tower", TINY, "--joint", "{data}", "--out", "{out}"], "joint features need a two-tower CLIP"),
        (["--tower", TINY, "{data}", "--out", "{out}", "--batch-size", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line(data, tmp_path, capsys, argv, expected):
    folder = data[0]
    argv = [a.replace("{data}", folder).replace("{out}", str(tmp_path / "feats")) for a in argv]
    assert expected in refused(["pretrain", "features", *argv], capsys)
    assert not (tmp_path / "feats").exists()  # refused before anything is written


def test_cluster_names_what_an_incomplete_folder_lacks(data, tmp_path, weights, capsys):
    feats = tmp_path / "feats"
    compute_features(TeacherSpec(TINY, weights=str(weights)), data, feats, chunk_size=2)
    (feats / "parts" / "part-000002.json").unlink()
    (feats / "features.json").unlink()
    err = refused(["pretrain", "cluster", feats, "--centres", "2", "--out", tmp_path / "c"], capsys)
    assert "incomplete, 1 of 5 parts missing (part-000002); rerun the same fovea pretrain features" in err
    np.save(tmp_path / "plain.npy", np.eye(3, 4, dtype=np.float16))
    plain = load_features(tmp_path / "plain.npy")
    assert plain.ids == ["0", "1", "2"] and plain.refs is None and plain.array.dtype == np.float32


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny two-tower CLIPModel with a CLIP tokenizer over a byte-level alphabet (no download)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab |= {c: 2 + i for i, c in enumerate(alphabet)}
    vocab |= {c + "</w>": 2 + len(alphabet) + i for i, c in enumerate(alphabet)}
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**tiny, "vocab_size": len(vocab), "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    config = CLIPConfig(text_config=text, vision_config={**tiny, "image_size": 28, "patch_size": 14})
    config.projection_dim = 16
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(directory)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    return directory


def test_joint_image_text_embeddings_of_a_two_tower_clip(data, tmp_path, clip_dir, caplog):
    from transformers import AutoTokenizer, CLIPModel

    out = tmp_path / "joint"
    assert main(["pretrain", "features", "--tower", str(clip_dir), "--joint", *data, "--out", str(out)]) == 0
    feats = load_features(out)
    captioned = [r for chunk in scan(data) for r in chunk if r.caption]
    assert feats.ids == [r.id for r in captioned]  # the images without a caption: skipped and named
    assert "skipped photos/sub/b.jpg: no caption" in caplog.text
    model, tokenizer = CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)
    pixels = ImageProcessor(ImageConfig(size=28))([r.load() for r in captioned]).pixels
    tokens = tokenizer([r.caption for r in captioned], padding=True, return_tensors="pt")
    assert tokens["input_ids"][0, 0] == 0 and 1 in tokens["input_ids"][0].tolist()  # CLIP's BOS ... EOS
    with torch.no_grad():
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    assert np.abs(feats.array - F.normalize(image + text, dim=-1).numpy()).max() < 1e-3
    plain = tmp_path / "image-only"
    assert (
        main(["pretrain", "features", "--tower", str(clip_dir), *data, "--out", str(plain), "--quiet"]) == 0
    )
    image_only = load_features(plain)
    rows = [image_only.ids.index(r.id) for r in captioned]
    assert np.abs(image_only.array[rows] - image.numpy()).max() < 1e-3 and image_only.array.shape == (10, 16)


def test_a_process_group_barrier_is_used_when_one_is_up(data, tmp_path, weights, monkeypatch):
    import torch.distributed as dist

    calls = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append(1) or barrier(*a, **k))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        summary = compute_features(TeacherSpec(TINY, weights=str(weights)), data[:1], tmp_path / "feats")
    finally:
        dist.destroy_process_group()
    assert calls == [1] and summary.images == 2


def test_two_processes_under_torchrun_equal_one(data, tmp_path, weights):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_run(data, one, weights, "--chunk-size", "2", "--quiet")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29571",
    ]
    cmd = [*launch, "-m", "fovea.cli", *_run(data, two, weights, "--chunk-size", "2", "--quiet")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 computed here" in proc.stdout  # process 0 did chunks 0, 2, 4; process 1 did 1 and 3
    index = [json.loads((d / "features.json").read_text()) for d in (one, two)]
    assert index[0] == index[1]
    a, b = load_features(one), load_features(two)
    assert a.ids == b.ids and len(set(b.ids)) == 10 and np.abs(a.array - b.array).max() < 1e-3
