"""`fovea pretrain probe`: the k-NN vote and leave-one-out R@1 equal brute-force loops, the linear
probe separates separable data with either solver, and the command runs end to end on a tiny
ImageFolder, naming the images it skips and refusing bad input in one line."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from PIL import Image

from fovea.cli import main
from fovea.pretrain.probe import image_folder, knn_accuracy, linear_probe, retrieval_recall_at_1

from cli_checks import refused


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_knn(train_x, train_y, val_x, val_y, k, temperature):
    """Plain loops in float64: the k most similar training features vote exp(sim / T) for their class."""
    train, val = _unit(train_x.astype(np.float64)), _unit(val_x.astype(np.float64))
    top1 = top5 = 0
    for query, truth in zip(val, val_y):
        sims = train @ query
        votes: dict[int, float] = {}
        for j in np.argsort(-sims)[: min(k, len(train))]:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + math.exp(sims[j] / temperature)
        ranked = sorted(votes, key=lambda c: -votes[c])
        top1 += ranked[0] == truth
        top5 += truth in ranked[:5]
    return 100 * top1 / len(val), 100 * top5 / len(val)


def test_knn_is_the_weighted_vote_of_a_brute_force_loop(caplog):
    rng = np.random.default_rng(0)
    train_x, val_x = rng.normal(size=(300, 16)), rng.normal(size=(120, 16))
    centres = rng.normal(size=(7, 16))
    train_y, val_y = rng.integers(0, 7, 300), rng.integers(0, 7, 120)
    train_x, val_x = train_x + 0.5 * centres[train_y], val_x + 0.5 * centres[val_y]  # some signal
    with caplog.at_level(logging.WARNING):
        result = knn_accuracy(train_x, train_y, val_x, val_y, ks=(1, 5, 10, 50, 400), chunk=32)
    for k, scores in result.items():
        top1, top5 = _brute_knn(train_x, train_y, val_x, val_y, k, 0.07)
        assert (scores["top1"], scores["top5"]) == (top1, top5), k
    assert result[400]["neighbours"] == 300 and result[10]["neighbours"] == 10
    assert "k = 400 is more than the 300 training features; clamped to 300" in caplog.text
    assert 30 < result[10]["top1"] < 100  # neither chance nor trivial: the comparison means something
    few = knn_accuracy(train_x, train_y % 3, val_x, val_y % 3, ks=(10,))
    assert (
        "top5" not in few[10]
        and few[10]["top1"] == _brute_knn(train_x, train_y % 3, val_x, val_y % 3, 10, 0.07)[0]
    )


def test_recall_at_1_is_the_nearest_other_sample_by_brute_force():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(150, 8)), rng.integers(0, 6, 150)
    x[7] = x[3] * 2.0  # an exact duplicate direction: each is the other's nearest neighbour
    unit = _unit(x)
    hits = 0
    for i in range(len(x)):
        distances = np.linalg.norm(unit - unit[i], axis=1)  # Euclidean on unit vectors, as UNICOM
        distances[i] = np.inf
        hits += y[int(distances.argmin())] == y[i]
    assert retrieval_recall_at_1(x, y, chunk=16) == pytest.approx(100 * hits / len(x), abs=1e-12)
    assert retrieval_recall_at_1(np.eye(4)[[0, 0, 1, 1]], [5, 5, 2, 2]) == 100.0


def _blobs(n, classes, spread, seed, dim=16):
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    labels = np.arange(n) % classes
    return (centres[labels] + spread * np.random.default_rng(seed).normal(size=(n, dim))).astype(
        np.float32
    ), labels


@pytest.mark.parametrize("classes", [2, 4])
def test_the_linear_probe_separates_separable_data_with_either_solver(classes):
    train_x, train_y = _blobs(200, classes, 0.3, seed=1)
    val_x, val_y = _blobs(100, classes, 0.3, seed=2)
    chosen = linear_probe(train_x, train_y, val_x, val_y, solver="sklearn")
    assert chosen.accuracy == 100.0 and chosen.converged and chosen.solver == "sklearn"
    assert 1e-6 <= chosen.C <= 1e6 and 7 <= len(chosen.search) <= 11  # CLIP's range, coarse to fine
    torch_fit = linear_probe(train_x, train_y, val_x, val_y, C=chosen.C, solver="torch", device="cpu")
    assert torch_fit.accuracy == 100.0 and torch_fit.converged and torch_fit.search == {}
    # overlapping classes: the same objective gives the same accuracy, to within a sample
    train_x, train_y = _blobs(400, classes, 1.5, seed=1)
    val_x, val_y = _blobs(300, classes, 1.5, seed=2)
    ours = linear_probe(train_x, train_y, val_x, val_y, C=0.5, solver="torch", device="cpu")
    theirs = linear_probe(train_x, train_y, val_x, val_y, C=0.5, solver="sklearn")
    assert 50 < theirs.accuracy < 100 and abs(ours.accuracy - theirs.accuracy) <= 100 / 300 + 1e-9


# -- the command ----------------------------------------------------------------------------------


def _folder(root, counts: dict[str, int], seed=0):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.array(colours[name]) + rng.normal(0, 20, (32, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_probe_from_the_command_line(tmp_path, capsys, caplog):
    train = _folder(tmp_path / "train", {"red": 6, "blue": 6})
    val = _folder(tmp_path / "val", {"red": 3, "blue": 3}, seed=1)
    (val / "red" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "probe"
    args = ["pretrain", "probe", "--tower", "clip-vit-l14-336-tiny", "--random-weights", "--quiet"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--train", str(train), "--val", str(val), "--out", str(out)]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["classes"] == ["blue", "red"] and result["feature_dim"] == 32
    assert result["train"] == {"images": 12, "used": 12} and result["val"] == {"images": 7, "used": 6}
    assert [s["image"] for s in result["skipped"]] == [str(val / "red" / "broken.png")]
    assert "broken.png" in caplog.text and "skipped 1 unreadable image" in capsys.readouterr().err
    assert set(result["knn"]) == {"temperature", "10", "20", "100", "200"}
    assert result["knn"]["200"]["neighbours"] == 12 and "top5" not in result["knn"]["10"]
    assert 0 <= result["linear"]["accuracy"] <= 100 and result["linear"]["search"]
    assert 0 <= result["retrieval"]["recall_at_1"] <= 100
    table = (out / "probe.md").read_text()
    assert "| k-NN | k = 200, clamped to 12, T = 0.07 |" in table and "| retrieval | R@1" in table
    # again into its own folder, one method only
    assert main([*args, "--train", str(train), "--val", str(val), "--out", str(out), "--methods", "knn"]) == 0
    again = json.loads((out / "probe.json").read_text())
    assert "linear" not in again and "retrieval" not in again and again["knn"] == result["knn"]


def test_image_folder_classes_are_the_sorted_first_level_folders(tmp_path, caplog):
    root = _folder(tmp_path / "d", {"red": 2, "blue": 1})
    (root / "red" / "deeper").mkdir()
    Image.new("RGB", (4, 4)).save(root / "red" / "deeper" / "x.jpg")
    (root / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(root / "loose.png")
    with caplog.at_level(logging.WARNING):
        paths, labels, classes = image_folder(root)
    assert classes == ["blue", "red"] and labels == [0, 1, 1, 1] and paths[-1].name == "x.jpg"
    assert "1 image(s) outside any class folder are ignored" in caplog.text


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "--train"),
        ("unknown class", "class 'green' is not one of the training classes"),
        ("empty class", "a class folder with no images"),
        ("foreign out", "not written by this step"),
        ("bad methods", "expected some of linear, knn, retrieval"),
        ("bad ks", "expected comma-separated counts"),
    ],
)
def test_bad_input_is_refused_in_one_line(tmp_path, capsys, case, expected):
    train = _folder(tmp_path / "train", {"red": 2, "blue": 2})
    val = _folder(tmp_path / "val", {"red": 1, "green": 1} if case == "unknown class" else {"red": 1})
    out, extra = tmp_path / "out", []
    if case == "missing":
        train = tmp_path / "nowhere"
    elif case == "empty class":
        (train / "yellow").mkdir()
    elif case == "foreign out":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "bad methods":
        extra = ["--methods", "linear,svm"]
    elif case == "bad ks":
        extra = ["--ks", "10,0"]
    args = ["pretrain", "probe", "--tower", "clip-vit-l14-336-tiny", "--random-weights", "--quiet"]
    err = refused([*args, "--train", train, "--val", val, "--out", out, *extra], capsys)
    assert expected in err
    if case == "unknown class":
        assert str(val / "green" / "0.png") in err
