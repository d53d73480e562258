"""`fovea pretrain train`: the encoder learns, a killed run resumes to identical weights, bad images
are skipped and named, the recipe is checked, and the trained tower goes through `fovea train` and
`fovea chat` as a tower."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fovea.cli import main
from fovea.config import from_dict, to_dict
from fovea.errors import CheckpointError, ConfigError
from fovea.pretrain.recipe import PretrainRecipe, check_pretrain_recipe
from fovea.pretrain.scenes import make_scenes
from fovea.pretrain.train import train_encoder

ROOT = Path(__file__).parents[1]
TINY_VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2}  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Scenes -> teacher features (a random tiny tower) -> 6 centres -> 2 labels per image."""
    root = tmp_path_factory.mktemp("pretrain")
    make_scenes(root / "images", 48, seed=0)
    steps = [
        ["features", "--tower", "clip-vit-l14-336-tiny", "--random-weights", str(root / "images"),
         "--out", str(root / "feats")],
        ["cluster", str(root / "feats"), "--centres", "6", "--out", str(root / "centres")],
        ["assign", str(root / "feats"), "--centres", str(root / "centres"), "--labels", "2",
         "--out", str(root / "labels")],
    ]  # fmt: skip
    for args in steps:
        assert main(["pretrain", *args]) == 0, args
    return root


def _recipe(root: Path, out: Path, **changes) -> PretrainRecipe:
    fields = {
        "encoder": {"tower": "clip-vit-l14-336-tiny", "tower_config": TINY_VIT, "embedding_dim": 16,
                    "image": {"mean": [0.5] * 3, "std": [0.5] * 3}},
        "data": {"features": str(root / "feats"), "labels": str(root / "labels")},
        "loss": {"type": "mlcd", "sample_rate": 0.5},
        "optim": {"lr": 1e-3, "batch_size": 8, "max_steps": 8, "warmup_ratio": 0.0},
        "run": {"out_dir": str(out), "progress": False, "log_every": 1, "save_every": 3, "report_to": []},
    }  # fmt: skip
    for section, values in changes.items():
        fields[section] = {**fields[section], **values}
    return from_dict(PretrainRecipe, fields)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict:
    return load_file(str(out / "tower" / "model.safetensors"))


def test_the_encoder_learns_its_clusters(prepared, tmp_path):
    tower = train_encoder(_recipe(prepared, tmp_path, optim={"max_steps": 24, "lr": 3e-3}))
    losses = _losses(tmp_path)
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < sum(losses[:4])  # on 48 images and 6 classes, it memorises
    assert (tower / "config.json").is_file() and (tower / "embedding_head.safetensors").is_file()
    assert load_file(str(tower / "embedding_head.safetensors"))["weight"].shape == (16, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_run_resumes_to_identical_weights(prepared, tmp_path, monkeypatch, workers):
    """Killed and resumed, images decoded here or by 2 DataLoader workers (the reference: here)."""
    reference = _recipe(prepared, tmp_path / "a")
    train_encoder(reference)
    from fovea.pretrain import train as module

    original, calls = module._EncoderLoop.step, {"n": 0}

    def dying(self, source, position):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed between steps 4 and 5: the newest checkpoint is step 3
        return original(self, source, position)

    monkeypatch.setattr(module._EncoderLoop, "step", dying)
    killed = _recipe(prepared, tmp_path / "b")
    killed.run.num_workers = workers
    with pytest.raises(KeyboardInterrupt):
        train_encoder(killed)
    monkeypatch.setattr(module._EncoderLoop, "step", original)
    checkpoint = tmp_path / "b" / "checkpoints" / "step-00000003"
    assert (checkpoint / "partial_fc-00000.pt").is_file()
    train_encoder(killed)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # each step logged once, same values
    centres_a = torch.load(tmp_path / "a" / "checkpoints" / "step-00000006" / "partial_fc-00000.pt")
    centres_b = torch.load(tmp_path / "b" / "checkpoints" / "step-00000006" / "partial_fc-00000.pt")
    assert torch.equal(centres_a["centres"]["weight"], centres_b["centres"]["weight"])


def test_a_resume_with_another_number_of_processes_is_refused(prepared, tmp_path):
    recipe = _recipe(prepared, tmp_path, optim={"max_steps": 4})
    recipe.run.save_every = 2
    train_encoder(recipe)
    saved = tmp_path / "checkpoints" / "step-00000002" / "partial_fc-00000.pt"
    state = torch.load(saved)
    state["world"] = 4
    torch.save(state, saved)
    import shutil

    shutil.rmtree(tmp_path / "tower")
    with pytest.raises(CheckpointError, match="written by 4 processes, resumed with 1"):
        train_encoder(recipe)


def test_a_bad_image_is_skipped_counted_and_named(prepared, tmp_path, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    refs = json.loads((root / "feats" / "parts" / "part-000000.json").read_text())["refs"]
    broken = Path(refs[5]["path"])
    broken.write_bytes(b"not a png")  # broken after its features were made
    caplog.set_level(logging.WARNING)
    train_encoder(_recipe(root, tmp_path / "out", optim={"max_steps": 6}))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] >= 1
    assert any(
        refs[5]["id"] in r.getMessage() and r.getMessage().startswith("skipped: ") for r in caplog.records
    )


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("loss", {"sample_rate": 0.0}, "loss.sample_rate: must be in"),
        ("loss", {"feature_rate": 1.5}, "loss.feature_rate: must be in"),
        ("optim", {"lr": -1.0}, "optim.lr: must be positive"),
        ("run", {"precision": "fp16"}, "run.precision: must be bf16 or no"),
        ("encoder", {"pretrained": True}, "encoder.tower_config: changes the architecture"),
    ],
)
def test_recipe_values_are_checked_by_path(prepared, tmp_path, section, values, message):
    with pytest.raises(ConfigError, match=message):
        check_pretrain_recipe(_recipe(prepared, tmp_path, **{section: values}))


def test_labels_that_do_not_fit_the_features_are_refused(prepared, tmp_path):
    import numpy as np

    labels = tmp_path / "labels"
    labels.mkdir()
    np.save(labels / "labels.npy", np.zeros((5, 2), dtype=np.int64))
    recipe = _recipe(prepared, tmp_path / "out", data={"labels": str(labels)})
    with pytest.raises(ConfigError, match=r"data.labels: .* has shape \(5, 2\), expected \(48, L\)"):
        train_encoder(recipe)


def test_the_trained_tower_trains_a_vlm_and_chats(prepared, tmp_path, capsys):
    """A pretrained encoder goes straight into a LLaVA-style recipe as its tower."""
    import yaml

    tower = train_encoder(_recipe(prepared, tmp_path / "pre", optim={"max_steps": 2}))
    from fovea.data.synthetic import generate

    generate(tmp_path / "data", 16, seed=0)
    recipe = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    recipe["model"].pop("tower_config")
    recipe["model"]["tower"] = str(tower)
    recipe["model"].pop("image")
    recipe["stages"][0].update(data=str(tmp_path / "data" / "captions.json"), max_steps=1, batch_size=4)
    recipe["stages"][1].update(data=str(tmp_path / "data" / "qa.json"), max_steps=1, batch_size=4)
    recipe["run"].update(out_dir=str(tmp_path / "vlm"), progress=False, report_to=[])
    (tmp_path / "vlm.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "vlm.yaml")]) == 0
    final = tmp_path / "vlm" / "stage-1-finetune" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["model"]["tower"]["hf_config"]["image_size"] == 32
    import fovea

    aligned = fovea.load(tmp_path / "vlm" / "stage-0-align" / "final")  # align freezes the tower
    pretrained = load_file(str(tower / "model.safetensors"))
    ours = {
        k.removeprefix("tower.model."): v
        for k, v in aligned.state_dict().items()
        if k.startswith("tower.model.")
    }
    assert ours.keys() == pretrained.keys() and all(torch.equal(ours[k], pretrained[k]) for k in ours)
    capsys.readouterr()
    image = tmp_path / "data" / "images" / "000000.png"
    assert main(["chat", "--model", str(final), "--image", str(image), "--prompt", "What shape?"]) == 0
    assert "error" not in capsys.readouterr().err  # (one step of training may well answer nothing)


def test_recipes_in_configs_load_and_check():
    from fovea.pretrain.recipe import load_pretrain_recipe

    paths = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))
    assert [p.stem for p in paths] == ["mlcd-vit-l14", "rice-vit-l14", "unicom-vit-b32"]
    for path in paths:
        recipe = load_pretrain_recipe(path)
        assert recipe.optim.lr == 1e-3 and recipe.optim.weight_decay == 0.2, path
        assert to_dict(recipe)["run"]["precision"] == "bf16"


def test_two_processes_train_like_one(prepared, tmp_path):
    """torchrun, 2 CPU processes (gloo): the encoder under DDP and the class centres sharded by
    PartialFC (r = 1) give the losses and the final tower of one process with the whole batch."""
    import os
    import subprocess
    import sys

    import yaml

    full = {"loss": {"type": "mlcd", "sample_rate": 1.0}, "optim": {"max_steps": 4}}
    train_encoder(_recipe(prepared, tmp_path / "one", **full))
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(_recipe(prepared, tmp_path / "two", **full))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29591",
           "-m", "fovea.cli", "pretrain", "train", str(recipe)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4 and max(abs(a - b) for a, b in zip(one, two)) < 1e-4 * max(one)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    # a key bias has an exactly-zero gradient (softmax ignores it): Adam turns its float noise
    # (~1e-10) into steps of +-lr either way, so it is the one tensor that cannot agree
    moved = {k for k in a if not k.endswith("k_proj.bias")}
    assert max((a[k] - b[k]).abs().max().item() for k in moved) < 1e-5
    assert (tmp_path / "two" / "checkpoints" / "step-00000003" / "partial_fc-00001.pt").is_file()


def _family_preset(family: str) -> str:
    from fovea.towers.presets import TOWER_PRESETS

    return next(
        name
        for name in TOWER_PRESETS.names()
        if name.endswith("-tiny") and TOWER_PRESETS.get(name).tower["hf_config"]["model_type"] == family
    )


@pytest.mark.parametrize(
    "family", sorted(__import__("fovea.towers.base", fromlist=["x"]).TOWER_FAMILIES.names())
)
@pytest.mark.parametrize("loss", __import__("fovea.pretrain.losses", fromlist=["x"]).LOSSES.names())
def test_every_tower_family_trains_with_either_loss(prepared, tmp_path, family, loss):
    """CLIP, SigLIP (attention-pool head), MLCD (2D RoPE) and UNICOM (its own BN head) towers each
    train a few steps and come out as a tower directory that builds again."""
    from fovea.towers.presets import build_tower

    unicom = family == "unicom_vision_model"
    encoder = {"tower": _family_preset(family), "tower_config": {}, "embedding_dim": None if unicom else 16}
    multi = __import__("fovea.pretrain.losses", fromlist=["x"]).LOSSES.get(loss).multi_label
    labels = {} if multi else {"labels_per_image": 1}
    recipe = _recipe(prepared, tmp_path, encoder=encoder, loss={"type": loss}, data=labels)
    recipe.optim.max_steps = 2
    tower = train_encoder(recipe)
    losses = _losses(tmp_path)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    rebuilt, _ = build_tower(str(tower), pretrained=True)
    assert rebuilt.config.model_type == family
    assert (tower / "embedding_head.safetensors").is_file() != unicom  # UNICOM's head is in the tower


def test_fine_tuning_starts_from_the_given_weights(prepared, tmp_path):
    """encoder.weights (a released file) and encoder.pretrained with a tower directory both start
    from those weights, not random ones."""
    from safetensors.torch import save_file

    from fovea.pretrain.train import build_encoder

    first = train_encoder(_recipe(prepared, tmp_path / "first", optim={"max_steps": 2}))
    trained = load_file(str(first / "model.safetensors"))
    again = _recipe(
        prepared, tmp_path / "again", encoder={"tower": str(first), "tower_config": {}, "pretrained": True}
    )
    encoder, _ = build_encoder(again)
    assert all(torch.equal(v, trained[k]) for k, v in encoder.tower.model.state_dict().items())
    save_file(trained, str(tmp_path / "released.safetensors"))
    from_file = _recipe(
        prepared,
        tmp_path / "file",
        encoder={"tower": str(first), "tower_config": {}, "weights": str(tmp_path / "released.safetensors")},
    )
    encoder, _ = build_encoder(from_file)
    assert all(torch.equal(v, trained[k]) for k, v in encoder.tower.model.state_dict().items())


def test_training_reads_the_image_refs_without_the_teacher_vectors(prepared):
    from fovea.pretrain.features import load_features

    full, refs_only = load_features(prepared / "feats"), load_features(prepared / "feats", vectors=False)
    assert refs_only.array is None and full.array.shape == (48, 32)
    assert refs_only.refs == full.refs and refs_only.ids == full.ids


def test_the_command_checks_a_recipe_and_refuses_a_bad_one_in_one_line(prepared, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(_recipe(prepared, tmp_path / "out"))))
    assert main(["pretrain", "train", str(recipe), "--check"]) == 0
    assert "OK: 48 images, 2 labels each, 6 classes, loss mlcd" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # a check writes nothing
    assert main(["pretrain", "train", str(recipe), "loss.sample_rate=2", "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loss.sample_rate: must be in (0, 1], got 2" in err
