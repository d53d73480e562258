"""Every registered fuser (off its init), and a ConvNeXt tower, work everywhere a model is used,
unchanged: generate, chat, the chat session and the batching engine give the same greedy answers,
and so do `fovea serve` over HTTP, `fovea eval` and the lmms-eval plugin; `fovea convert --to
fovea` round-trips and ``--to hf`` refuses, by name, what transformers' LlavaNext cannot express
(a fuser, a feature-map tower)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import fovea
from fovea.checkpoints.export import convert
from fovea.cli import main
from fovea.connectors.fusers import FUSERS
from fovea.errors import ConfigError
from fovea.infer.session import ChatSession
from fuser_models import engine_answers, fuser_model, images, off_init

PROMPTS = ["Describe it.", "What shape?", "Count them."]
TOKENS = 6


CASES = {
    **{name: (name, None) for name in FUSERS},
    "convnext-tower": ("concat", "convllava-convnext-768-tiny"),
}
"""Every fuser on the tiny CLIP tower, and the plain connector on a ConvNeXt (a hierarchical tower)."""


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    """(loaded model, its checkpoint directory) for each case."""
    model = fuser_model(*CASES[request.param]).eval()
    off_init(model)
    directory = model.save_pretrained(tmp_path_factory.mktemp(request.param) / "model")
    return fovea.load(directory).eval(), directory


def _solo(model) -> list[str]:
    return [
        model.chat([{"role": "user", "content": p}], images=[im], max_new_tokens=TOKENS)
        for p, im in zip(PROMPTS, images())
    ]


def test_generate_chat_session_and_engine_agree(saved):
    model, _ = saved
    solo = _solo(model)
    batched = model.generate(PROMPTS, images=[[im] for im in images()], max_new_tokens=TOKENS)
    assert [b.strip() for b in batched] == solo
    session = ChatSession(model, images()[:1], "default")
    assert "".join(session.ask(PROMPTS[0], max_new_tokens=TOKENS)).strip() == solo[0]
    assert engine_answers(model, PROMPTS, images(), TOKENS) == solo


def test_serve_over_http_answers_as_chat(saved):
    import uvicorn
    from openai import OpenAI

    from fovea.infer.server import ServeConfig, create_app
    from test_serve import _content

    model, _ = saved
    app = create_app(model, ServeConfig(name="tiny"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=60)
        answers = [
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": _content(p, [im])}], max_tokens=TOKENS,
                temperature=0,
            ).choices[0].message.content
            for p, im in zip(PROMPTS, images())
        ]  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert [a.strip() for a in answers] == _solo(model)


def test_fovea_eval_scores_every_sample_with_the_models_own_answers(saved, tmp_path):
    from fovea.eval.runner import read_records
    from fovea.eval.tasks import expand, load_task, samples

    model, directory = saved
    task = expand(["synthetic"])[0]
    argv = ["eval", "--model", str(directory), "--tasks", task, "--data-root", str(tmp_path / "data")]
    assert main([*argv, "--out", str(tmp_path / "run"), "--limit", "4", "--quiet"]) == 0
    records = {r["id"]: r["prediction"] for r in read_records(tmp_path / "run" / task)}
    spec = load_task(task)
    rows = list(samples(spec, tmp_path / "data"))[:4]
    expected = model.generate(
        [s.prompt for s in rows],
        images=[[model.processor.load(src) for src in s.images] for s in rows],
        max_new_tokens=spec.max_new_tokens,
    )
    assert records == {s.id: answer for s, answer in zip(rows, expected)}


def test_the_lmms_eval_plugin_answers_as_generate(saved):
    from lmms_eval.api.instance import Instance

    from fovea.eval.lmms_model import FoveaLMM

    model, directory = saved
    lm = FoveaLMM(pretrained=str(directory), batch_size=2)
    lm.task_dict = {"t": {"test": {i: {"image": im} for i, im in enumerate(images())}}}
    options = {"max_new_tokens": TOKENS, "temperature": 0, "do_sample": False}
    requests = [
        Instance("generate_until", (p, options, lambda doc: [doc["image"]], i, "t", "test"), i,
                 {"task": "t", "doc_id": i, "repeats": 1})
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip
    expected = model.generate(PROMPTS, images=[[im] for im in images()], max_new_tokens=TOKENS)
    assert lm.generate_until(requests) == expected


def test_convert_round_trips_to_fovea_and_refuses_hf_by_name(saved, tmp_path):
    model, directory = saved
    convert(directory, tmp_path / "fv", to="fovea")
    copy = fovea.load(tmp_path / "fv")
    assert copy.config.connector.fuser == model.config.connector.fuser
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))
    fuser, tower = model.config.connector.fuser_type, model.config.tower.model_type
    if tower == "convnext":  # a feature-map tower: LlavaNext reads ViT token sequences
        with pytest.raises(ConfigError, match="tower type 'convnext'"):
            convert(directory, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()
    elif fuser == "concat":  # LLaVA's own layer selection: LlavaNext expresses it
        convert(directory, tmp_path / "hf")
        assert (tmp_path / "hf" / "config.json").is_file()
    else:
        with pytest.raises(ConfigError, match=f"fuser '{fuser}'"):
            convert(directory, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()
