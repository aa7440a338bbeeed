"""Image decoding and checks, the same for the gateway (validation) and the worker (input).

The ``image`` field of a request is base64 (raw or a ``data:`` URI) or an http(s) URL,
which :mod:`shared.fetch` downloads. Either way the bytes pass the same checks, in this order:

1. a byte limit (``MAX_IMAGE_BYTES``, 413);
2. the format, sniffed from the first bytes: JPEG, PNG or WebP, anything else 415;
3. the pixel count, read from the header by the format's own parser before any pixel is
   decoded (``MAX_IMAGE_PIXELS``, 413). Pillow's own decompression-bomb guard in
   ``Image.open`` is never reached: the format's parser is called directly;
   The container is walked first (:mod:`shared.imagescan`), in bounded steps: a PNG of too
   many chunks, a JPEG of too many markers, or one that ends early is a 400 before any
   decoder runs;
4. a decode (truncated or corrupt data is a 400);
5. EXIF orientation and the conversion to RGB, so the worker never meets an image it cannot use.

The gateway runs checks 1 to 3 (:func:`read_image_field`) before it accepts a job, and 4 and
5 (:func:`check_image_bytes`) once the job is queued, while a worker starts on it: the
client's answer waits for them, and a job whose image fails them is taken back (failed,
refunded, and a 400 naming the field), which its worker, failing on the same decode,
would do too. The gateway decodes where it costs least: a PNG's data is inflated in 256 KiB
pieces and checked row by row (never held whole), a JPEG is decoded at 1/8 scale (libjpeg
reads all of its data, at 1/64 of the memory); a WebP is decoded in full. The worker, which
needs the pixels, decodes in full.

Only Pillow is used here, so the gateway stays free of torch.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from shared.fetch import ImageFetcher
from shared.imagescan import scan, scan_png, verify_png_data
from shared.settings import Settings

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
MIME_TYPES: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_MIME_FORMAT = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.ASCII | re.IGNORECASE)
# Anything with a scheme other than data: is a URL (base64 never contains a colon).
_URL_SCHEME = re.compile(r"^(?!data:)[a-z][a-z0-9+.-]*:", re.IGNORECASE | re.ASCII)
_FIELD = "image"
_ORIENTATION = 0x0112

# Each allowed format's header parser, called directly: it reads the header (size, mode)
# and decodes nothing until ``load()``.
_PARSERS: dict[str, type[ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}

# Magic numbers of formats people send by mistake (or on purpose), named in the 415 message.
_OTHER_FORMATS: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"8BPS", 0, "PSD"),
    (b"BM", 0, "BMP"),
    (b"%!PS", 0, "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"%PDF", 0, "PDF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"\x00\x00\x02\x00", 0, "CUR"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"qoif", 0, "QOI"),
    (b"PK\x03\x04", 0, "ZIP"),
)


def read_image_field(value: str, settings: Settings, fetcher: ImageFetcher | None = None) -> bytes:
    """Turn the ``image`` field (base64, data URI or http(s) URL) into image bytes checked up
    to their header: size, format and pixel count, without decoding a pixel. The full decode
    (:func:`check_image_bytes`) is left to the caller.

    A URL is fetched with ``fetcher`` (one built from ``settings`` when none is given).
    """
    text = value.strip()
    if _URL_SCHEME.match(text):
        if fetcher is None:
            fetcher = ImageFetcher(settings)
        data = fetcher.fetch(text)
        check_image_header(data, settings)
        return data
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
    data = _b64decode(text, settings)
    image_format = str(check_image_header(data, settings).format)
    if declared is not None and image_format != declared:
        raise InvalidInput(_FIELD, f"data URI says {declared} but the image is {image_format}")
    return data


def _b64decode(text: str, settings: Settings) -> bytes:
    if not text:
        raise InvalidInput(_FIELD, "is empty")
    max_b64 = (settings.max_image_bytes + 2) // 3 * 4
    if len(text) > max_b64:
        raise PayloadTooLarge(_FIELD, f"decoded image is over {settings.max_image_bytes} bytes")
    try:
        # validate=True: anything outside the base64 alphabet (whitespace included) is refused.
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(_FIELD, "is not valid base64 (standard alphabet, padded, no whitespace)") from exc
    if not data:
        raise InvalidInput(_FIELD, "is empty")
    return data


def check_image_header(data: bytes, settings: Settings) -> ImageFile.ImageFile:
    """Checks 1 to 3 (size, format, pixel count), decoding no pixel; the parsed header."""
    _check_size(data, settings)
    return _checked_header(data, settings)


def image_pixels(data: bytes) -> int:
    """The pixel count ``data``'s header declares (an allowed image, already checked)."""
    width, height = read_header(data).size
    return width * height


def check_image_bytes(data: bytes, settings: Settings) -> str:
    """Run every check on ``data`` (size, format, pixels, decode, orientation), decoding no
    more than it must (a PNG inflated in pieces, a JPEG at 1/8 scale); return the format."""
    _check_size(data, settings)
    image = _checked_header(data, settings)
    image_format = str(image.format)
    try:
        if image_format == "PNG":
            verify_png_data(data, scan_png(data))
            if "exif" in image.info:  # else getexif() would decode the pixels to look after them
                image.getexif().get(_ORIENTATION)
            return image_format
        if image_format == "JPEG":
            width, height = image.size
            image.draft(None, ((width + 7) // 8, (height + 7) // 8))
        _load(image)
        normalize_image(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
        raise InvalidInput(_FIELD, "could not apply the image's orientation or colour mode") from exc
    return image_format


def _check_size(data: bytes, settings: Settings) -> None:
    if not data:
        raise InvalidInput(_FIELD, "is empty")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(_FIELD, f"image is over {settings.max_image_bytes} bytes")


def sniff_format(data: bytes) -> str | None:
    """The format named by ``data``'s magic number: an allowed one, another known one, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, offset, name in _OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            return name
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in head:
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return None


def read_header(data: bytes) -> ImageFile.ImageFile:
    """Parse the header of an allowed image without decoding pixels (and without Pillow's
    decompression-bomb check, which :func:`open_image` replaces with the configured limit)."""
    image_format = sniff_format(data)
    if image_format not in _PARSERS:
        found = f"the image is {image_format}; " if image_format else "not a supported image; "
        raise UnsupportedMediaType(_FIELD, f"{found}allowed formats: {_allowed()}")
    scan(data, image_format)
    try:
        return _PARSERS[image_format](io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(_FIELD, "the image declares more pixels than allowed") from exc
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, EOFError) as exc:
        raise InvalidInput(
            _FIELD, f"could not read the {image_format} header (truncated or corrupt)"
        ) from exc


def _checked_header(data: bytes, settings: Settings) -> ImageFile.ImageFile:
    """The parsed header of an allowed image whose pixel count is within the limit."""
    image = read_header(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(_FIELD, f"{width}x{height} is not a usable image size")
    if width * height > settings.max_image_pixels:
        raise PayloadTooLarge(
            _FIELD, f"{width}x{height} pixels is over the limit of {settings.max_image_pixels} pixels"
        )
    return image


def open_image(data: bytes, settings: Settings) -> Image.Image:
    """Decode ``data`` fully after checking its format and pixel count from the header."""
    image = _checked_header(data, settings)
    _load(image)
    return image


def _load(image: ImageFile.ImageFile) -> None:
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(_FIELD, "the image declares more pixels than allowed") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, struct.error, EOFError) as exc:
        raise InvalidInput(_FIELD, "could not decode the image (truncated or corrupt)") from exc


def normalize_image(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert to RGB (alpha is dropped, not composited)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("P", "PA") or "transparency" in image.info:
        # Via RGBA: a palette transparency table cannot be kept in RGB, and Pillow warns.
        image = image.convert("RGBA")
    return image.convert("RGB")


def prepare_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Apply EXIF orientation, convert to RGB and resize to exactly ``width`` x ``height``.

    The image is stretched, not cropped, like Segmind's endpoint: callers who care about
    the aspect ratio send an image of the requested shape.
    """
    image = normalize_image(image)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def encode_image(image: Image.Image, output_format: str, quality: int) -> bytes:
    """An output image in ``output_format`` (jpeg, png or webp); ``quality`` for the lossy two."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=output_format.upper(), quality=quality)
    return buffer.getvalue()


def _allowed() -> str:
    return ", ".join(ALLOWED_FORMATS)
