"""One decoder: the same seed and temperature give the same sampled text on every path.

`model.generate`, `model.chat`, `fovea chat` (the chat session), `fovea serve` (the official openai
client, `seed`) and `fovea eval --temperature --seed` all decode through `fovea.model.decoding`;
here each answers the same question about the same image, sampled at temperature 0.8, for 3 seeds
and 2 images, and every path must give the very same text. The sampler's own rules (top-k, top-p,
the most likely token always kept) are checked against the distribution they should leave.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import fovea
from fovea.cli import main
from fovea.infer.server import ServeConfig, create_app
from fovea.model.decoding import Sampling, choose
from fovea.tiny import tiny_vlm

SEEDS, TEMPERATURE, TOKENS, QUESTION = (1, 2, 3), 0.8, 12, "Describe the picture."


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("decoder")
    directory = tiny_vlm(seed=3).save_pretrained(root / "model")
    model = fovea.load(directory)
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 70), (64, 48)]):
        paths.append(root / f"image{i}.png")
        Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(paths[-1])
    app = create_app(model, ServeConfig(name="tiny"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield model, directory, paths, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(timeout=30)


def _served(url: str, path, seed: int) -> str:
    import base64

    from openai import OpenAI

    data = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": data}}, {"type": "text", "text": QUESTION}]
    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": content}],
        max_tokens=TOKENS,
        temperature=TEMPERATURE,
        top_p=1.0,
        seed=seed,
    )
    return reply.choices[0].message.content


def _cli_chat(directory, path, seed: int, capsys) -> str:
    args = ["chat", "--model", directory, "--image", path, "--prompt", QUESTION, "--seed", seed]
    args += ["--temperature", TEMPERATURE, "--top-p", 1.0, "--max-new-tokens", TOKENS]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out.strip()


def _evaluated(tmp_path, directory, paths, seed: int) -> list[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rows = [
        {"id": str(i), "image": str(p), "question": QUESTION, "answer": "x", "type": "colour"}
        for i, p in enumerate(paths)
    ]
    (data / "qa.json").write_text(json.dumps(rows))
    task = tmp_path / "describe.yaml"
    task.write_text(
        f"name: describe\ndata: {{local: qa.json}}\nid: id\nmax_new_tokens: {TOKENS}\nscorer: synthetic\n"
    )
    out = tmp_path / f"run{seed}"
    args = ["eval", "--model", directory, "--tasks", task, "--data-root", data, "--out", out, "--quiet"]
    args += ["--temperature", TEMPERATURE, "--seed", seed]
    assert main([str(a) for a in args]) == 0
    records = [json.loads(line) for line in (out / "describe" / "samples.jsonl").read_text().splitlines()]
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["sampling"]["seed"] == seed and not run["tasks"]["describe"]["greedy"]
    assert len(records) == len(paths)
    return [r["prediction"] for r in sorted(records, key=lambda r: r["id"])]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_path_gives_the_same_sampled_text(setup, tmp_path, capsys, seed):
    model, directory, paths, url = setup
    evaluated = _evaluated(tmp_path, directory, paths, seed)
    for path, from_eval in zip(paths, evaluated):
        image = Image.open(path)
        generated = model.generate(
            QUESTION,
            images=[image],
            do_sample=True,
            temperature=TEMPERATURE,
            seed=seed,
            max_new_tokens=TOKENS,
        )
        message = [{"role": "user", "content": QUESTION}]
        chatted = model.chat(
            message, [image], do_sample=True, temperature=TEMPERATURE, seed=seed, max_new_tokens=TOKENS
        )
        streamed = "".join(
            model.chat(
                message,
                [image],
                stream=True,
                do_sample=True,
                temperature=TEMPERATURE,
                seed=seed,
                max_new_tokens=TOKENS,
            )
        )
        answers = {
            "generate": generated.strip(),
            "chat": chatted,
            "chat stream": streamed.strip(),
            "fovea chat": _cli_chat(directory, path, seed, capsys),
            "fovea serve": _served(url, path, seed),
            "fovea eval": from_eval.strip(),
        }
        assert len(set(answers.values())) == 1, answers


def test_seeds_give_different_answers_and_the_same_seed_the_same(setup):
    model, _, paths, _ = setup
    image = Image.open(paths[0])
    answers = [
        model.generate(
            QUESTION, images=[image], do_sample=True, temperature=1.5, seed=s, max_new_tokens=TOKENS
        )
        for s in (1, 1, 2, 3)
    ]
    assert answers[0] == answers[1] and len(set(answers[1:])) == 3
    assert model.generate(QUESTION, images=[image], max_new_tokens=TOKENS) not in answers  # it sampled


def test_top_k_and_top_p_keep_only_what_they_should():
    logits = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2])
    draws = lambda sampling: {  # noqa: E731
        choose(logits, sampling, torch.Generator().manual_seed(s)) for s in range(300)
    }
    assert draws(Sampling(temperature=1.0)) == {0, 1, 2, 3, 4}
    assert draws(Sampling(temperature=1.0, top_k=2)) == {0, 1}
    probs = torch.softmax(logits, -1)
    assert draws(Sampling(temperature=1.0, top_p=float(probs[0] + probs[1]) - 1e-3)) == {0, 1}
    assert draws(Sampling(temperature=1.0, top_p=1e-6)) == {0}  # the most likely token always stays
    assert choose(logits, Sampling(), None) == 0  # temperature 0: argmax


def test_stop_strings_end_the_answer_before_them(setup):
    model, _, paths, _ = setup
    image = Image.open(paths[0])
    full = model.generate(QUESTION, images=[image], max_new_tokens=TOKENS)
    assert len(full) >= 4, full  # the tiny model's greedy answer is long enough to cut
    stop = full[2:4]
    cut = model.generate(QUESTION, images=[image], max_new_tokens=TOKENS, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_logprobs_are_the_chosen_tokens_log_probabilities(setup):
    """`Sampling(logprobs=True)`: each chosen token's log-probability, as a teacher-forced forward
    over the prompt and the answer gives it."""
    from fovea.model.running_batch import run_to_end

    model, _, paths, _ = setup
    prepared = model.prepare(QUESTION, images=[Image.open(paths[0])], template="default")
    sequence = model.sequence(prepared, Sampling(max_new_tokens=6, logprobs=True, ignore_eos=True), "default")
    [result] = run_to_end(model, [prepared], [sequence])
    tokens = torch.tensor([result.tokens])
    ids = torch.cat([prepared.input_ids, tokens], 1)
    with torch.no_grad():
        logits = model(**prepared.replace(input_ids=ids, attention_mask=torch.ones_like(ids))).logits
    expected = torch.log_softmax(logits[0, -tokens.shape[1] - 1 : -1].float(), -1).gather(1, tokens.T)[:, 0]
    assert len(result.logprobs) == 6
    torch.testing.assert_close(torch.tensor(result.logprobs), expected, rtol=0, atol=1e-4)
