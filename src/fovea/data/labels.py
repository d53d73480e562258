"""Conversation -> token ids and labels, through the same templates that build prompts.

Supervision is decided on *characters*, then mapped to tokens by their offsets: a token is
learned from when it overlaps an assistant turn's answer or its closing marker (so the model
learns to stop). Overlap, not containment: BPE glues the space after ``ASSISTANT:`` to the
answer's first word, and that token (`` The``) is exactly what the model must produce after a
prompt ending in ``ASSISTANT:``. Everything else — system, user turns, template headers, image placeholders — is
``IGNORE`` (-100). This is what makes a template mismatch impossible: the prompt at inference
and the labels at training come from one `Template`.

``quirk="llava_next_qwen"`` reproduces LLaVA-NeXT's ``preprocess_qwen`` instead: assistant turns
learned *with* their ``<|im_start|>assistant\\n`` header, and the tokens ``\\n``, ``<|im_start|>``
and ``<|im_end|>`` learned wherever they stand. Use it to reproduce MLCD-LLaVA-NeXT exactly.

Visual tokens count towards `max_length`; a sequence that is too long is cut at the end, but
never through an image's tokens (the whole image goes, and the caller drops its pixels). A sample
left with nothing to learn is a `BadRecord`, never a silent zero loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..model.templates import IMAGE_TAG, Template
from ..model.tokenize import tokenize
from .records import BadRecord

IGNORE = -100
QUIRKS = (None, "llava_next_qwen")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int
    """Images still in the sequence after truncation (a prefix of the sample's images)."""


def encode(
    sample_id: str,
    messages: list[dict],
    tokenizer,
    template: Template,
    image_id: int,
    image_tokens: list[int],
    max_length: int | None = None,
    quirk: str | None = None,
) -> Encoded:
    """Token ids (images expanded to their visual-token counts) and labels for one conversation."""
    if quirk not in QUIRKS:
        raise ValueError(f"unknown label quirk {quirk!r}; expected one of {QUIRKS}")
    try:
        rendered = template.render(messages, bos_token=tokenizer.bos_token)
    except ConfigError as err:  # e.g. a system turn under `plain`: this record, not the run, is bad
        raise BadRecord(f"record {sample_id}: {err}") from None
    spans = [
        (t.start - (len(template.prefix["assistant"]) if quirk else 0), t.close)
        for t in rendered.turns
        if t.role == "assistant"
    ]
    ids, token_spans = tokenize(tokenizer, rendered.text, IMAGE_TAG, image_id, offsets=True)
    always = _quirk_ids(tokenizer) if quirk else set()
    labels = [
        tok if tok != image_id and (tok in always or any(s < b and a < e for a, b in spans)) else IGNORE
        for tok, (s, e) in zip(ids, token_spans)
    ]
    if ids.count(image_id) != len(image_tokens):
        raise BadRecord(
            f"record {sample_id}: {ids.count(image_id)} image tags after templating, {len(image_tokens)} images"
        )
    ids, labels, kept = _expand_and_truncate(ids, labels, image_id, image_tokens, max_length)
    if all(label == IGNORE for label in labels):
        limit = f" after truncation to {max_length} tokens" if max_length else ""
        raise BadRecord(f"record {sample_id}: nothing left to learn from{limit}")
    return Encoded(ids, labels, kept)


def _quirk_ids(tokenizer) -> set[int]:
    found = set()
    for text in ("\n", "<|im_start|>", "<|im_end|>"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            found.add(ids[0])
    return found


def _expand_and_truncate(ids, labels, image_id, image_tokens, max_length):
    out_ids, out_labels, kept, k = [], [], 0, 0
    for tok, label in zip(ids, labels):
        if tok == image_id:
            n = image_tokens[k]
            k += 1
            if max_length is not None and len(out_ids) + n > max_length:
                break  # never cut through an image: it goes whole
            out_ids.extend([image_id] * n)
            out_labels.extend([IGNORE] * n)
            kept += 1
        else:
            if max_length is not None and len(out_ids) >= max_length:
                break
            out_ids.append(tok)
            out_labels.append(label)
    return out_ids, out_labels, kept
