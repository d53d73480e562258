"""A fovea VisionLanguageModel that segments (MLCD-Seg): ``[SEG]`` in its answer becomes a mask.

* `add_segmentation` gives any model the mask path: ``[SEG]`` added to the tokenizer as a special
  token and the LM's embeddings resized (the new row at transformers' default init, as the
  original), SAM (any transformers SamModel; SAM-H for MLCD-Seg) and ``text2sam`` (seg/head.py);
  the config records both, so the model saves and loads like any other.
* `seg_forward` runs a batch teacher-forced once: the logits and, at every ``[SEG]`` position,
  the LM's last hidden state (after its final norm), each sample's ``[SEG]``s given to its images
  round-robin as the original assigns them (``[i::images]``), each image's masks at its own size.
  (The original brings every image of a sample to the first image's size.)
* `segment` answers a prompt about an image, then runs prompt + answer teacher-forced for the
  masks: the generate-then-segment path the original's ``generate`` leaves broken. ``force=True``
  appends ``[SEG]`` when the answer has none (the original's ``force_seg``, for benchmarks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .config import SegConfig
from .head import SEG_TOKEN, SamInputs, SegHead, sam_inputs


def add_segmentation(model, sam) -> None:
    """Give `model` MLCD-Seg's mask path with `sam` (a transformers SamModel, random or pretrained)."""
    tokenizer = model.tokenizer
    if SEG_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([SEG_TOKEN], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    if token_id >= model.lm.get_input_embeddings().weight.shape[0]:
        # the new row at the default init, as the original (transformers 4.44: no mean resizing)
        model.lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.lm["vocab_size"] = model.lm.get_input_embeddings().weight.shape[0]
    fields = json.loads(sam.config.to_json_string(use_diff=True))  # JSON-clean, as config.json keeps it
    fields = {k: v for k, v in fields.items() if k not in ("transformers_version", "architectures")}
    model.config.seg = SegConfig(sam=fields, token_id=token_id)
    model.seg = SegHead(sam, model.lm.config.hidden_size).to(model.device)


def _check(model) -> SegConfig:
    if model.seg is None or model.config.seg is None:
        raise ConfigError(
            "this model does not segment (no SAM and [SEG] token: see fovea.seg.add_segmentation)"
        )
    return model.config.seg


@dataclass
class SegOutput:
    logits: torch.Tensor | None
    """(B, T, vocab) the LM's logits, teacher-forced (None when not asked for)."""
    masks: list[list[torch.Tensor]]
    """Per sample, per image: (k, H, W) float32 mask logits, one per [SEG] given to that image."""


def seg_forward(model, inputs, images: list[list[SamInputs]], logits: bool = True) -> SegOutput:
    """Teacher-forced logits and masks of a batch (`inputs` from `prepare`/`prepare_chat` or the
    training collate), `images` each sample's images as SAM sees them. ``logits=False`` skips the
    LM head (segmenting needs only the [SEG] states: at 7B size the logits are 1.7 GiB in fp32)."""
    config = _check(model)
    embeds = model.embed_inputs(inputs)
    mask = inputs.attention_mask.to(embeds.device) if inputs.attention_mask is not None else None
    hidden = model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    scores = model.lm.get_output_embeddings()(hidden) if logits else None
    input_ids = inputs.input_ids.to(hidden.device)
    masks = []
    for row, sample_images in enumerate(images):
        states = hidden[row][input_ids[row] == config.token_id]  # (n_seg, D) in text order
        count = max(1, len(sample_images))
        per_image = []
        for i, image in enumerate(sample_images):
            mine = states[i::count]  # the original's round-robin assignment
            if len(mine):
                embeddings = model.seg.image_embeddings(image.pixels[None])
                per_image.append(model.seg(mine.to(embeddings.dtype), embeddings, image))
            else:
                per_image.append(torch.zeros(0, *image.original))
        masks.append(per_image)
    return SegOutput(scores, masks)


@dataclass
class SegResult:
    text: str
    """The answer, ``[SEG]`` kept where the model wrote it."""
    masks: np.ndarray
    """(k, H, W) bool, one per [SEG], at the image's size (k = 0 when the answer has none)."""
    logits: torch.Tensor
    """(k, H, W) float32 mask logits (a pixel is in the mask where its logit is above 0)."""


@torch.inference_mode()
def segment(
    model,
    image,
    prompt: str,
    *,
    template: str | None = "default",
    max_new_tokens: int = 64,
    force: bool = False,
) -> SegResult:
    """Answer `prompt` about `image` (a path, PIL image or bytes), then segment each [SEG] of the answer."""
    from ..imaging.io import load_image
    from ..model.running_batch import run_to_end

    config = _check(model)
    if not prompt or not prompt.strip():
        raise ConfigError("the prompt is empty: say what to segment")
    picture = load_image(image)
    prepared = model.prepare_chat([{"role": "user", "content": prompt}], [picture], template)
    sampling = model.sampling(max_new_tokens)
    result = run_to_end(model, [prepared], [model.sequence(prepared, sampling, template)])[0]
    stops = set(model.stop_token_ids(template))
    answer = [t for t in result.tokens if t not in stops]
    if force and config.token_id not in answer:
        answer.append(config.token_id)
    sam_image = sam_inputs(config.processor(), [picture])[0]
    logits = answer_masks(model, prepared, answer, [sam_image])[0].float().cpu()
    text = model.tokenizer.decode(answer, skip_special_tokens=False).strip()
    return SegResult(text, (logits > 0).numpy(), logits)


@torch.inference_mode()
def answer_masks(model, prepared, answer: list[int], images: list[SamInputs]) -> list[torch.Tensor]:
    """The masks of a decoded answer: prompt (`prepared`, as `prepare_chat` gave it) + `answer`'s
    tokens (stop tokens left out) run once teacher-forced; per image, (k, H, W) mask logits of the
    [SEG]s given to it (round-robin, as `seg_forward`). What `segment` and the server both use."""
    ids = torch.cat([prepared.input_ids, torch.tensor([answer], dtype=torch.long)], dim=1)
    full = prepared.replace(input_ids=ids, attention_mask=torch.ones_like(ids))
    return seg_forward(model, full, [images], logits=False).masks[0]


def masks_rle(per_image: list[torch.Tensor]) -> list[dict]:
    """`answer_masks`' logits as COCO RLE, in [SEG] order: [SEG] j is mask j // n of image j mod n
    (n images); each ``{"seg": j, "image": i, "size": [h, w], "counts": "..."}`` (logits above 0)."""
    from ..imaging.masks import rle_encode

    count, out = max(1, len(per_image)), []
    total = sum(len(masks) for masks in per_image)
    for j in range(total):
        image = j % count
        mask = (per_image[image][j // count] > 0).cpu().numpy()
        out.append({"seg": j, "image": image, **rle_encode(mask)})
    return out
