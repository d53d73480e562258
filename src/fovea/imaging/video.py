"""Videos -> frames, by LLaVA-NeXT's sampling rule (``process_video_with_decord`` in its utils.py,
identical in MLCD's train.py), decoded with PyAV (the ``[video]`` extra).

The rule: take every ``round(native_fps / fps)``-th frame (1 per second by default); if that gives
more than `max_frames` frames, or `force_sample` is set, take `max_frames` frames evenly spaced over
the whole video instead (``np.linspace(0, total - 1, max_frames)``). The optional time
instruction is the original's sentence, word for word, times included as it computes them
(``index / step`` when stepping, ``index / native_fps`` when spread evenly).

A file that is not a video, is truncated or has no video stream is one `VideoError` naming it.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FoveaError

VideoSource = str | Path | bytes


class VideoError(FoveaError):
    """A video could not be read (names the file)."""


@dataclass(kw_only=True)
class VideoSampling:
    """Which frames of a video the model sees (LLaVA-NeXT's data arguments)."""

    fps: float = 1.0
    """``video_fps``: frames taken per second of video."""
    max_frames: int = 32
    """``frames_upbound`` (MLCD-Embodied's recipe: 32); 0: no bound."""
    force_sample: bool = False
    """Always spread `max_frames` frames evenly over the video."""
    time_instruction: bool = False
    """``add_time_instruction``: tell the model the video's length and each frame's time."""

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps: expected a positive number, got {self.fps}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames: expected 0 or more, got {self.max_frames}")


@dataclass
class Frames:
    """The frames taken from a video, with what the time instruction needs."""

    images: list[Image.Image]
    times: list[float]
    duration: float

    def instruction(self) -> str:
        """The original's time instruction for these frames."""
        times = ",".join(f"{t:.2f}s" for t in self.times)
        return (
            f"The video lasts for {self.duration:.2f} seconds, and {len(self.images)} frames are uniformly "
            f"sampled from it. These frames are located at {times}.Please answer the following questions "
            "related to this video."
        )


def chosen_frames(total: int, native_fps: float, sampling: VideoSampling) -> tuple[list[int], list[float]]:
    """(frame indices, their times) the rule picks from a video of `total` frames."""
    step = max(1, round(native_fps / sampling.fps))
    indices = list(range(0, total, step))
    times = [i / step for i in indices]
    if sampling.max_frames > 0 and (len(indices) > sampling.max_frames or sampling.force_sample):
        indices = np.linspace(0, total - 1, sampling.max_frames, dtype=int).tolist()
        times = [i / native_fps for i in indices]
    return indices, times


@dataclass
class Probe:
    """What a video holds and which of its frames the rule picks, read without decoding a frame."""

    indices: list[int]
    times: list[float]
    duration: float
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Pixels of the chosen frames, decoded."""
        return len(self.indices) * self.width * self.height


def probe_video(source: VideoSource, sampling: VideoSampling) -> Probe:
    """The chosen frames of a video file or its bytes, and their size, before any is decoded."""
    with _opened(source) as (container, stream, name):
        return _probe(container, stream, sampling, name)


def load_video(source: VideoSource, sampling: VideoSampling) -> Frames:
    """Decode the frames `sampling` picks from a video file or its bytes."""
    with _opened(source) as (container, stream, name):
        probe = _probe(container, stream, sampling, name)
        container.seek(0)
        images = _decode(container, stream, set(probe.indices))
    if len(images) < len(set(probe.indices)):
        raise VideoError(
            f"{name}: truncated video ({len(images)} of {len(set(probe.indices))} chosen frames decoded)"
        )
    return Frames([images[i] for i in probe.indices], probe.times, probe.duration)


def _probe(container, stream, sampling: VideoSampling, name: str) -> Probe:
    native_fps = float(stream.average_rate or stream.guessed_rate or 0) or 1.0
    total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if total == 0:
        raise VideoError(f"{name}: the video has no frames")
    indices, times = chosen_frames(total, native_fps, sampling)
    return Probe(indices, times, total / native_fps, stream.codec_context.width, stream.codec_context.height)


@contextmanager
def _opened(source: VideoSource):
    """(container, its first video stream, the source's name); PyAV's errors become VideoError."""
    import av  # the [video] extra; imported here so image-only use never needs it

    name = str(source) if not isinstance(source, (bytes, bytearray)) else f"<{len(source)} bytes of video>"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise VideoError(f"{name}: no such video file")
    try:
        with av.open(
            io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
        ) as container:
            if not container.streams.video:
                raise VideoError(f"{name}: no video stream")
            yield container, container.streams.video[0], name
    except av.error.FFmpegError as err:
        raise VideoError(
            f"{name}: cannot decode video ({type(err).__name__}: {err.strerror or err})"
        ) from None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_frames_folder(folder: Path, sampling: VideoSampling) -> Frames:
    """A video stored as a folder of frame images (LLaVA-NeXT's frame datasets), in name order:
    all of them, or `max_frames` spread evenly when there are more (or `force_sample`)."""
    from .io import load_image

    names = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise VideoError(f"{folder}: a folder of frames with no images in it")
    indices = list(range(len(names)))
    if sampling.max_frames > 0 and (len(names) > sampling.max_frames or sampling.force_sample):
        indices = np.linspace(0, len(names) - 1, sampling.max_frames, dtype=int).tolist()
    return Frames([load_image(names[i]) for i in indices], [], 0.0)


def _decode(container, stream, wanted: set[int]) -> dict[int, Image.Image]:
    """The wanted frames (by decoding order) as RGB images; decoding stops after the last one."""
    found, last = {}, max(wanted, default=-1)
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            found[index] = frame.to_image().convert("RGB")
        if index >= last:
            break
    return found
