"""Tokenization is written once: an inference prompt is, id for id, what training supervised after.

For every registered template, on a byte-level BPE tokenizer and on a SentencePiece one (the
Llama/Vicuna kind, whose word-start marks make a text cut at ``<image>`` tokenize differently from
the whole text), each with ``<image>`` as a token (fovea-trained and transformers layouts) and
without it (original LLaVA layouts, placeholder -200): `prepare_chat` for the user turn must give
exactly the first ids of `encode` for the same conversation with its answer, and the first id
after them must be a supervised one (the answer starts where the prompt ends).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fovea.data.labels import IGNORE, encode
from fovea.model.templates import TEMPLATES
from fovea.tiny import tiny_vlm
from fovea.tiny_tokenizers import tiny_sentencepiece_tokenizer, tiny_tokenizer

TOKENIZERS = {
    "bpe": lambda image: tiny_tokenizer(image_token=image),
    "sentencepiece": lambda image: tiny_sentencepiece_tokenizer(image_token=image),
}


@pytest.fixture(scope="module")
def model():
    return tiny_vlm(template=None)


@pytest.mark.parametrize("image_token", [True, False], ids=["image-token", "placeholder-200"])
@pytest.mark.parametrize("kind", list(TOKENIZERS))
@pytest.mark.parametrize("template", TEMPLATES.names())
def test_inference_ids_are_the_prefix_training_supervised_after(model, template, kind, image_token):
    tokenizer = TOKENIZERS[kind](image_token)
    image_id = tokenizer.convert_tokens_to_ids("<image>") if image_token else -200
    model.tokenizer, model.config.image_token_id = tokenizer, image_id
    image = Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype("uint8"))
    user = {"role": "user", "content": "<image>\nWhat colour is the square?"}
    answer = {"role": "assistant", "content": "The square is red."}
    prompt = model.prepare_chat([user], [image], template)
    counts = [model.num_image_tokens(layout) for layout in prompt["image_layouts"]]
    trained = encode("r", [user, answer], tokenizer, TEMPLATES.get(template), image_id, counts)
    ids = prompt["input_ids"][0].tolist()
    assert trained.input_ids[: len(ids)] == ids, tokenizer.convert_ids_to_tokens(ids)
    assert trained.labels[len(ids)] != IGNORE  # the first id after the prompt is the answer's
    assert all(label == IGNORE for label in trained.labels[: len(ids)])
