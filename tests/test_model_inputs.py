"""One path for model inputs: `prepare`, the serving batch and the training collator all reach the
model through `embed_inputs`, and the fuser learns which sample each image view belongs to and
that sample's question. A question-aware test fuser checks the question reaches it everywhere,
conditions each view on its own row, and stops the chat session reusing stale image tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.connectors.fusers import ConcatFuser
from fovea.data.dataset import collate
from fovea.errors import ConfigError
from fovea.infer.session import ChatSession
from fovea.model.inputs import ImageBatch, ModelInputs
from fovea.tiny import tiny_vlm
from fuser_models import engine_answers


@pytest.fixture(scope="module")
def model():
    return tiny_vlm().eval()


def _image(h, w, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def _seen_samples(model, monkeypatch) -> list:
    seen = []
    original = type(model.connector.fuser).forward

    def spy(self, inputs):
        seen.append(inputs.samples.tolist())
        return original(self, inputs)

    monkeypatch.setattr(type(model.connector.fuser), "forward", spy)
    return seen


def _views(layouts) -> list[int]:
    return [layout.num_views for layout in layouts]


def test_a_batch_of_prompts_tells_the_fuser_each_views_sample(model, monkeypatch):
    seen = _seen_samples(model, monkeypatch)
    images = [[_image(50, 90)], [], [_image(90, 40, 1), _image(20, 20, 2)]]
    inputs = model.prepare(["<image> a", "b", "<image><image> c"], images=images)
    assert inputs["image_samples"] == [0, 2, 2]
    with torch.no_grad():
        model.embed_inputs(inputs)
    a, b, c = _views(inputs["image_layouts"])
    assert seen == [[0] * a + [2] * (b + c)]


def test_the_serving_batch_renumbers_rows(model, monkeypatch):
    parts = [
        model.prepare("<image> a", images=[_image(50, 90)]),
        model.prepare("<image> b", images=[_image(20, 20)]),
    ]
    ids, mask = model._pad_left([p["input_ids"][0].tolist() for p in parts])
    joined = ModelInputs.join(parts, ids, mask)
    assert joined["image_samples"] == [0, 1]
    assert joined["pixel_values"].shape[0] == sum(p["pixel_values"].shape[0] for p in parts)


def test_the_training_collator_gives_each_image_its_row():
    layouts = [["L0"], [], ["L2a", "L2b"]]
    items = [
        {"input_ids": torch.ones(3, dtype=torch.long), "labels": torch.ones(3, dtype=torch.long), "pixel_values": None,
         "image_layouts": layout, "id": str(i), "question": f"q{i}"}
        for i, layout in enumerate(layouts)
    ]  # fmt: skip
    batch = collate(items, 0)
    assert batch["inputs"].image_samples == [0, 2, 2]
    assert batch["inputs"].questions == ["q0", "q1", "q2"]


def test_embedding_through_the_one_path_equals_the_explicit_call(model):
    inputs = model.prepare("<image> what?", images=[_image(50, 90)])
    with torch.no_grad():
        a = model.embed_inputs(inputs)
        b = model.embed(inputs["input_ids"], ImageBatch(inputs["pixel_values"], inputs["image_layouts"], [0]))
    assert torch.equal(a, b)


class QuestionFuser(ConcatFuser):
    """Test fuser whose output depends on each view's question (a per-character offset)."""

    reads_question = True

    def forward(self, inputs):
        rows = inputs.samples.tolist()
        shift = torch.tensor([sum(map(ord, inputs.questions[r])) % 97 / 97 for r in rows])
        return super().forward(inputs) + shift[:, None, None].to(inputs.layers[0].dtype)


@pytest.fixture(scope="module")
def asking():
    model = tiny_vlm().eval()
    model.connector.fuser = QuestionFuser(model.connector.fuser.config, model.connector.fuser.widths)
    return model


def test_prepare_and_prepare_chat_give_the_question(model):
    one = model.prepare(["What is it?", "<image> two"], images=[[_image(20, 20)], [_image(30, 30)]])
    assert one["questions"] == ["<image>\nWhat is it?", "<image> two"]
    turns = [
        {"role": "user", "content": "Describe."},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And now?"},
    ]
    chat = model.prepare_chat(turns, [_image(20, 20)])
    assert chat["questions"] == ["<image>\nDescribe.And now?"]  # user turns joined with no separator


def test_each_view_is_conditioned_on_its_own_rows_question(asking):
    image = _image(50, 90)
    both = asking.prepare(["<image> left?", "<image> right?"], images=[[image], [image]])
    with torch.no_grad():
        together = asking.embed_inputs(both)
        apart = [
            asking.embed_inputs(asking.prepare(q, images=[image]))
            for q in ["<image> left?", "<image> right?"]
        ]
    for row, alone in enumerate(apart):
        n = alone.shape[1]
        torch.testing.assert_close(together[row, -n:], alone[0], rtol=0, atol=1e-5)
    mask = both["input_ids"] == asking.config.image_token_id
    assert (together[0][mask[0]] - together[1][mask[1]]).abs().max() > 1e-3  # the question changed them


def test_a_question_aware_fuser_refuses_a_call_without_questions(asking):
    inputs = asking.prepare("<image> what?", images=[_image(20, 20)])
    with pytest.raises(ConfigError, match="conditions on the question"):
        asking(
            inputs["input_ids"], pixel_values=inputs["pixel_values"], image_layouts=inputs["image_layouts"]
        )


def test_the_chat_session_recomputes_image_tokens_when_the_question_changes(asking):
    image = _image(40, 60)
    session, history = ChatSession(asking, [image]), []
    for question in ["What is it?", "And its colour?"]:
        answer = "".join(session.ask(question, max_new_tokens=5)).strip()
        history.append({"role": "user", "content": question})
        assert answer == asking.chat(history, [image], max_new_tokens=5)
        history.append({"role": "assistant", "content": answer})
        full = int(asking.prepare_chat(history[:-1], [image])["attention_mask"].sum())
        assert session.prefilled[-1] == full  # nothing reused: the image tokens depend on the question


def test_the_batching_engine_passes_each_requests_question(asking):
    image = _image(40, 60)
    prompts = ["What is it?", "Which colour?"]
    solo = [asking.chat([{"role": "user", "content": p}], [image], max_new_tokens=5) for p in prompts]
    assert engine_answers(asking, prompts, [image, image], 5) == solo
