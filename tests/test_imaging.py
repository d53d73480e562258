"""Image loading safety, mode conversion, AnyRes geometry and tiles against transformers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution as hf_select
from transformers.image_transforms import convert_to_rgb as hf_convert_to_rgb
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from fovea.errors import ImageError
from fovea.imaging import anyres
from fovea.imaging.io import load_image
from fovea.imaging.processor import CLIP_MEAN, CLIP_STD, ImageConfig, ImageProcessor


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


# -- bad input ---------------------------------------------------------------------------------


def test_bad_files_give_one_line_naming_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_png_bytes(_noise(64, 64))[:300])
    for path, words in [
        (empty, "empty"),
        (text, "not a recognised image"),
        (truncated, "cannot decode"),
        (tmp_path / "missing.png", "no such image"),
    ]:
        with pytest.raises(ImageError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message


def test_bytes_and_pixel_limit():
    with pytest.raises(ImageError, match="empty data"):
        load_image(b"")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(_png_bytes(_noise(100, 100)), max_pixels=9_999)
    assert load_image(_png_bytes(_noise(100, 100)), max_pixels=10_000).size == (100, 100)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_bytes(Image.new("L", (12_000, 10_000)))  # 120 MP of zeros compress to ~100 kB
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(bomb)


def test_exif_orientation_is_applied():
    image = _noise(20, 40)  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (20, 40)


# -- modes -------------------------------------------------------------------------------------


def _modes() -> dict[str, Image.Image]:
    rgba = Image.fromarray((np.random.default_rng(1).random((9, 11, 4)) * 255).astype("uint8"), "RGBA")
    i16 = Image.fromarray((np.random.default_rng(2).random((9, 11)) * 1000).astype("uint16"))
    return {
        "L": rgba.convert("L"),
        "LA": rgba.convert("LA"),
        "P": rgba.convert("RGB").convert("P"),
        "RGBA": rgba,
        "CMYK": rgba.convert("RGB").convert("CMYK"),
        "I;16": i16,
        "RGB": rgba.convert("RGB"),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_modes_convert_like_the_reference_pipelines(mode):
    image = _modes()[mode]
    assert np.array_equal(np.asarray(load_image(image, alpha="drop")), np.asarray(image.convert("RGB")))
    assert np.array_equal(
        np.asarray(load_image(image, alpha="white")), hf_convert_to_rgb(image, return_numpy=True)
    )


# -- AnyRes geometry ---------------------------------------------------------------------------


def test_select_best_resolution_matches_transformers():
    rng = np.random.default_rng(0)
    pinpoints = anyres.parse_pinpoints("(1x1),...,(6x6)", 336)
    for _ in range(500):
        size = (int(rng.integers(1, 5000)), int(rng.integers(1, 5000)))
        assert anyres.select_best_resolution(size, pinpoints) == tuple(hf_select(size, pinpoints))


def test_range_pinpoints_read_as_llava_next():
    # LLaVA-NeXT reads "(AxB)" as A tiles wide, B high: (2x1) is 2*336 wide and 336 high.
    assert anyres.parse_pinpoints("(1x1),...,(2x1)", 336) == [(336, 336), (336, 672)]
    assert len(anyres.parse_pinpoints("(1x1),...,(6x6)", 384)) == 36


@pytest.mark.parametrize("spec", [[[100, 336]], [[336]], "nonsense", []])
def test_bad_pinpoints_are_config_errors(spec):
    with pytest.raises(ValueError):
        anyres.parse_pinpoints(spec, 336)


# -- tiles equal transformers' processors ------------------------------------------------------


@pytest.mark.parametrize("size", [(20, 300), (300, 20), (1, 1), (57, 57), (333, 500), (1000, 700)])
def test_anyres_tiles_match_llava_next_processor(size):
    pinpoints = [[56, 112], [112, 168], [168, 56], [56, 56]]
    image = _noise(*size, seed=size[0])
    ours = ImageProcessor(ImageConfig(size=56, mode="anyres", grid_pinpoints=pinpoints))([image])
    ref = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints
    )(images=[image], return_tensors="pt")
    n = ours.pixels.shape[0]
    assert torch.all(ref["pixel_values"][0, n:] == 0)  # the rest is transformers' batch padding
    assert (ours.pixels - ref["pixel_values"][0, :n]).abs().max() < 1e-5
    assert ours.layouts[0].size == tuple(ref["image_sizes"][0].tolist())


@pytest.mark.parametrize("size", [(20, 300), (300, 20), (1, 1), (400, 400)])
def test_square_views_match_clip_and_siglip_processors(size):
    image = _noise(*size, seed=3)
    clip = ImageProcessor(ImageConfig(size=56))([image]).pixels
    ref = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})(
        images=[image], return_tensors="pt"
    )["pixel_values"]
    assert (clip - ref).abs().max() < 1e-5
    sig = ImageProcessor(ImageConfig(size=56, resize="squash", mean=[0.5] * 3, std=[0.5] * 3))([image]).pixels
    ref = SiglipImageProcessorPil(size={"height": 56, "width": 56})(images=[image], return_tensors="pt")
    assert (sig - ref["pixel_values"]).abs().max() < 1e-5


def test_pad_mode_fills_with_the_mean_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    pixels = ImageProcessor(ImageConfig(size=28, mode="pad"))([image]).pixels[0]
    corner = pixels[:, 0, 0]  # top rows are padding
    expected = torch.tensor([(int(m * 255) / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(corner, expected, atol=1e-6)


def test_truncated_images_fail_even_when_pil_is_told_to_allow_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval sets it on import
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_png_bytes(_noise(64, 64))[:300])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(truncated)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was


def test_many_images_are_frames_only_as_one_sample():
    """`processor(images)` is a batch (feature extraction, pretraining): never frames. A sample
    (`processor.sample`) of more than frames_above images runs each as a padded one-frame video."""
    from fovea.imaging.processor import ImageConfig, ImageProcessor

    rng = np.random.default_rng(1)
    images = [Image.fromarray((rng.random((20, 30, 3)) * 255).astype("uint8")) for _ in range(9)]
    processor = ImageProcessor(ImageConfig(size=14, mode="square", frames_above=8))
    assert [layout.frames for layout in processor(images).layouts] == [0] * 9
    assert [(lay.frames, lay.mode) for lay in processor.sample(images).layouts] == [(1, "pad")] * 9
    assert [layout.frames for layout in processor.sample(images[:8]).layouts] == [0] * 8
    never = ImageProcessor(ImageConfig(size=14, mode="square", frames_above=None))
    assert [layout.frames for layout in never.sample(images).layouts] == [0] * 9
