"""`fovea pretrain cluster` recovers planted clusters, reproducibly and from every feature;
`fovea pretrain assign` writes each image's labels, equal to a brute-force sort."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fovea.cli import main
from fovea.pretrain.cluster import spherical_kmeans

from cli_checks import refused


def _planted(n=1200, k=12, d=24, noise=0.08, seed=0):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(k, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    truth = rng.integers(0, k, n)
    return (directions[truth] + noise * rng.normal(size=(n, d))).astype(np.float32), truth


def test_planted_clusters_are_recovered_exactly_and_reproducibly():
    features, truth = _planted()
    centres, report = spherical_kmeans(features, 12, restarts=4, seed=0)
    found = (features @ centres.T).argmax(1)
    # every planted cluster maps to exactly one found centre and back: a perfect matching
    pairs = {(t, f) for t, f in zip(truth.tolist(), found.tolist())}
    assert len(pairs) == 12 and len({t for t, _ in pairs}) == 12 and len({f for _, f in pairs}) == 12
    assert np.allclose(np.linalg.norm(centres, axis=1), 1, atol=1e-5) and centres.dtype == np.float32
    assert report.points == 1200 and report.empty == 0 and report.mean_cosine > 0.93  # planted: 0.933
    again, _ = spherical_kmeans(features, 12, restarts=4, seed=0)
    assert np.array_equal(centres, again)


def test_cluster_then_assign_from_the_command_line(tmp_path, capsys):
    features, _ = _planted(n=600, k=6)
    np.save(tmp_path / "feats.npy", features)
    assert (
        main(
            [
                "pretrain",
                "cluster",
                str(tmp_path / "feats.npy"),
                "--centres",
                "6",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "c" / "cluster.json").read_text())
    assert report["centres"] == 6 and report["points"] == 600 and "6 centres" in capsys.readouterr().out
    out = tmp_path / "labels"
    assert main(["pretrain", "assign", str(tmp_path / "feats.npy"), "--centres", str(tmp_path / "c")]
                + ["--labels", "3", "--out", str(out)]) == 0  # fmt: skip
    labels, centres = np.load(out / "labels.npy"), np.load(tmp_path / "c" / "centres.npy")
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert labels.shape == (600, 3) and labels.dtype == np.int64
    assert np.array_equal(labels, np.argsort(-(unit @ centres.T), axis=1)[:, :3])
    assert np.load(out / "similarities.npy").shape == (600, 3)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: np.save(p, np.zeros((3, 4, 5), np.float32)), "expected an (N, D) array"),
        (lambda p: p.write_bytes(b"not numpy"), "not a .npy array"),
        (lambda p: np.save(p, np.zeros((5, 4), np.float32)), "features are all zeros"),
        (lambda p: np.save(p, np.ones((5, 4), np.float32)), "--centres must be between 1 and the 5 features"),
    ],
)
def test_bad_features_are_one_line(tmp_path, capsys, make, expected):
    make(tmp_path / "f.npy")
    err = refused(
        ["pretrain", "cluster", tmp_path / "f.npy", "--centres", "9", "--out", tmp_path / "c"], capsys
    )
    assert expected in err


def test_an_output_folder_it_did_not_write_is_refused(tmp_path, capsys):
    np.save(tmp_path / "f.npy", _planted(n=50, k=2)[0])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    err = refused(
        ["pretrain", "cluster", tmp_path / "f.npy", "--centres", "2", "--out", tmp_path / "mine"], capsys
    )
    assert "not written by this step" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
