"""A transformers checkpoint's own Jinja chat template: found wherever hub checkpoints keep it, and
`fovea chat` / `fovea serve` answer exactly what ``processor.apply_chat_template`` + transformers'
greedy ``generate`` answer; fovea's own templates are recognised in Jinja form; no template at all
is a one-line error naming --template."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fovea
from fovea.checkpoints.jinja import chat_template
from fovea.model import TEMPLATES
from fovea.model.checkpoint_template import JinjaTemplate, read_chat_template, recognise
from fovea.tiny import tiny_tokenizer

EXAMPLES = Path(__file__).parents[1] / "examples" / "images"
IMAGE = EXAMPLES / "shapes.png"
QUESTION = "What shape is it?"

# ChatML without a default system turn: fovea's qwen_1_5 (which always has one) would differ.
NO_SYSTEM_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The shape of most LM tokenizers' own templates: content is a plain string.
STRING_CONTENT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hf_reference import make_hf_llava_next

    return make_hf_llava_next(tmp_path_factory.mktemp("jinja"), chat_template=NO_SYSTEM_CHATML)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """transformers' own answer: processor.apply_chat_template, then greedy generate."""
    from hf_reference import load_hf

    model, processor = load_hf(checkpoint)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": str(IMAGE)}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return inputs["input_ids"][0].tolist(), answer.strip()


@pytest.mark.parametrize("where", ["chat_template.jinja", "chat_template.json", "tokenizer_config.json"])
def test_the_template_is_found_where_hub_checkpoints_keep_it(tmp_path, where):
    if where == "chat_template.jinja":
        (tmp_path / where).write_text(NO_SYSTEM_CHATML)
    elif where == "chat_template.json":
        (tmp_path / where).write_text(json.dumps({"chat_template": NO_SYSTEM_CHATML}))
    else:
        named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": NO_SYSTEM_CHATML}]
        (tmp_path / where).write_text(json.dumps({"chat_template": named}))
    assert read_chat_template(tmp_path) == NO_SYSTEM_CHATML


def test_prompt_tokens_and_greedy_answer_equal_transformers(checkpoint, reference):
    ids, answer = reference
    model = fovea.load(checkpoint)
    assert model.config.template is None and model.chat_format().name == "checkpoint"
    messages = [{"role": "user", "content": QUESTION}]
    assert model.prepare_chat(messages, [IMAGE])["input_ids"][0].tolist() == ids
    assert model.chat(messages, [IMAGE], max_new_tokens=8) == answer
    # the same prompt through generate(), the batching engine's path and eval's
    assert model.generate(QUESTION, images=[IMAGE], max_new_tokens=8).strip() == answer


def test_fovea_chat_one_shot_answers_what_transformers_answers(checkpoint, reference):
    proc = subprocess.run(
        [sys.executable, "-m", "fovea.cli", "chat", "--model", str(checkpoint), "--image", str(IMAGE)]
        + ["--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", "8"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == reference[1]
    assert "Warning" not in proc.stderr and "deprecated" not in proc.stderr


def test_fovea_serve_answers_what_transformers_answers(checkpoint, reference):
    from openai import OpenAI
    from PIL import Image

    from test_serve import _content

    from serve_process import serve_process

    with serve_process(checkpoint, "--name", "it") as (server, url):
        assert server.poll() is None, server.stderr.read()
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": _content(QUESTION, [Image.open(IMAGE)])}]
        reply = client.chat.completions.create(model="it", messages=messages, max_tokens=8, temperature=0)
        server.terminate()
        server.wait(timeout=60)
        log = server.stderr.read()
    assert reply.choices[0].message.content == reference[1]
    assert "Warning" not in log and "deprecated" not in log


def _fovea(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fovea.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=180,
        cwd=cwd,
    )


def test_no_template_at_all_is_one_line_naming_the_flag(tmp_path):
    from hf_reference import make_hf_llava_next

    bare = make_hf_llava_next(tmp_path / "bare")
    for command in (["chat", "--prompt", "hi"], ["serve"]):
        proc = _fovea(*command, "--model", str(bare))
        err = proc.stderr.strip()
        assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "--template NAME" in err and "qwen_1_5" in err and "vicuna_v1" in err
    with pytest.raises(fovea.ConfigError, match="template=NAME"):
        fovea.load(bare).chat([{"role": "user", "content": "hi"}])
    assert fovea.load(bare).generate("hi", max_new_tokens=2) is not None  # no template: text as given


def test_template_flag_chooses_over_the_checkpoint(checkpoint):
    model = fovea.load(checkpoint)
    messages = [{"role": "user", "content": QUESTION}]
    ours = model.prepare_chat(messages, [IMAGE], template="qwen_1_5")["input_ids"][0].tolist()
    text = model.tokenizer.decode([t for t in ours if t != model.config.image_token_id])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert model.template_choices()[-1] == "checkpoint"
    with pytest.raises(fovea.ConfigError, match="unknown template"):
        model.chat_format("qwen_9")


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_fovea_templates_in_jinja_form_are_recognised(name):
    """A checkpoint exported by fovea (or any Jinja that renders the same) gets the fovea template,
    and with it training label masks."""
    tokenizer = tiny_tokenizer()
    assert recognise(JinjaTemplate(chat_template(name), tokenizer)) == name


def test_a_system_free_template_is_not_taken_for_qwen_1_5():
    assert recognise(JinjaTemplate(NO_SYSTEM_CHATML, tiny_tokenizer())) is None


def test_string_content_templates_get_strings_and_the_turn_end_stops():
    template = JinjaTemplate(STRING_CONTENT, tiny_tokenizer())
    assert not template.takes_parts and template.stop == ("<|im_end|>",)
    text = template.render([{"role": "user", "content": "<image>\nhi"}], True).text
    assert text == "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n"
    parts = JinjaTemplate(NO_SYSTEM_CHATML, tiny_tokenizer())
    assert parts.takes_parts and parts.prompt("<image>\nhi") == text


def test_a_fovea_checkpoint_keeps_the_template(checkpoint, tmp_path):
    model = fovea.load(checkpoint)
    again = fovea.load(model.save_pretrained(tmp_path / "fovea"))
    assert again.config.chat_template == NO_SYSTEM_CHATML
    messages = [{"role": "user", "content": QUESTION}]
    assert torch.equal(
        again.prepare_chat(messages, [IMAGE])["input_ids"], model.prepare_chat(messages, [IMAGE])["input_ids"]
    )
