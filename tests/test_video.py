"""Video input: PyAV decoding by LLaVA-NeXT's sampling rule, `<video>` tags, `videos=` in prepare,
generate and chat; a bad video is one error naming it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.errors import ConfigError
from fovea.imaging.video import VideoError, VideoSampling, chosen_frames, load_video
from fovea.tiny import tiny_vlm


def make_video(frames: int = 30, fps: int = 10, size=(64, 48)) -> bytes:
    """An MPEG-4 video whose frame i is grey level 8*i (so a decoded frame says which it was)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), i * 8 % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("total", "native", "sampling", "indices", "times"),
    [
        (30, 10.0, VideoSampling(), [0, 10, 20], [0.0, 1.0, 2.0]),  # 1 fps: every 10th frame
        (
            30,
            10.0,
            VideoSampling(fps=2),
            [0, 5, 10, 15, 20, 25],
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        ),  # index/step
        (30, 10.0, VideoSampling(max_frames=2), [0, 29], [0.0, 2.9]),  # over the bound: spread evenly
        (30, 10.0, VideoSampling(max_frames=4, force_sample=True), [0, 9, 19, 29], [0.0, 0.9, 1.9, 2.9]),
        (5, 30.0, VideoSampling(fps=60), [0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0, 4.0]),  # step at least 1
    ],
)
def test_the_sampling_rule_is_llava_next_s(total, native, sampling, indices, times):
    got_indices, got_times = chosen_frames(total, native, sampling)
    assert got_indices == indices and got_times == pytest.approx(times)


def test_decoded_frames_are_the_chosen_ones_with_the_original_time_instruction(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_video())
    frames = load_video(path, VideoSampling(max_frames=4, force_sample=True))
    greys = [frame.getpixel((30, 20))[0] for frame in frames.images]
    assert [round(g / 8) for g in greys] == [0, 9, 19, 29]  # lossy codec: within a grey step
    assert frames.duration == pytest.approx(3.0) and frames.images[0].size == (64, 48)
    assert frames.instruction() == (
        "The video lasts for 3.00 seconds, and 4 frames are uniformly sampled from it. These frames are "
        "located at 0.00s,0.90s,1.90s,2.90s.Please answer the following questions related to this video."
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"not a video at all", "<18 bytes of video>: cannot decode video"),
        ("missing.mp4", "missing.mp4: no such video file"),
        ("half", "cannot decode video"),
    ],
)
def test_a_bad_video_is_one_error_naming_it(tmp_path, source, message):
    if source == "half":
        data = make_video()
        source = tmp_path / "half.mp4"
        source.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=message) as err:
        load_video(source, VideoSampling())
    assert "\n" not in str(err.value) and (
        not isinstance(source, type(tmp_path)) or str(source) in str(err.value)
    )


def _frames(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(count)
    return [Image.fromarray((rng.random((40, 60, 3)) * 255).astype("uint8")) for _ in range(count)]


def test_a_video_is_one_pooled_item_in_tag_order():
    model = tiny_vlm()
    still, frames = _frames(1)[0], _frames(5)
    inputs = model.prepare("<image>\nThen <video>\nWhat moved?", images=[still], videos=[frames])
    layouts = inputs["image_layouts"]
    assert [layout.frames for layout in layouts] == [0, 5] and layouts[1].mode == "square"
    with torch.no_grad():
        packed = model.encode_images(inputs.images)
    assert [t.shape[0] for t in packed] == [model.num_image_tokens(layout) for layout in layouts]
    # the other order of tags: the video's tokens come first
    swapped = model.prepare("<video>\nThen <image>\nWhat moved?", images=[still], videos=[frames])
    assert [layout.frames for layout in swapped["image_layouts"]] == [5, 0]


def test_videos_in_generate_and_chat_agree_and_a_file_decodes(tmp_path):
    model = tiny_vlm()
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_video())
    decoded = load_video(path, model.config.video).images
    by_file = model.generate("<video>\nWhat happens?", videos=[path], max_new_tokens=6)
    by_frames = model.generate("<video>\nWhat happens?", videos=[decoded], max_new_tokens=6)
    chat = model.chat(
        [{"role": "user", "content": "<video>\nWhat happens?"}], videos=[path], max_new_tokens=6
    )
    assert by_file == by_frames == chat
    untagged = model.prepare("What happens?", videos=[decoded], template="default")
    assert untagged["image_layouts"][0].frames == len(decoded)


def test_the_time_instruction_follows_the_video_tag(tmp_path):
    model = tiny_vlm()
    model.config.video = VideoSampling(time_instruction=True)
    text = model.prepare("<video>\nWhy?", videos=[make_video()], template=None)["questions"][0]
    assert text.startswith("<image>\nThe video lasts for 3.00 seconds, and 3 frames are uniformly sampled")
    assert text.endswith("related to this video.\nWhy?")


def test_video_tags_and_videos_must_agree():
    model = tiny_vlm()
    with pytest.raises(ConfigError, match="the prompt has 2 <video> tags but 1 videos were given"):
        model.prepare("<video><video> hm", videos=[_frames(2)])
    with pytest.raises(ConfigError, match="a video with no frames"):
        model.prepare("<video> hm", videos=[[]])


def test_training_records_with_videos_as_llava_next_writes_them(tmp_path):
    """A `video` record in LLaVA-NeXT's form (its one <image> tag is the video), one with a <video>
    tag beside an image, a folder of frames, and a broken video: the first three become one pooled
    item each in tag order, the last is skipped with its file and record named."""
    import json

    from fovea.data.dataset import Skipped, SupervisedDataset
    from fovea.data.sources import RecordSource

    (tmp_path / "clip.mp4").write_bytes(make_video())
    (tmp_path / "broken.mp4").write_bytes(make_video()[:700])
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(_frames(3)):
        frame.save(tmp_path / "frames" / f"{i:03d}.png")
    _frames(1)[0].save(tmp_path / "still.png")
    turns = lambda q: [{"from": "human", "value": q}, {"from": "gpt", "value": "A dog runs."}]  # noqa: E731
    records = [
        {"id": "next", "video": "clip.mp4", "conversations": turns("<image>\nWhat happens?")},
        {
            "id": "mixed",
            "video": "clip.mp4",
            "image": "still.png",
            "conversations": turns("<image> then <video>?"),
        },
        {"id": "folder", "video": "frames", "conversations": turns("<video>\nWhat happens?")},
        {"id": "bad", "video": "broken.mp4", "conversations": turns("<video>\nWhat happens?")},
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    model = tiny_vlm()
    dataset = SupervisedDataset(RecordSource(data), model, template="qwen_1_5")
    frames = [[layout.frames for layout in dataset[i]["image_layouts"]] for i in range(3)]
    assert frames == [[3], [0, 3], [3]]
    bad = dataset[3]
    assert isinstance(bad, Skipped) and "broken.mp4" in bad.reason and "record bad" in bad.reason
