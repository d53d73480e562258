"""Rendered text -> token ids with one image id per image tag: written once, for prompts and labels.

Training (`data.labels.encode`) and inference (`prepare`, `prepare_chat`, the server, eval) both
call `tokenize`, so a prompt at inference is, token for token, the prefix that training supervised
after. How the text is cut follows how each checkpoint's own code cuts it:

* the tokenizer knows the tag as a token (fovea-trained models, transformers' LlavaNext layout):
  the text is tokenized whole, as transformers' processors do;
* it does not (original LLaVA layouts, placeholder id -200): the text is split at the tags and each
  piece tokenized alone, as LLaVA's ``tokenizer_image_token`` does, with the tokenizer's BOS (when
  asked for) only at the very start.

The two differ for SentencePiece tokenizers (a piece starting after a tag gets a word-start mark of
its own); either way training and inference agree, because they share this function.
"""

from __future__ import annotations


def tokenize(
    tokenizer,
    text: str,
    image_tag: str,
    image_id: int,
    *,
    add_special_tokens: bool = False,
    offsets: bool = False,
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """(token ids, their (start, end) character spans when `offsets`) of `text`; each `image_tag`
    becomes one `image_id`. Spans need a fast tokenizer (training labels use them)."""
    if image_id >= 0 and image_tag in tokenizer.get_vocab():
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets)
        return list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]] if offsets else None
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, piece in enumerate(text.split(image_tag)):
        if i > 0:
            ids.append(image_id)
            spans.append((pos, pos + len(image_tag)))
            pos += len(image_tag)
        first = add_special_tokens and i == 0
        if piece or first:
            enc = tokenizer(piece, add_special_tokens=first, return_offsets_mapping=offsets)
            ids.extend(enc["input_ids"])
            if offsets:
                spans.extend((pos + a, pos + b) for a, b in enc["offset_mapping"])
        pos += len(piece)
    return ids, spans if offsets else None


def expand_images(ids: list[int], image_id: int, counts: list[int]) -> list[int]:
    """Each image's single id repeated as many times as it yields visual tokens (`counts`, in order)."""
    out, k = [], 0
    for token in ids:
        if token == image_id:
            out.extend([image_id] * counts[k])
            k += 1
        else:
            out.append(token)
    return out
