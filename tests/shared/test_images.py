from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from shared.images import (
    check_image_bytes,
    normalize_image,
    open_image,
    prepare_image,
    read_header,
    sniff_format,
)
from shared.settings import Settings
from tests.helpers import b64, decode_image_field, sample_image

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
    assert decode_image_field(f"  DATA:{mime.upper()};BASE64,{b64(data)}\n", SETTINGS) == data


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "ICO", "PDF"])
def test_other_formats_are_415_naming_the_allowed_ones(fmt: str) -> None:
    data = encoded(Image.new("RGB", (8, 8)), fmt)
    with pytest.raises(UnsupportedMediaType) as refused:
        decode_image_field(b64(data), SETTINGS)
    assert refused.value.status_code == 415
    assert "JPEG, PNG, WEBP" in refused.value.message


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"GIF89a", "GIF"),
        (b"8BPS\x00\x01", "PSD"),
        (b"%!PS-Adobe-3.0 EPSF-3.0", "PostScript/EPS"),
        (b"  <svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"hello", None),
    ],
)
def test_formats_are_sniffed_from_their_magic(data: bytes, name: str | None) -> None:
    assert sniff_format(data) == name


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encoded(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(PayloadTooLarge) as err:
        open_image(data, Settings(max_image_pixels=300 * 299))
    assert "300x300" in err.value.message
    header = read_header(data)
    assert header.size == (300, 300)
    assert header._im is None  # nothing decoded by reading the header


def test_byte_limit() -> None:
    small = Settings(max_image_bytes=100)
    with pytest.raises(PayloadTooLarge):
        decode_image_field(b64(sample_image((64, 64))), small)
    with pytest.raises(PayloadTooLarge):
        check_image_bytes(sample_image((64, 64)), small)


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        "aGVsbG8=x",
        "aGVsbG8",  # missing padding
        "aGVs bG8=",  # whitespace inside
        "aGVs\nbG8=",
        "data:image/png,aGVsbG8=",  # data URI without base64
        "",
    ],
)
def test_base64_is_strict(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode_image_field(value, SETTINGS)
    assert refused.value.status_code == 400 and refused.value.field == "image"


def test_a_data_uri_must_name_the_image_type() -> None:
    png = sample_image((16, 16))
    with pytest.raises(InvalidInput) as mismatch:
        decode_image_field("data:image/jpeg;base64," + b64(png), SETTINGS)
    assert (
        mismatch.value.status_code == 400
        and "JPEG" in mismatch.value.message
        and "PNG" in mismatch.value.message
    )
    with pytest.raises(UnsupportedMediaType):
        decode_image_field("data:image/gif;base64," + b64(png), SETTINGS)


def test_a_truncated_image_of_an_allowed_format_is_400() -> None:
    data = sample_image((64, 64), fmt="JPEG")
    with pytest.raises(InvalidInput) as refused:
        decode_image_field(b64(data[: len(data) // 2]), SETTINGS)
    assert refused.value.status_code == 400


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1:6379/_x"])
def test_urls_of_other_schemes_are_400(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode_image_field(url, SETTINGS)
    assert refused.value.status_code == 400 and "http" in refused.value.message


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


@pytest.mark.parametrize("mode", ["1", "L", "LA", "I", "I;16", "F", "CMYK", "RGBA"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    assert normalize_image(Image.new(mode, (4, 4))).mode == "RGB"


def test_a_palette_with_a_transparency_table_becomes_rgb_without_warning() -> None:
    palette = Image.new("P", (8, 8))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image = open_image(encoded(palette, "PNG", transparency=bytes([0, 128])), SETTINGS)
    assert isinstance(image.info.get("transparency"), bytes)
    assert normalize_image(image).mode == "RGB"  # filterwarnings=error: a warning would fail this
