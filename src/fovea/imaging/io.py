"""Safe image loading: paths, bytes or PIL images -> RGB PIL images, or a one-line ImageError.

What "safe" means here:
* the pixel count is checked from the header *before* decoding (decompression bombs);
* truncated files are rejected (PIL's LOAD_TRUNCATED_IMAGES is never turned on);
* EXIF orientation is applied, so a phone photo is seen the way its owner sees it;
* every mode (L, LA, P, RGBA, CMYK, I;16, ...) becomes RGB by one of two documented rules:
  - ``alpha="drop"``: plain ``PIL.Image.convert("RGB")``, as the LLaVA-NeXT training pipelines do;
  - ``alpha="white"``: transparency composited onto white, as transformers' image processors do.
"""

from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError

ImageSource = str | Path | bytes | Image.Image
AlphaRule = Literal["drop", "white"]

#: Default pixel limit (width * height) of one image: 100 MP is larger than any camera frame or
#: scanned page a VLM sees, and small enough that a hostile PNG cannot take the machine's memory.
DEFAULT_MAX_PIXELS = 100_000_000
_ORIENTATION = 0x0112  # EXIF tag


def describe(source: ImageSource) -> str:
    """Human name of an image source, for error messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return getattr(source, "filename", "") or "<PIL image>"


def open_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`source` opened and checked without decoding: its size and format are known (from the
    header), its pixels not yet read, so what it will cost is known before paying it. `load_image`
    decodes it. Raises ImageError naming it."""
    name = describe(source)
    image = source if isinstance(source, Image.Image) else _open(source, name)
    _check_pixels(image, name, max_pixels)
    return image


def load_image(
    source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, alpha: AlphaRule = "drop"
) -> Image.Image:
    """Open, check and decode `source` into an RGB PIL image; raise ImageError naming it."""
    name = describe(source)
    image = open_image(source, max_pixels=max_pixels)
    try:
        with _strict_decoding():
            image.load()
        if image.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, bad EXIF, broken codec
        raise ImageError(f"{name}: cannot decode image ({_first_line(err)})") from None
    return to_rgb(image, alpha)


_STRICT = threading.Lock()


@contextmanager
def _strict_decoding():
    """Truncated data is an error here even when another library in the process (lmms-eval's task
    module, for one) has set PIL's global ``LOAD_TRUNCATED_IMAGES``, which would pad it silently."""
    with _STRICT:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def to_rgb(image: Image.Image, alpha: AlphaRule = "drop") -> Image.Image:
    """Convert any PIL mode to RGB by the chosen transparency rule (see module docstring)."""
    if alpha == "white" and ("A" in image.getbands() or "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{name}: empty data, not an image")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: empty file, not an image")
        stream = path.open("rb")
    try:
        with warnings.catch_warnings():
            # fovea applies its own pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: refused, too many pixels ({_first_line(err)})") from None
    except OSError as err:
        raise ImageError(f"{name}: cannot read image ({_first_line(err)})") from None


def _check_pixels(image: Image.Image, name: str, max_pixels: int | None) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: refused, {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
