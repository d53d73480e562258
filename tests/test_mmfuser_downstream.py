"""A model with MMFuser (off its identity init) works everywhere a model is used: generate, chat,
the chat session and the batching engine give the same greedy answers, batched or alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fovea
from fovea.config import from_dict
from fovea.connectors.connector import ConnectorConfig
from fovea.infer.engine import Engine, Request
from fovea.infer.session import ChatSession
from fovea.tiny import tiny_vlm

PROMPTS = ["Describe it.", "What shape?", "Count them."]


@pytest.fixture(scope="module")
def model():
    base = tiny_vlm()
    config = base.config
    config.connector = from_dict(ConnectorConfig, {"layers": [0, 1, 0, 1, -2], "fuser": {"type": "mmfuser"}})
    model = fovea.VisionLanguageModel(config, base.tokenizer).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # off the identity init, so the fuser changes what the LM sees
        for param in model.connector.fuser.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
        for h, w in [(50, 90), (90, 40), (20, 20)]
    ]


def test_the_fuser_changes_the_answer_path(model):
    inputs = model.prepare("<image>\nWhat is it?", images=_images()[:1])
    with torch.no_grad():
        fused = model(**inputs).logits
        gammas = [model.connector.fuser.gamma1.clone()]
        model.connector.fuser.gamma1.zero_()
        plain = model(**inputs).logits
        model.connector.fuser.gamma1.copy_(gammas[0])
    assert (fused - plain).abs().max() > 1e-3


def test_generate_chat_session_and_engine_agree(model):
    images = _images()
    solo = [
        model.chat([{"role": "user", "content": p}], images=[im], max_new_tokens=6)
        for p, im in zip(PROMPTS, images)
    ]
    batched = model.generate(PROMPTS, images=[[im] for im in images], max_new_tokens=6)
    assert [b.strip() for b in batched] == solo
    session = ChatSession(model, [images[0]], "default")
    assert "".join(session.ask(PROMPTS[0], max_new_tokens=6)).strip() == solo[0]
    engine = Engine(model, max_batch=8, max_wait=0.05)
    results = []
    for prompt, image in zip(PROMPTS, images):
        done = {}
        results.append(done)
        engine.submit(
            Request([{"role": "user", "content": prompt}], images=[image], max_tokens=6,
                    emit=lambda kind, value, done=done: done.setdefault(kind, value))
        )  # fmt: skip
    import time

    deadline = time.time() + 60
    while not all("done" in r or "error" in r for r in results) and time.time() < deadline:
        time.sleep(0.01)
    engine.close()
    assert [r["done"].text.strip() for r in results] == solo
