"""Request bodies and images the tests share."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from shared.fetch import ImageFetcher
from shared.images import check_image_bytes, read_image_field
from shared.schema import REFERENCE_REQUEST
from shared.settings import Settings

REFERENCE = REFERENCE_REQUEST


def sample_image(size: tuple[int, int] = (512, 512), fmt: str = "PNG") -> bytes:
    """A deterministic picture with some structure (a gradient and a square)."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    image.paste((250, 200, 40), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reference_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": b64(sample_image()), **REFERENCE}
    body.update(changes)
    return body


def decode_image_field(value: str, settings: Settings, fetcher: ImageFetcher | None = None) -> bytes:
    """Every check the gateway runs on an ``image`` field, in one call: the header checks
    before it accepts a job (:func:`read_image_field`), then the full decode it runs once the
    job is queued (:func:`check_image_bytes`)."""
    data = read_image_field(value, settings, fetcher)
    check_image_bytes(data, settings)
    return data


def jpeg_pixels(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image
