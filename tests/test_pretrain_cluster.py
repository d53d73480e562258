"""`fovea pretrain cluster` recovers planted clusters, reproducibly and from every feature;
`fovea pretrain assign` writes each image's labels, equal to a brute-force sort."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fovea.cli import main
from fovea.pretrain.cluster import spherical_kmeans, split_centres

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


# -- two levels (hierarchical k-means for large K) ---------------------------------------------


def _planted_evenly(n=1600, k=16, d=24, noise=0.08, seed=0):
    """Planted clusters of equal size, so each coarse cell's share of centres is a whole number of them."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(k, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    truth = rng.permutation(np.arange(n) % k)
    return (directions[truth] + noise * rng.normal(size=(n, d))).astype(np.float32), truth


def test_two_levels_recover_planted_clusters_with_exactly_k_unit_centres_reproducibly():
    features, truth = _planted_evenly()
    centres, report = spherical_kmeans(features, 16, levels=2, restarts=4, seed=0)
    found = (features @ centres.T).argmax(1)
    pairs = {(t, f) for t, f in zip(truth.tolist(), found.tolist())}
    assert len(pairs) == 16 and len({t for t, _ in pairs}) == 16 and len({f for _, f in pairs}) == 16
    assert centres.shape == (16, 24) and centres.dtype == np.float32
    assert np.allclose(np.linalg.norm(centres, axis=1), 1, atol=1e-5)
    assert report.levels == 2 and report.coarse_centres == 4 and "(coarse)" in report.init
    assert report.points == 1600 and report.centres == 16 and report.empty == 0 and report.mean_cosine > 0.93
    assert report.iterations == len(report.objective) >= 1
    again, _ = spherical_kmeans(features, 16, levels=2, restarts=4, seed=0)
    assert np.array_equal(centres, again)


@pytest.mark.parametrize(
    "sizes, k, expected",
    [
        ([5, 0, 1, 1, 100, 3], 10, [1, 0, 1, 1, 6, 1]),  # every non-empty cell gets one, empty ones none
        ([3, 3, 3], 9, [3, 3, 3]),  # as many centres as points
        ([10, 10, 1], 3, [1, 1, 1]),
        ([30, 10], 8, [6, 2]),  # exactly proportional
    ],
)
def test_centres_are_split_over_cells_in_proportion_to_their_size(sizes, k, expected):
    assert split_centres(np.array(sizes), k).tolist() == expected


def test_the_split_always_sums_to_k_within_each_cells_points():
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 50, rng.integers(1, 30))  # some cells empty
        if sizes.sum() == 0:
            continue
        k = int(rng.integers(max(1, (sizes > 0).sum()), sizes.sum() + 1))
        shares = split_centres(sizes, k)
        assert shares.sum() == k and (shares <= sizes).all() and (shares[sizes > 0] >= 1).all()
        assert (np.abs(shares - sizes * k / sizes.sum()) < 2).all()  # within rounding (and the floor of one)


def test_levels_are_chosen_by_k_and_every_point_may_be_its_own_centre(monkeypatch):
    import fovea.pretrain.cluster as cluster

    features, _ = _planted(n=40, k=4)
    assert spherical_kmeans(features, 4)[1].levels == 1
    monkeypatch.setattr(cluster, "TWO_LEVEL_FROM", 4)
    assert spherical_kmeans(features, 4)[1].levels == 2
    centres, report = spherical_kmeans(features, 40, levels=1)  # faiss copies the points
    assert report.iterations == 0 and report.empty == 0 and report.mean_cosine == pytest.approx(1, abs=1e-6)
    assert spherical_kmeans(features, 40, levels=2)[1].mean_cosine == pytest.approx(1, abs=1e-6)


def test_two_levels_from_the_command_line(tmp_path, capsys):
    np.save(tmp_path / "f.npy", _planted_evenly(n=400)[0])
    args = ["pretrain", "cluster", str(tmp_path / "f.npy"), "--centres", "16", "--levels", "2"]
    assert main([*args, "--restarts", "2", "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "cluster.json").read_text())
    assert (
        report["levels"] == 2
        and report["coarse_centres"] == 4
        and "4 coarse cells" in capsys.readouterr().out
    )
    assert np.load(tmp_path / "c" / "centres.npy").shape == (16, 24)


def test_gpu_without_a_gpu_build_of_faiss_is_refused_by_name(tmp_path, capsys):
    import faiss

    if hasattr(faiss, "StandardGpuResources"):
        pytest.skip("this faiss has GPU support")
    np.save(tmp_path / "f.npy", _planted(n=50, k=2)[0])
    err = refused(
        ["pretrain", "cluster", tmp_path / "f.npy", "--centres", "2", "--gpu", "--out", tmp_path / "c"],
        capsys,
    )
    assert "CPU-only build (faiss-cpu)" in err and "faiss-gpu" in err
