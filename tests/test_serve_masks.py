"""`fovea serve` with a segmenting model: ``fovea_masks: true`` returns a COCO RLE mask per [SEG] of
the answer, equal to `model.segment`'s; plain OpenAI clients (and streams) never see the field; a
request for masks that cannot be met is a 400 naming ``fovea_masks``, and the server serves on."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.imaging.masks import rle_decode
from fovea.infer.requests import Limits
from fovea.infer.server import ServeConfig, create_app
from fovea.model.running_batch import run_to_end
from fovea.seg.head import sam_inputs
from fovea.seg.model import add_segmentation, answer_masks
from fovea.tiny import tiny_sam, tiny_vlm

from serve_process import serve_in_thread

KEY = "k"


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image(seed: int, size=(60, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from transformers import SamModel

    model = tiny_vlm(mode="square", grid_pinpoints=None)
    add_segmentation(model, SamModel.from_pretrained(tiny_sam(tmp_path_factory.mktemp("sam") / "sam")))
    model.eval()
    app = create_app(model, ServeConfig(name="seg", api_key=KEY, limits=Limits(max_tokens=16)))
    with serve_in_thread(app) as port:
        yield f"http://127.0.0.1:{port}", model


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "Authorization": f"Bearer {KEY}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _body(images, seg: int = 2, **extra) -> dict:
    """A request whose prompt holds `seg` [SEG]s: masks are made for every [SEG] of prompt + answer
    in text order (as the original's forward finds them), so a random tiny model's reply has some."""
    content = [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in images]
    content.append({"type": "text", "text": "Segment the bright part." + " [SEG]" * seg})
    return {"model": "seg", "messages": [{"role": "user", "content": content}], "max_tokens": 3,
            "temperature": 0, **extra}  # fmt: skip


@pytest.mark.parametrize("count", [1, 2])
def test_masks_are_rle_equal_to_the_python_api(served, count):
    url, model = served
    images = [_image(i, (60 + 20 * i, 40)) for i in range(count)]
    status, reply = _post(url, _body(images, fovea_masks=True))
    assert status == 200, reply
    message = reply["choices"][0]["message"]
    tags = "<image>\n" * count + "Segment the bright part. [SEG] [SEG]"
    prepared = model.prepare_chat([{"role": "user", "content": tags}], images)
    result = run_to_end(model, [prepared], [model.sequence(prepared, model.sampling(3), "default")])[0]
    assert message["content"] == result.text.strip()
    stops = set(model.stop_token_ids("default"))
    answer = [t for t in result.tokens if t not in stops]
    expected = answer_masks(model, prepared, answer, sam_inputs(model.config.seg.processor(), images))
    assert len(message["fovea_masks"]) == sum(len(masks) for masks in expected) >= 2
    for entry in message["fovea_masks"]:
        j, i = entry["seg"], entry["image"]
        assert i == j % count and entry["size"] == [images[i].height, images[i].width]
        assert np.array_equal(rle_decode(entry), (expected[i][j // count] > 0).numpy())


def test_plain_clients_and_streams_never_see_the_field(served):
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    body = _body([_image(1)])
    reply = client.chat.completions.create(
        model="seg", messages=body["messages"], max_tokens=3, temperature=0
    )
    assert "fovea_masks" not in (reply.choices[0].message.model_extra or {})
    asked = client.chat.completions.create(
        model="seg", messages=body["messages"], max_tokens=3, temperature=0, extra_body={"fovea_masks": True}
    )
    assert asked.choices[0].message.content == reply.choices[0].message.content
    assert len(asked.choices[0].message.model_extra["fovea_masks"]) == 2


@pytest.mark.parametrize(
    "extra, images, match",
    [
        ({"fovea_masks": 1}, 1, "fovea_masks must be true or false, got 1"),
        ({"fovea_masks": True, "stream": True}, 1, "set stream to false"),
        ({"fovea_masks": True}, 0, "needs images to draw on"),
    ],
)
def test_masks_that_cannot_be_given_are_a_400_and_the_server_serves_on(served, extra, images, match):
    url, _ = served
    status, reply = _post(url, _body([_image(2)] * images, **extra))
    assert status == 400 and reply["error"]["param"] == "fovea_masks"
    assert match in reply["error"]["message"]
    assert _post(url, _body([_image(3)], fovea_masks=True))[0] == 200


def test_a_model_that_does_not_segment_refuses_masks(tmp_path):
    model = tiny_vlm(mode="square", grid_pinpoints=None).eval()
    app = create_app(model, ServeConfig(name="seg", api_key=KEY, limits=Limits(max_tokens=16)))
    with serve_in_thread(app) as port:
        status, reply = _post(f"http://127.0.0.1:{port}", _body([_image(4)], fovea_masks=True))
    assert status == 400 and "this model does not segment" in reply["error"]["message"]


def test_a_failing_mask_pass_fails_its_request_alone(served, monkeypatch):
    url, model = served
    calls = {"n": 0}
    original = model.seg.image_embeddings

    def broken(pixels):
        calls["n"] += 1
        raise torch.cuda.OutOfMemoryError("out of memory in the mask pass")

    monkeypatch.setattr(model.seg, "image_embeddings", broken)
    status, reply = _post(url, _body([_image(6)], fovea_masks=True))
    assert status == 500 and calls["n"] == 1
    monkeypatch.setattr(model.seg, "image_embeddings", original)
    assert _post(url, _body([_image(6)]))[0] == 200
    assert _post(url, _body([_image(6)], fovea_masks=True))[0] == 200
