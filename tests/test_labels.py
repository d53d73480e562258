"""Labels come from the same templates as prompts: supervised spans are exactly the answers."""

from __future__ import annotations

import pytest

from fovea.data.labels import IGNORE, encode
from fovea.data.records import BadRecord
from fovea.model.templates import TEMPLATES
from fovea.tiny import tiny_tokenizer

TOK = tiny_tokenizer()
IMAGE = TOK.convert_tokens_to_ids("<image>")
MESSAGES = [
    {"role": "user", "content": "<image>\nWhat colour is the square?"},
    {"role": "assistant", "content": "The square is red."},
    {"role": "user", "content": "How many circles?"},
    {"role": "assistant", "content": "There are three circles."},
]


def _spans(labels: list[int]) -> list[list[int]]:
    """Runs of consecutive supervised tokens."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_supervised_spans_decode_to_the_answers(name):
    template = TEMPLATES.get(name)
    enc = encode("r1", MESSAGES, TOK, template, IMAGE, [7])
    answers = [m["content"] + template.suffix["assistant"] for m in MESSAGES if m["role"] == "assistant"]
    # A run may start with the space BPE glues to the first word; in `plain` the answers are
    # adjacent (user turns without images vanish), so compare the learned text as a whole.
    learned = "".join(TOK.decode(run).lstrip(" ") for run in _spans(enc.labels))
    assert learned == "".join(answers)
    assert enc.input_ids.count(IMAGE) == 7 and enc.num_images == 1


def test_llava_next_qwen_quirk():
    enc = encode("r1", MESSAGES, TOK, TEMPLATES.get("qwen_1_5"), IMAGE, [7], quirk="llava_next_qwen")
    learned = TOK.decode([t for t in enc.labels if t != IGNORE])
    assert "<|im_start|>assistant\nThe square is red.<|im_end|>" in learned
    assert learned.count("<|im_start|>") == 5  # every turn marker is learned, as in LLaVA-NeXT


def test_truncation_never_cuts_an_image():
    two = [{"role": "user", "content": "<image><image>Compare."}, {"role": "assistant", "content": "Same."}]
    full = encode("r", two, TOK, TEMPLATES.get("plain"), IMAGE, [10, 10])
    assert full.input_ids.count(IMAGE) == 20
    with pytest.raises(BadRecord, match="nothing left to learn from after truncation to 15 tokens"):
        encode("r", two, TOK, TEMPLATES.get("plain"), IMAGE, [10, 10], max_length=15)
    text_first = [{"role": "user", "content": "Look<image>"}, {"role": "assistant", "content": "Same."}]
    cut = encode(
        "r",
        text_first + [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
        TOK,
        TEMPLATES.get("plain"),
        IMAGE,
        [10, 10],
        max_length=len(full.input_ids) - 5,
    )
    assert cut.num_images == 1 and cut.input_ids.count(IMAGE) == 10
