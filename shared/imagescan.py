"""An image file's container, walked before any decoder sees it: bounded and cheap.

Pillow parses containers in Python: one loop turn per PNG chunk and per JPEG marker (and per
byte of junk or fill between markers). A 10 MB PNG of 870,000 empty chunks or a JPEG of
2.6 million comment markers costs seconds of CPU before a pixel is read. :func:`scan` walks
the container first, in a bounded number of steps, and refuses:

- a PNG of more than :data:`MAX_PNG_CHUNKS` chunks, or one that ends inside a chunk or
  before its ``IEND`` (truncated: refused with no decoding at all);
- a JPEG of more than :data:`MAX_JPEG_MARKERS` markers (restart markers aside), more than
  :data:`MAX_JPEG_JUNK_BYTES` bytes of junk or fill between markers, or one that ends before
  its image data.

:func:`verify_png_data` is the gateway's full decode of a PNG at constant memory: it
inflates the image data in pieces of 256 KiB and checks its length and each row's filter type,
which is what Pillow's decoder can fail on, without ever holding the pixels.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

from shared.errors import InvalidInput

MAX_PNG_CHUNKS: Final = 4096
MAX_JPEG_MARKERS: Final = 1024
MAX_JPEG_JUNK_BYTES: Final = 4096

_FIELD: Final = "image"
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEAD: Final = struct.Struct(">I4s")
_IHDR: Final = struct.Struct(">IIBBBBB")
# Channels per colour type: grey, RGB, palette, grey+alpha, RGBA.
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x0, y0, dx, dy).
_ADAM7: Final = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)
)  # fmt: skip
_MAX_FILTER: Final = 4
# Inflated in pieces of at most this many bytes (256 KiB): the memory a PNG check holds.
_INFLATE_PIECE: Final = 1 << 18

# A marker inside or after entropy-coded data: 0xFF then neither a stuffed zero, a restart
# marker nor fill.
_JPEG_MARKER: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL: Final = re.compile(rb"\xff+")
_SOS: Final = 0xDA
_EOI: Final = 0xD9
_STANDALONE: Final = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class PngLayout:
    """Where a PNG's image data lies, and the shape its inflated data must have."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool
    data_spans: list[tuple[int, int]] = field(default_factory=list)


def scan(data: bytes, image_format: str) -> PngLayout | None:
    """Walk the container of ``data`` (of ``image_format``) within the bounds above; a PNG's
    layout, for :func:`verify_png_data`."""
    if image_format == "PNG":
        return scan_png(data)
    if image_format == "JPEG":
        scan_jpeg(data)
    return None  # WebP: libwebp parses its container in C


def scan_png(data: bytes) -> PngLayout:
    """Every chunk of a PNG, up to ``IEND``: at most :data:`MAX_PNG_CHUNKS`, none cut short."""
    if not data.startswith(_PNG_SIGNATURE):
        raise InvalidInput(_FIELD, "is not a PNG")
    pos = len(_PNG_SIGNATURE)
    spans: list[tuple[int, int]] = []
    header: tuple[int, ...] | None = None
    for _ in range(MAX_PNG_CHUNKS):
        if pos + _CHUNK_HEAD.size > len(data):
            raise InvalidInput(_FIELD, "the PNG ends before its IEND chunk (truncated)")
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        start = pos + _CHUNK_HEAD.size
        pos = start + length + 4  # data, then its CRC
        if pos > len(data):
            raise InvalidInput(_FIELD, "the PNG ends inside a chunk (truncated)")
        if kind == b"IHDR" and header is None and length == _IHDR.size:
            header = _IHDR.unpack_from(data, start)
        elif kind == b"IDAT":
            spans.append((start, start + length))
        elif kind == b"IEND":
            break
    else:
        raise InvalidInput(_FIELD, f"the PNG has more than {MAX_PNG_CHUNKS} chunks")
    if header is None or not spans:
        raise InvalidInput(_FIELD, "the PNG has no IHDR or no image data")
    width, height, bit_depth, colour_type, _, _, interlace = header
    return PngLayout(width, height, bit_depth, colour_type, interlace == 1, spans)


def scan_jpeg(data: bytes) -> None:
    """A JPEG's markers, at most :data:`MAX_JPEG_MARKERS`, with its header segments whole."""
    pos, junk = 2, 0
    markers = 0
    while True:
        if pos >= len(data):
            raise InvalidInput(_FIELD, "the JPEG ends before its image data (truncated)")
        if data[pos] != 0xFF:
            next_marker = data.find(b"\xff", pos)
            skipped = (next_marker if next_marker >= 0 else len(data)) - pos
            junk += skipped
            pos += skipped
        else:
            fill = _JPEG_FILL.match(data, pos)
            assert fill is not None
            junk += fill.end() - pos - 1
            pos = fill.end() - 1
            if pos + 1 >= len(data):
                raise InvalidInput(_FIELD, "the JPEG ends before its image data (truncated)")
            marker = data[pos + 1]
            pos += 2
            markers += 1
            if marker == _EOI:
                return  # no image data: the header parser says so
            if marker not in _STANDALONE:
                if pos + 2 > len(data):
                    raise InvalidInput(_FIELD, "the JPEG ends inside a segment (truncated)")
                pos += int.from_bytes(data[pos : pos + 2], "big")
                if marker == _SOS:
                    break
        if junk > MAX_JPEG_JUNK_BYTES:
            raise InvalidInput(_FIELD, f"the JPEG has over {MAX_JPEG_JUNK_BYTES} bytes between markers")
        if markers > MAX_JPEG_MARKERS:
            raise InvalidInput(_FIELD, f"the JPEG has more than {MAX_JPEG_MARKERS} markers")
    # The rest is entropy-coded data and, in a progressive JPEG, more tables and scans.
    later = sum(1 for _ in islice(_JPEG_MARKER.finditer(data, pos), MAX_JPEG_MARKERS + 1))
    if markers + later > MAX_JPEG_MARKERS:
        raise InvalidInput(_FIELD, f"the JPEG has more than {MAX_JPEG_MARKERS} markers")


def verify_png_data(data: bytes, layout: PngLayout) -> None:
    """Inflate the image data in pieces of at most 256 KiB and check that it holds every row
    the header promises, each starting with a valid filter type."""
    rows = _png_rows(layout)
    expected = sum(count * stride for count, stride in rows)
    inflater = zlib.decompressobj()
    checker = _RowChecker(rows)
    produced = 0
    try:
        for start, end in layout.data_spans:
            pending = data[start:end]
            while pending and produced < expected:
                piece = inflater.decompress(pending, _INFLATE_PIECE)
                checker.check(piece, produced)
                produced += len(piece)
                pending = inflater.unconsumed_tail
            if produced >= expected:
                return
    except zlib.error as exc:
        raise InvalidInput(_FIELD, "could not decode the PNG's image data (corrupt)") from exc
    raise InvalidInput(_FIELD, "the PNG's image data ends early (truncated)")


def _png_rows(layout: PngLayout) -> list[tuple[int, int]]:
    """(row count, bytes per row with its filter byte) of each pass of the image data."""
    bits = _PNG_CHANNELS.get(layout.colour_type, 4) * layout.bit_depth
    passes = _ADAM7 if layout.interlaced else ((0, 0, 1, 1),)
    rows = []
    for x0, y0, dx, dy in passes:
        columns = max(0, (layout.width - x0 + dx - 1) // dx)
        count = max(0, (layout.height - y0 + dy - 1) // dy)
        if columns and count:
            rows.append((count, 1 + (columns * bits + 7) // 8))
    return rows


class _RowChecker:
    """Checks the filter byte at the start of every row as the inflated data streams by."""

    def __init__(self, rows: list[tuple[int, int]]) -> None:
        self._passes = iter(rows)
        self._left, self._stride = next(self._passes, (0, 1))
        self._next_row = 0  # offset of the next row's filter byte in the inflated data

    def check(self, piece: bytes, offset: int) -> None:
        end = offset + len(piece)
        while self._left and self._next_row < end:
            fit = min(self._left, (end - self._next_row + self._stride - 1) // self._stride)
            first = self._next_row - offset
            filters = piece[first : first + (fit - 1) * self._stride + 1 : self._stride]
            if max(filters) > _MAX_FILTER:
                raise InvalidInput(_FIELD, "the PNG's image data has an unknown row filter (corrupt)")
            self._next_row += fit * self._stride
            self._left -= fit
            if not self._left:
                self._left, self._stride = next(self._passes, (0, 1))
