"""The hostile corpus: every ``image`` field value the gateway must survive, made here.

Nothing is downloaded or checked in: each sample is built from Pillow output or by hand
(headers that lie about their size, files cut short, formats outside the allow-list,
polyglots, bad base64, data URIs that lie about their type, URLs naming private
networks), together with the status the gateway answers it with (202: accepted; the
tests send ``Prefer: respond-async``).

    python -m tests.hostile.corpus OUT_DIR    # writes each sample and an index.json
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.helpers import sample_image

ACCEPTED = 202


@dataclass(frozen=True)
class Case:
    """One value of the ``image`` field and the status the gateway must answer."""

    name: str
    image: str
    status: int
    data: bytes | None = None  # the raw sample, when the value is base64 of bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, extra: bytes = b"") -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 30, 200)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header claims ``width`` x ``height`` (at most 16384 each)."""
    data = bytearray(encode(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), "WEBP", lossless=True))
    start = data.index(b"VP8L") + 8
    bits = int.from_bytes(data[start + 1 : start + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[start + 1 : start + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def psd() -> bytes:
    """A 4x4 RGB Photoshop file, raw data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + bytes(3 * 16)


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="20000" height="20000">'
    b'<image href="http://169.254.169.254/latest/meta-data/"/><rect width="10" height="10"/></svg>'
)
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"


def png_raw(width: int, height: int, rows: bytes, interlaced: bool = False, chunk: int = 0) -> bytes:
    """An RGB PNG of ``rows`` (filter bytes included) as is, its data cut into IDAT chunks of
    ``chunk`` bytes (0: one)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    data = zlib.compress(rows)
    size = chunk or len(data)
    idats = b"".join(png_chunk(b"IDAT", data[i : i + size]) for i in range(0, len(data), size))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + idats + png_chunk(b"IEND", b"")


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def adam7_rows(width: int, height: int) -> bytes:
    """Zero rows (filter 0) of every Adam7 pass of a ``width`` x ``height`` RGB image."""
    rows = b""
    for x0, y0, dx, dy in ADAM7:
        columns, count = max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy)
        if columns and count:
            rows += bytes(count * (1 + 3 * columns))
    return rows


def decode_floods() -> Iterator[tuple[str, bytes, int]]:
    """Files whose containers cost a decoder seconds or hundreds of MB: each a cheap 400."""
    big = encode(Image.new("RGB", (4096, 4096), (10, 20, 30)), "PNG")
    yield "png_4096x4096_truncated_at_the_end", big[:-200], 400
    whole_rows = bytes(4096 * (1 + 3 * 4096))
    cut_stream = zlib.compress(whole_rows)[: len(zlib.compress(whole_rows)) // 2]
    header = struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0)
    whole_file = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", cut_stream) + png_chunk(b"IEND", b"")
    yield "png_4096x4096_data_cut_in_a_whole_file", b"\x89PNG\r\n\x1a\n" + whole_file, 400
    yield "png_870k_empty_chunks", png_declaring(16, 16, extra=png_chunk(b"zzZz", b"") * 870_000), 400
    rows = bytes(16 * (1 + 3 * 16))
    yield "png_870k_empty_idat_chunks", png_raw(16, 16, rows)[:-12] + png_chunk(b"IDAT", b"") * 870_000, 400
    yield "png_unknown_row_filter", png_raw(16, 16, rows[:49] + b"\x09" + rows[50:]), 400
    yield "png_interlaced_data_short", png_raw(13, 7, adam7_rows(13, 7)[:-1], interlaced=True), 400
    jpeg = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    yield "jpeg_2_6m_comment_markers", jpeg[:2] + b"\xff\xfe\x00\x02" * 2_600_000 + jpeg[2:], 400
    yield "jpeg_10mb_of_fill_bytes", jpeg[:2] + b"\xff" * 10_000_000 + jpeg[2:], 400
    yield "jpeg_10mb_of_junk_between_markers", jpeg[:20] + b"\x00" * 10_000_000 + jpeg[20:], 400
    late = jpeg[:-2] + b"\xff\xfe\x00\x02" * 2_600_000 + jpeg[-2:]
    yield "jpeg_2_6m_comment_markers_after_the_scan", late, 400


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def accepted_samples() -> Iterator[tuple[str, bytes]]:
    """Odd but valid images: each must be accepted and then run by the worker."""
    picture = Image.open(io.BytesIO(sample_image((64, 48)))).convert("RGB")
    yield "png_rgb", encode(picture, "PNG")
    yield "jpeg_rgb", encode(picture, "JPEG")
    yield "jpeg_progressive", encode(picture, "JPEG", progressive=True)
    yield "jpeg_gray", encode(picture.convert("L"), "JPEG")
    yield "jpeg_cmyk", encode(picture.convert("CMYK"), "JPEG")
    yield "jpeg_exif_rotated", encode(picture, "JPEG", exif=_exif(6))
    yield "jpeg_exif_orientation_out_of_range", encode(picture, "JPEG", exif=_exif(9))
    yield "jpeg_with_zip_appended", encode(picture, "JPEG") + b"PK\x03\x04" + bytes(64)
    yield "webp_lossy", encode(picture, "WEBP")
    yield "webp_lossless_alpha", encode(picture.convert("RGBA"), "WEBP", lossless=True)
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue")]
    yield "webp_animated", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    yield "png_animated", encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    yield "png_16bit_gray", encode(Image.new("I;16", (16, 16), 40000), "PNG")
    palette = Image.new("P", (16, 16))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    yield "png_palette_transparency", encode(palette, "PNG", transparency=bytes([0, 128, 255]))
    yield "png_gray_alpha", encode(Image.new("LA", (16, 16), (128, 40)), "PNG")
    yield "png_1x1", encode(Image.new("RGB", (1, 1), "white"), "PNG")
    yield "png_thin_strip", encode(Image.new("RGB", (4096, 1), "white"), "PNG")
    yield "png_interlaced", png_raw(13, 7, adam7_rows(13, 7), interlaced=True)
    noise = random.Random(7)
    rows = b"".join(b"\x00" + noise.randbytes(3 * 64) for _ in range(48))
    yield "png_data_in_1000_idat_chunks", png_raw(64, 48, rows, chunk=8)
    yield "jpeg_restart_marker_every_block", encode(picture, "JPEG", restart_marker_blocks=1)


def refused_samples() -> Iterator[tuple[str, bytes, int]]:
    """Bytes the gateway refuses: name, data, status."""
    small = Image.new("RGB", (8, 8), (200, 10, 10))
    jpeg = encode(Image.open(io.BytesIO(sample_image((64, 48)))).convert("RGB"), "JPEG")
    png = sample_image((64, 48))
    webp = encode(small, "WEBP")
    # Formats outside the allow-list.
    yield "gif", encode(small, "GIF"), 415
    yield "tiff", encode(small, "TIFF"), 415
    yield "psd", psd(), 415
    yield "bmp", encode(small, "BMP"), 415
    yield "ico", encode(small, "ICO"), 415
    yield "pdf", PDF, 415
    yield "svg", SVG, 415
    yield "svg_bare", SVG.split(b"\n", 1)[1], 415
    yield "eps", EPS, 415
    yield "eps_binary_header", b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 30, len(EPS), 0, 0, 0, 0) + EPS, 415
    yield "heic", struct.pack(">I", 24) + b"ftypheic" + bytes(16), 415
    yield "html", HTML, 415
    yield "plain_text", b"definitely not an image, just some bytes", 415
    yield "zip", b"PK\x03\x04" + bytes(40), 415
    yield "gif_javascript_polyglot", b"GIF89a/*\x00\x00\x00\x00*/=alert(document.domain);//;", 415
    # Allowed magic, broken inside.
    yield "jpeg_truncated_half", jpeg[: len(jpeg) // 2], 400
    yield "jpeg_truncated_header", jpeg[:20], 400
    yield "jpeg_magic_then_script", b"\xff\xd8\xff<script>alert(1)</script>", 400
    yield "png_truncated_half", png[: len(png) // 2], 400
    yield "png_truncated_signature", png[:8], 400
    yield "png_magic_then_html", b"\x89PNG\r\n\x1a\n" + HTML, 400
    broken_crc = bytearray(png)
    broken_crc[-20] ^= 0xFF
    yield "png_bad_crc", bytes(broken_crc), 400
    yield "png_zero_width", png_declaring(0, 16), 400
    text_bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(8 * 1024 * 1024), 9))
    yield "png_compressed_text_bomb", png_declaring(16, 16, extra=text_bomb), 400
    yield "webp_truncated", webp[: len(webp) // 2], 400
    # Headers that claim more pixels than the limit: refused before any pixel is decoded.
    yield "png_declares_20000x20000", png_declaring(20000, 20000), 413
    yield "png_declares_4097x4097", png_declaring(4097, 4097), 413
    yield "png_declares_1x2147483647", png_declaring(1, 2**31 - 1), 413
    yield "jpeg_declares_65000x65000", jpeg_declaring(65000, 65000), 413
    yield "webp_declares_16384x16384", webp_declaring(16384, 16384), 413
    yield from decode_floods()


def text_cases() -> Iterator[Case]:
    """Values that are not base64 of a file: bad base64, lying data URIs, URLs never fetched."""
    png = sample_image((64, 48))
    jpeg = encode(Image.open(io.BytesIO(png)).convert("RGB"), "JPEG")
    gif = encode(Image.new("RGB", (8, 8)), "GIF")
    encoded = b64(png)
    assert "+" in encoded or "/" in encoded, "the sample must use both alphabets' differing characters"
    yield Case("base64_garbage", "not base64 at all!", 400)
    yield Case("base64_data_after_padding", "aGVsbG8=x", 400)
    yield Case("base64_missing_padding", b64(png[:-1]).rstrip("="), 400)
    yield Case("base64_urlsafe_alphabet", encoded.replace("+", "-").replace("/", "_"), 400)
    yield Case(
        "base64_mime_line_breaks", "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)), 400
    )
    yield Case("base64_inner_space", encoded[:40] + " " + encoded[40:], 400)
    yield Case("base64_non_ascii", "ü" + encoded, 400)
    yield Case("base64_only_padding", "====", 400)
    yield Case("empty", "", 400)
    yield Case("blank", "   ", 400)
    yield Case("data_uri_says_jpeg_is_png", "data:image/jpeg;base64," + encoded, 400)
    yield Case("data_uri_says_png_is_jpeg", "data:image/png;base64," + b64(jpeg), 400)
    yield Case("data_uri_says_webp_is_png", "data:image/webp;base64," + encoded, 400)
    yield Case("data_uri_not_base64", "data:image/png," + png[:32].hex(), 400)
    yield Case("data_uri_gif", "data:image/gif;base64," + b64(gif), 415)
    yield Case("data_uri_html", "data:text/html;base64," + b64(HTML), 415)
    yield Case("data_uri_svg", "data:image/svg+xml;base64," + b64(SVG), 415)
    yield Case("data_uri_without_type", "data:;base64," + encoded, 415)
    yield Case("data_uri_upper_case", "DATA:IMAGE/PNG;BASE64," + encoded, ACCEPTED, png)
    yield Case("data_uri_with_charset", "data:image/png;charset=utf-8;base64," + encoded, ACCEPTED, png)
    # URLs refused from their text alone: no connection is ever attempted for them.
    for name, url in (
        ("url_file", "file:///etc/passwd"),
        ("url_ftp", "ftp://127.0.0.1/image.png"),
        ("url_gopher_redis", "gopher://127.0.0.1:6379/_FLUSHALL"),
        ("url_redis_port", "http://127.0.0.1:6379/"),
        ("url_metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        ("url_metadata_ipv6", "http://[fd00:ec2::254]/latest/meta-data/"),
        ("url_private_10", "http://10.0.0.1/image.png"),
        ("url_private_192", "http://192.168.1.1/image.png"),
        ("url_private_172", "http://172.16.0.1/image.png"),
        ("url_shared_100_64", "http://100.64.0.1/image.png"),
        ("url_loopback_decimal", "http://2130706433/image.png"),
        ("url_loopback_hex", "http://0x7f000001/image.png"),
        ("url_loopback_octal", "http://0177.0.0.1/image.png"),
        ("url_loopback_short", "http://127.1/image.png"),
        ("url_unspecified", "http://0.0.0.0/image.png"),
        ("url_ipv6_loopback", "http://[::1]/image.png"),
        ("url_ipv4_mapped_loopback", "http://[::ffff:127.0.0.1]/image.png"),
        ("url_ipv4_mapped_hex", "http://[::ffff:7f00:1]/image.png"),
        ("url_6to4_loopback", "http://[2002:7f00:1::1]/image.png"),
        ("url_link_local_v6", "http://[fe80::1%25lo]/image.png"),
        ("url_multicast", "http://224.0.0.1/image.png"),
        ("url_broadcast", "http://255.255.255.255/image.png"),
        ("url_localhost", "http://localhost/image.png"),
        ("url_localhost_trailing_dot", "http://LOCALHOST./image.png"),
        ("url_credentials", "http://user:secret@127.0.0.1/image.png"),
        ("url_backslash_trick", "http://example.com\\@127.0.0.1/image.png"),
        ("url_no_host", "http:///image.png"),
        ("url_bad_port", "http://127.0.0.1:99999/image.png"),
        ("url_space", "http://127.0.0.1/ image.png"),
        ("url_numeric_not_an_address", "http://999999999999/image.png"),
        ("url_javascript", "javascript:alert(document.domain)"),
        ("url_one_slash", "http:/127.0.0.1/image.png"),
    ):
        yield Case(name, url, 400)


def cases() -> list[Case]:
    """The whole corpus."""
    corpus = [Case(name, b64(data), ACCEPTED, data) for name, data in accepted_samples()]
    corpus += [
        Case(name, b64(data) if data else "", status, data) for name, data, status in refused_samples()
    ]
    corpus += list(text_cases())
    names = [case.name for case in corpus]
    assert len(names) == len(set(names)), "case names must be unique"
    return corpus


def write(directory: Path) -> Path:
    """Write each sample's bytes (or text) and an index of names and statuses."""
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for case in cases():
        path = directory / (case.name + (".bin" if case.data is not None else ".txt"))
        path.write_bytes(case.data if case.data is not None else case.image.encode("utf-8"))
        index.append({"name": case.name, "file": path.name, "status": case.status})
    index_path = directory / "index.json"
    index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index_path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.hostile.corpus OUT_DIR")
    write(Path(sys.argv[1]))
