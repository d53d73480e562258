"""Images and videos in one prompt: where each goes, in the order of their tags.

A prompt marks images with the image tag (``<image>``) and videos with ``<video>``. Each video
becomes one visual item (its frames, pooled when packed) that takes one image placeholder, as in
LLaVA-NeXT, where a video's features replace a single ``<image>`` token. So the tags are turned
into image tags here, and the items listed in tag order for the image processor. Videos given
without tags go first, before the text (as untagged images do, LLaVA style).

A video is a list of frames (images or paths), a folder of frame images, or a file path or bytes,
decoded with the model's
`VideoSampling` (imaging/video.py); then, with ``time_instruction``, the original's sentence about
the frames' times follows its tag.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..imaging.video import Frames, VideoSampling, load_frames_folder, load_video

VIDEO_TAG = "<video>"


def video_frames(video, sampling: VideoSampling) -> Frames:
    """A video argument as frames: `Frames` and a list of frames as given, a file or bytes decoded."""
    if isinstance(video, Frames):
        return video
    if isinstance(video, (str, Path)) and Path(video).is_dir():
        return load_frames_folder(Path(video), sampling)
    if isinstance(video, (str, Path, bytes, bytearray)):
        return load_video(video, sampling)
    frames = list(video)
    if not frames:
        raise ConfigError("a video with no frames")
    return Frames(frames, [], 0.0)


def arrange(
    contents: list[str], images: list, videos: list, image_tag: str, sampling: VideoSampling, first: int = 0
) -> tuple[list[str], list]:
    """(the contents with every video tag made an image tag, every visual item in tag order: an
    image source, or a video's list of frames). Without videos, nothing changes (the caller tags
    untagged images); with them, untagged images and then untagged videos are tagged at the start
    of ``contents[first]``."""
    if not videos:
        return contents, list(images or ())
    images, videos, contents = list(images or ()), list(videos), list(contents)
    prefix = ""
    for tag, given in ((image_tag, images), (VIDEO_TAG, videos)):
        found = sum(text.count(tag) for text in contents)
        if found == 0 and given:
            prefix += f"{tag}\n" * len(given)
        elif found != len(given):
            noun = "videos" if tag == VIDEO_TAG else "images"
            raise ConfigError(f"the prompt has {found} {tag} tags but {len(given)} {noun} were given")
    contents[first] = prefix + contents[first]
    frames = iter([video_frames(video, sampling) for video in videos])
    stills = iter(images)
    pattern = re.compile(f"({re.escape(image_tag)}|{re.escape(VIDEO_TAG)})")
    items, out = [], []
    for text in contents:
        pieces = pattern.split(text)
        for i in range(1, len(pieces), 2):
            if pieces[i] == VIDEO_TAG:
                video = next(frames)
                items.append(video.images)
                note = f"\n{video.instruction()}" if sampling.time_instruction and video.times else ""
                pieces[i] = image_tag + note
            else:
                items.append(next(stills))
        out.append("".join(pieces))
    return out, items


def arrange_messages(
    messages: list[dict], images: list, videos: list, image_tag: str, sampling: VideoSampling
) -> tuple[list[dict], list]:
    """`arrange` over a conversation: untagged images and videos go to the first user turn."""
    if not videos:
        return messages, images
    first = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
    contents, items = arrange([m["content"] for m in messages], images, videos, image_tag, sampling, first)
    return [{**m, "content": c} for m, c in zip(messages, contents)], items
