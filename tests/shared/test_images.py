from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from shared.images import decode_image_field, open_image, prepare_image
from shared.settings import Settings
from tests.helpers import b64, sample_image

SETTINGS = Settings()


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode(fmt: str) -> None:
    data = sample_image((40, 30), fmt=fmt)
    assert decode_image_field(b64(data), SETTINGS) == data
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    assert decode_image_field(f"data:{mime};base64,{b64(data)}", SETTINGS) == data


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP"])
def test_other_formats_are_415(fmt: str) -> None:
    data = encoded(Image.new("RGB", (8, 8)), fmt)
    with pytest.raises(UnsupportedMediaType):
        decode_image_field(b64(data), SETTINGS)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encoded(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(InvalidInput) as err:
        open_image(data, Settings(max_image_pixels=300 * 299))
    assert "300x300" in err.value.message


def test_byte_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image_field(b64(sample_image((64, 64))), Settings(max_image_bytes=100))


def test_prepare_applies_exif_orientation_and_converts() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: left side on top
    loaded = open_image(encoded(image, "JPEG", exif=exif.tobytes()), SETTINGS)
    upright = prepare_image(loaded, 20, 40)
    assert upright.mode == "RGB"
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_prepare_resizes_and_drops_alpha() -> None:
    image = prepare_image(Image.new("RGBA", (64, 48), (10, 20, 30, 0)), 512, 768)
    assert (image.mode, image.size) == ("RGB", (512, 768))
