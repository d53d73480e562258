"""Probing frozen vision features: linear probe, weighted k-NN and leave-one-out retrieval R@1.

The protocols, for any tower (fovea's own or a released one), on features that are the tower's
``pooler_output`` L2-normalised:

* k-NN: DINOv2's ``eval/knn.py``, which UNICOM's ``knn.py`` copies: cosine similarity to every
  training feature, the k most similar vote for their class with weight softmax(sim / T) taken
  over the largest k's neighbours (a common scale per query, so each k's vote is exp(sim / T)
  summed), k in {10, 20, 100, 200}, T = 0.07; top-1 and top-5 micro accuracy. A k larger than
  the training set is clamped to it, with a warning and the clamped value in the result. A class
  without a vote never counts as predicted (torchmetrics' top-5 would break that tie arbitrarily).
* Retrieval Recall@1: UNICOM's ``retrieval.py`` leave-one-out protocol: each sample's nearest
  *other* sample by Euclidean distance on unit vectors (the same order as cosine), and the share
  whose neighbour has its label. UNICOM takes the second of the two nearest, assuming the first
  is the query itself; here the query is excluded, which differs only for exact duplicates.
* Linear probe: multinomial logistic regression with L2 penalty, scikit-learn's LBFGS as CLIP's
  linear-probe protocol (max_iter 1000). C is fixed when given (UNICOM's example uses 0.601 on
  raw, unnormalised embeddings) or, by default, chosen as CLIP does, on a held-out fifth of the
  training set over 1e-6..1e6: here coarse to fine (every second decade, then a decade and half a
  decade around the best; ties go to the C nearest 1) instead of CLIP's 96 steps. On a GPU the
  same objective (scikit-learn's: C * summed loss + |W|^2 / 2, bias free) is minimised by torch's
  LBFGS.

Features come from the same embedding as `fovea pretrain features` (``teacher.Teacher``: the
tower's pooler_output, L2-normalised) with its threaded decoding (``data.decoded_batches``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError

logger = logging.getLogger(__name__)

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
METHODS = ("linear", "knn", "retrieval")


# -- k-NN and retrieval ---------------------------------------------------------------------------


@torch.no_grad()
def knn_accuracy(
    train_x, train_y, val_x, val_y, ks=KS, temperature: float = TEMPERATURE, *, device=None, chunk: int = 256
) -> dict[int, dict]:
    """Per k: {"top1": %, "top5": % (with 5 or more classes), "neighbours": k after clamping}."""
    train, val = _unit_rows(train_x, device), _unit_rows(val_x, device)
    train_labels, val_labels = (
        _labels(train_y, len(train), train.device),
        _labels(val_y, len(val), val.device),
    )
    classes = int(max(train_labels.max(), val_labels.max())) + 1
    if not ks or min(ks) < 1:
        raise ConfigError(f"k-NN needs neighbour counts of 1 or more, got {tuple(ks)}")
    used = {k: min(int(k), len(train)) for k in ks}
    for k, n in used.items():
        if n < k:
            logger.warning("k-NN: k = %d is more than the %d training features; clamped to %d", k, n, n)
    hits = {k: [0, 0] for k in used}
    for start in range(0, len(val), chunk):
        sims, index = (val[start : start + chunk] @ train.T).topk(max(used.values()), dim=1)  # (B, k_max)
        weights = torch.softmax(sims / temperature, dim=1)  # DINOv2: over the largest k's neighbours
        voters, truth = train_labels[index], val_labels[start : start + chunk, None]  # (B, k_max), (B, 1)
        for k, n in used.items():
            votes = torch.zeros(len(index), classes, device=val.device).scatter_add_(
                1, voters[:, :n], weights[:, :n]
            )
            own = votes.gather(1, truth)  # (B, 1)
            above = (votes > own).sum(1)  # classes with strictly more votes than the true one
            voted = own[:, 0] > 0
            hits[k][0] += int((voted & (above < 1)).sum())
            hits[k][1] += int((voted & (above < 5)).sum())
    result = {}
    for k, (top1, top5) in hits.items():
        result[k] = {"top1": 100.0 * top1 / len(val), "neighbours": used[k]}
        if classes >= 5:
            result[k]["top5"] = 100.0 * top5 / len(val)
    return result


@torch.no_grad()
def retrieval_recall_at_1(x, y, *, device=None, chunk: int = 1024) -> float:
    """% of samples whose nearest other sample (cosine on unit vectors) shares their label."""
    feats = _unit_rows(x, device)
    labels = _labels(y, len(feats), feats.device)
    if len(feats) < 2:
        raise ConfigError(f"retrieval needs at least 2 samples, got {len(feats)}")
    hits = 0
    for start in range(0, len(feats), chunk):
        sims = feats[start : start + chunk] @ feats.T  # (B, N)
        rows = torch.arange(len(sims), device=sims.device)
        sims[rows, rows + start] = -float("inf")  # leave the query itself out
        hits += int((labels[sims.argmax(1)] == labels[start : start + chunk]).sum())
    return 100.0 * hits / len(feats)


def _unit_rows(x, device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)
    if x.dim() != 2 or not len(x):
        raise ConfigError(f"features must be an (N, D) array, got shape {tuple(x.shape)}")
    return torch.nn.functional.normalize(x.float().to(device or "cpu"), dim=1)


def _labels(y, n: int, device) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y)).long().to(device)
    if y.shape != (n,) or (y < 0).any():
        raise ConfigError(f"labels must be {n} class indices (0 or more), got shape {tuple(y.shape)}")
    return y


# -- linear probe ---------------------------------------------------------------------------------


@dataclass
class LinearProbe:
    accuracy: float
    """Top-1 % on the validation features."""
    C: float
    """Inverse L2 strength, scikit-learn's convention."""
    solver: str
    """"sklearn" (LBFGS, float64) or "torch" (LBFGS, float32, on `device`)."""
    converged: bool
    """False when LBFGS stopped at max_iter."""
    search: dict[str, float] = field(default_factory=dict)
    """When C was chosen: each C tried -> its held-out accuracy (%)."""

    def as_dict(self) -> dict:
        return asdict(self)


def linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    *,
    C: float | None = None,
    max_iter: int = 1000,
    solver: str = "auto",
    device=None,
    seed: int = 0,
) -> LinearProbe:
    """Logistic regression on the training features, accuracy on the validation ones. C None:
    chosen on a held-out fifth of the training set (CLIP's protocol). solver "auto": torch's
    LBFGS when `device` (default: CUDA when present) is a GPU, else scikit-learn's."""
    train_x, val_x = np.asarray(train_x, dtype=np.float32), np.asarray(val_x, dtype=np.float32)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    if len(np.unique(train_y)) < 2:
        raise ConfigError("a linear probe needs training images of at least 2 classes")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if solver == "auto":
        solver = "torch" if str(device).startswith("cuda") else "sklearn"
    if solver not in ("sklearn", "torch"):
        raise ConfigError(f"solver must be auto, sklearn or torch, got {solver!r}")

    def fit(x, y, c):
        return (
            _fit_sklearn(x, y, c, max_iter) if solver == "sklearn" else _fit_torch(x, y, c, max_iter, device)
        )

    search = {}
    if C is None:
        C, search = _choose_C(fit, train_x, train_y, seed)
    predict, converged = fit(train_x, train_y, C)
    accuracy = 100.0 * float((predict(val_x) == val_y).mean())
    return LinearProbe(accuracy, float(C), solver, converged, search)


def _fit_sklearn(x, y, C: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():  # reported as `converged` instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=C, max_iter=max_iter).fit(x, y)
    return model.predict, int(np.max(model.n_iter_)) < max_iter


def _fit_torch(x, y, C: float, max_iter: int, device):
    """scikit-learn's objective, scaled by 1/N: mean cross-entropy + |W|^2 / (2 C N). Two classes
    are one logit against a fixed zero, as scikit-learn's binary model (and its penalty)."""
    classes, index = np.unique(y, return_inverse=True)
    feats = torch.as_tensor(x, dtype=torch.float32, device=device)
    target = torch.as_tensor(index, device=device)
    outputs = 1 if len(classes) == 2 else len(classes)
    weight = torch.zeros(feats.shape[1], outputs, device=device, requires_grad=True)
    bias = torch.zeros(outputs, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def logits(z):
        out = z @ weight + bias  # (N, outputs)
        return torch.cat([torch.zeros_like(out), out], 1) if outputs == 1 else out

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(feats), target)
        loss = loss + weight.square().sum() / (2 * C * len(feats))
        loss.backward()
        return loss

    optimizer.step(closure)

    @torch.no_grad()
    def predict(z):
        return classes[logits(torch.as_tensor(z, dtype=torch.float32, device=device)).argmax(1).cpu().numpy()]

    return predict, optimizer.state[weight]["n_iter"] < max_iter


def _choose_C(fit, x, y, seed: int) -> tuple[float, dict[str, float]]:
    """The C (a power of ten in 1e-6..1e6) with the best held-out accuracy."""
    kept, held = _holdout(y, seed)
    scores: dict[float, float] = {}

    def score(power: float) -> float:
        if power not in scores:
            predict, _ = fit(x[kept], y[kept], 10.0**power)
            scores[power] = 100.0 * float((predict(x[held]) == y[held]).mean())
        return scores[power]

    def rank(power: float) -> tuple[float, float]:
        return score(power), -abs(power)  # ties: the C nearest 1, scikit-learn's default

    best = max(range(-6, 7, 2), key=rank)
    for step in (1.0, 0.5):
        best = max((p for p in (best - step, best, best + step) if -6 <= p <= 6), key=rank)
    return 10.0**best, {f"{10.0**p:.3g}": s for p, s in sorted(scores.items())}


def _holdout(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fifth of each class held out (at least one image of it kept for fitting)."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        cut = min(round(0.2 * len(members)), len(members) - 1)
        held.append(members[:cut])
        kept.append(members[cut:])
    held = np.concatenate(held)
    if not len(held):
        raise ConfigError("too few training images to choose C on a held-out split; give C (--C)")
    return np.sort(np.concatenate(kept)), np.sort(held)


# -- features of an ImageFolder ---------------------------------------------------------------


def image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """ROOT/CLASS/**/IMAGE (torchvision's ImageFolder): image paths, class indices and classes,
    the sorted first-level folders. With `classes` (a training split's), an image under any other
    folder is an error naming it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = classes if classes is not None else [p.name for p in folders]
    paths, labels = [], []
    for folder in folders:
        images = _images(folder)
        if folder.name not in names:
            if images:
                raise ConfigError(f"{images[0]}: class {folder.name!r} is not one of the training classes")
            continue
        if not images and classes is None:
            raise ConfigError(f"{folder}: a class folder with no images")
        paths += images
        labels += [names.index(folder.name)] * len(images)
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in _suffixes()]
    if loose:
        logger.warning("%s: %d image(s) outside any class folder are ignored", root, len(loose))
    if not paths:
        raise ConfigError(f"{root}: no images in class folders (expected {root}/CLASS/IMAGE)")
    return paths, labels, list(names)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _suffixes())


def _suffixes() -> set[str]:
    from ..extract import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


@torch.inference_mode()
def pooled_features(
    tower,
    processor,
    paths: list[Path],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """(M, D) float32 L2-normalised ``pooler_output`` of the images that load, their indices in
    `paths`, and (image, reason) for each one skipped (logged, never silent). The same embedding
    and the same threaded decoding as `fovea pretrain features` (teacher.Teacher)."""
    from .data import ImageRef, decoded_batches
    from .teacher import Teacher

    teacher = Teacher(tower.model, processor, clip=False)
    refs = [ImageRef(id=str(path), path=str(path)) for path in paths]
    index = {ref.id: i for i, ref in enumerate(refs)}
    feats, kept, skipped = [], [], []
    with tqdm(total=len(paths), disable=not progress, desc=desc, unit="img") as bar:
        for batch in decoded_batches(refs, processor, batch_size):
            good = [(ref, pixels) for ref, pixels, _ in batch if pixels is not None]
            for ref, _, reason in batch:
                if reason is not None:
                    logger.warning("skipped %s: %s", ref.id, reason)
                    skipped.append((ref.id, reason))
            if good:
                feats.append(teacher.embed(torch.cat([pixels for _, pixels in good])).cpu())
                kept += [index[ref.id] for ref, _ in good]
            bar.update(len(batch))
    return (torch.cat(feats) if feats else torch.empty(0, teacher.dim)), kept, skipped


# -- the whole probe ------------------------------------------------------------------------------


@dataclass
class ProbeConfig:
    methods: tuple[str, ...] = METHODS
    ks: tuple[int, ...] = KS
    temperature: float = TEMPERATURE
    C: float | None = None
    """None: chosen on a held-out split (CLIP's protocol)."""
    max_iter: int = 1000
    solver: str = "auto"
    batch_size: int = 64
    device: str | None = None
    """None: CUDA when present, else the CPU."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ConfigError(f"methods must be some of {', '.join(METHODS)}, got {', '.join(self.methods)}")


def probe(
    tower: str,
    train: Path,
    val: Path,
    config: ProbeConfig,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Pooled features of the train and val ImageFolders from `tower` (a preset, hub id or tower
    directory), then each method of `config`: a JSON-ready result."""
    from ..imaging.processor import ImageConfig, ImageProcessor
    from ..towers.presets import build_tower

    train_paths, train_labels, classes = image_folder(train)
    val_paths, val_labels, _ = image_folder(val, classes)  # before the tower is built or downloaded
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    built, image = build_tower(tower, pretrained=pretrained, weights=weights)
    built.to(device).eval()
    processor = ImageProcessor(ImageConfig(**image))
    splits = {}
    for name, paths, labels in (("train", train_paths, train_labels), ("val", val_paths, val_labels)):
        feats, kept, skipped = pooled_features(
            built, processor, paths, batch_size=config.batch_size, progress=progress, desc=name
        )
        splits[name] = (feats, np.asarray(labels)[kept], skipped, len(paths))
    return _evaluate(tower, _weights_name(pretrained, weights), classes, splits, config, device)


def _evaluate(
    tower: str, weights: str, classes: list[str], splits: dict, config: ProbeConfig, device
) -> dict:
    """`splits`: name -> (features, labels, skipped, images listed)."""
    for name, (feats, _, _, listed) in splits.items():
        if not len(feats):
            raise ConfigError(f"no {name} image could be read (all {listed} skipped)")
    (train_x, train_y, _, _), (val_x, val_y, _, _) = splits["train"], splits["val"]
    result = {"tower": tower, "weights": weights, "feature_dim": int(train_x.shape[1]), "classes": classes}
    for name, (feats, _, _, listed) in splits.items():
        result[name] = {"images": listed, "used": len(feats)}
    result["skipped"] = [{"image": p, "reason": r} for split in splits.values() for p, r in split[2]]
    if "linear" in config.methods:
        result["linear"] = linear_probe(
            train_x.numpy(), train_y, val_x.numpy(), val_y, C=config.C, max_iter=config.max_iter,
            solver=config.solver, device=device,
        ).as_dict()  # fmt: skip
    if "knn" in config.methods:
        knn = knn_accuracy(train_x, train_y, val_x, val_y, config.ks, config.temperature, device=device)
        result["knn"] = {"temperature": config.temperature, **{str(k): v for k, v in knn.items()}}
    if "retrieval" in config.methods:
        recall = retrieval_recall_at_1(val_x, val_y, device=device)
        result["retrieval"] = {"recall_at_1": recall, "split": "val", "protocol": "leave-one-out"}
    return result


def _weights_name(pretrained: bool, weights) -> str:
    return str(weights) if weights is not None else ("published" if pretrained else "random")
