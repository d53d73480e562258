"""Packing is exact: the same samples packed end to end give each sample the loss, and the batch the
gradients, that they have unpacked (1e-5, fp32), for every registered template, for text, one image
and several images (AnyRes), video frames, rows made by the longest sample or one row for all, and
each attention implementation packing allows; one it does not know is refused."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fovea.data.dataset import SupervisedDataset, collate
from fovea.data.labels import IGNORE
from fovea.data.packing import bins, packed_attention
from fovea.data.sources import RecordSource
from fovea.errors import ConfigError
from fovea.model.templates import TEMPLATES
from fovea.model.varlen import varlen
from fovea.tiny import tiny_vlm


@pytest.fixture(scope="module")
def model():
    return tiny_vlm(template=None).train()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 60), (70, 30), (50, 50)]):
        Image.fromarray((rng.random(size + (3,)) * 255).astype("uint8")).save(root / f"{i}.png")

    def turns(*pairs):
        return [{"from": f, "value": v} for pair in pairs for f, v in zip(("human", "gpt"), pair)]

    rows = [
        {"id": "text", "conversations": turns(("Say hi.", "Hi there, friend."))},
        {"id": "one", "image": "0.png", "conversations": turns(("<image>\nWhat colour?", "Red."), ("And?", "Blue."))},
        {"id": "two", "image": ["1.png", "2.png"], "conversations": turns(("<image>\n<image>\nCompare.", "Alike."))},
        {"id": "short", "conversations": turns(("Q", "A"))},
    ]  # fmt: skip
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "d.jsonl"


def _items(model, records, template):
    dataset = SupervisedDataset(RecordSource(records), model, template=template)
    return [dataset[i] for i in range(len(dataset))]


def _losses_and_grads(model, batch, use_varlen=False) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Each sample's summed token loss (by id) and the gradients of their sum."""
    model.zero_grad()
    inputs = batch["inputs"]
    with varlen(model.lm) if use_varlen else contextlib.nullcontext():
        out = model(**inputs, use_cache=False)
    labels = batch["labels"]
    token = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE,
        reduction="none",
    ).view(labels.shape[0], -1)
    token.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return _per_sample(batch, token.detach()), grads


def _per_sample(batch, token: torch.Tensor) -> dict[str, float]:
    """Token losses summed per sample: unpacked, by row; packed, by each row's runs of positions."""
    ids = batch["ids"]
    positions = batch["inputs"].position_ids
    if positions is None:
        return {rid: float(token[r].sum()) for r, rid in enumerate(ids)}
    lengths = [int(n) for n in batch["lengths"]]
    out = {}
    for r, row in enumerate(bins(lengths, batch["capacity"])):
        at = 0
        for i in row:
            out[ids[i]] = float(token[r, at : at + lengths[i] - 1].sum())  # targets at+1 .. at+n-1
            at += lengths[i]
    return out


def _packed(items, pad, capacity):
    batch = collate(items, pad, pack=True, capacity=capacity)
    lengths = [len(x["input_ids"]) for x in items]
    cap = sum(lengths) if capacity is None else max(max(lengths), capacity)
    return batch | {"lengths": lengths, "capacity": cap}


def _check_exact(model, items):
    """Unpacked against packed in rows of the longest sample and in one row, through transformers'
    packed mask and (sdpa) through fovea's varlen attention."""
    pad = model.tokenizer.pad_token_id
    loose, loose_grads = _losses_and_grads(model, collate(items, pad))
    sdpa = model.lm.config._attn_implementation == "sdpa"
    for capacity, use_varlen in [(0, False), (None, False)] + [(0, True), (None, True)] * sdpa:
        batch = _packed(items, pad, capacity)
        assert batch["inputs"].attention_mask is None
        tight, tight_grads = _losses_and_grads(model, batch, use_varlen)
        assert loose.keys() == tight.keys()
        for rid in loose:
            assert abs(loose[rid] - tight[rid]) < 1e-5 * max(1.0, abs(loose[rid])), (rid, capacity)
        for name, grad in loose_grads.items():
            assert torch.allclose(tight_grads[name], grad, atol=1e-5, rtol=1e-4), (name, capacity)


@pytest.mark.parametrize("template", TEMPLATES.names())
def test_packing_is_exact_for_every_template(model, records, template):
    items = _items(model, records, template)
    assert all(isinstance(x, dict) for x in items)
    _check_exact(model, items)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packing_is_exact_for_each_allowed_attention(model, records, implementation):
    model.lm.set_attn_implementation(implementation)
    try:
        assert model.lm.config._attn_implementation == implementation
        _check_exact(model, _items(model, records, "qwen_1_5"))
    finally:
        model.lm.set_attn_implementation("sdpa")


def test_packed_rows_are_whole_samples_no_longer_than_the_longest_and_fewer(model, records):
    items = _items(model, records, "qwen_1_5")
    lengths = [len(x["input_ids"]) for x in items]
    packed = collate(items, model.tokenizer.pad_token_id, pack=True, capacity=0)
    loose = collate(items, model.tokenizer.pad_token_id)
    assert packed["inputs"].input_ids.shape[1] == max(lengths) == loose["inputs"].input_ids.shape[1]
    assert packed["inputs"].input_ids.numel() < loose["inputs"].input_ids.numel()
    assert packed["tokens"] == loose["tokens"] == sum(lengths)
    assert sorted(i for row in bins(lengths, max(lengths)) for i in row) == list(range(len(items)))


def test_frames_pack_exactly(model, tmp_path):
    """A video (a folder of frames: one pooled item) beside an image and a text sample."""
    rng = np.random.default_rng(1)
    (tmp_path / "frames").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((36, 48, 3)) * 255).astype("uint8")).save(
            tmp_path / "frames" / f"{i:03d}.png"
        )
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype("uint8")).save(tmp_path / "still.png")
    turns = lambda q: [{"from": "human", "value": q}, {"from": "gpt", "value": "A dog runs."}]  # noqa: E731
    rows = [
        {"id": "clip", "video": "frames", "conversations": turns("<video>\nWhat happens?")},
        {"id": "still", "image": "still.png", "conversations": turns("<image>\nWhat is it?")},
        {"id": "text", "conversations": turns("Hello?")},
    ]
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = _items(model, tmp_path / "v.jsonl", "qwen_1_5")
    assert [layout.frames for layout in items[0]["image_layouts"]] == [3]
    _check_exact(model, items)


def test_each_attention_packs_as_it_can_and_an_unknown_one_is_refused():
    assert packed_attention("sdpa", None) == (None, True)  # fovea's varlen: one row
    assert packed_attention("flash_attention_2", 512) == (512, False)  # flash's own varlen
    assert packed_attention("eager", None) == (0, False) and packed_attention("flex_attention", 64) == (
        64,
        False,
    )
    with pytest.raises(
        ConfigError, match=r"packing: attention 'paged_attention' is not known to keep packed samples apart"
    ):
        packed_attention("paged_attention", None)


def test_varlen_attention_runs_padded_rows_as_sdpa(model, records):
    batch = collate(_items(model, records, "qwen_1_5"), model.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(**batch["inputs"], use_cache=False).logits
        with varlen(model.lm):
            got = model(**batch["inputs"], use_cache=False).logits
    mask = batch["inputs"].attention_mask.bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)
    assert model.lm.config._attn_implementation == "sdpa"  # restored
