"""Image decoding and checks, the same for the gateway (validation) and the worker (input).

Only Pillow is used here, so the gateway stays free of torch.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from shared.settings import Settings

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
_MIME_FORMAT = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.ASCII)
_FIELD = "image"


def decode_image_field(value: str, settings: Settings) -> bytes:
    """Turn the ``image`` field into checked image bytes (base64, raw or data URI)."""
    text = value.strip()
    if text.lower().startswith(("http://", "https://")):
        raise InvalidInput(_FIELD, "image URLs are not accepted; send the image as base64")
    declared: str | None = None
    match = _DATA_URI.match(text)
    if match:
        mime = (match.group("mime") or "").lower()
        if ";base64" not in match.group("params").lower():
            raise InvalidInput(_FIELD, "data URI must be base64-encoded")
        if mime not in _MIME_FORMAT:
            raise UnsupportedMediaType(_FIELD, f"data URI type {mime or 'missing'!r}; allowed: {_allowed()}")
        declared = _MIME_FORMAT[mime]
        text = text[match.end() :]
    max_b64 = (settings.max_image_bytes + 2) // 3 * 4 + 4
    if len(text) > max_b64:
        raise PayloadTooLarge(_FIELD, f"decoded image is over {settings.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(_FIELD, "is not valid base64") from exc
    if not data:
        raise InvalidInput(_FIELD, "is empty")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(_FIELD, f"decoded image is over {settings.max_image_bytes} bytes")
    image = open_image(data, settings)
    if declared is not None and image.format != declared:
        raise InvalidInput(_FIELD, f"data URI says {declared} but the image is {image.format}")
    return data


def open_image(data: bytes, settings: Settings) -> Image.Image:
    """Decode ``data`` fully after checking its format and pixel count from the header."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UnsupportedMediaType(_FIELD, f"not a supported image; allowed formats: {_allowed()}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(_FIELD, "could not read the image header") from exc
    width, height = image.size
    if width < 1 or height < 1 or width * height > settings.max_image_pixels:
        raise InvalidInput(
            _FIELD, f"{width}x{height} pixels is over the limit of {settings.max_image_pixels} pixels"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(_FIELD, "could not decode the image (truncated or corrupt)") from exc
    return image


def prepare_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Apply EXIF orientation, convert to RGB and resize to exactly ``width`` x ``height``.

    The image is stretched, not cropped, like Segmind's endpoint: callers who care about
    the aspect ratio send an image of the requested shape.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _allowed() -> str:
    return ", ".join(ALLOWED_FORMATS)
