"""The container walk and the gateway's cheap decodes agree with the worker's full decode,
and refuse the decode floods in bounded time and memory."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from PIL import Image

from shared.errors import InvalidInput
from shared.images import check_image_bytes, open_image, prepare_image
from shared.imagescan import MAX_JPEG_MARKERS, MAX_PNG_CHUNKS, scan_jpeg, scan_png
from shared.settings import Settings
from tests.hostile.corpus import (
    accepted_samples,
    decode_floods,
    encode,
    png_chunk,
    png_declaring,
    refused_samples,
)

SETTINGS = Settings()
FLOODS = list(decode_floods())
# Every sample with allowed magic, refused or not: the gateway's verdict must be the worker's.
SAMPLES = [(name, data) for name, data in accepted_samples()] + [
    (name, data) for name, data, status in refused_samples() if status in (400, 413)
]


def worker_verdict(data: bytes) -> str:
    try:
        prepare_image(open_image(data, SETTINGS), 64, 64)
    except InvalidInput as exc:
        return f"refused {exc.status_code}"
    return "ok"


def gateway_verdict(data: bytes) -> str:
    try:
        check_image_bytes(data, SETTINGS)
    except InvalidInput as exc:
        return f"refused {exc.status_code}"
    return "ok"


@pytest.mark.parametrize(("name", "data"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_the_gateway_refuses_what_the_worker_would(name: str, data: bytes) -> None:
    assert gateway_verdict(data) == worker_verdict(data), name


@pytest.mark.parametrize(("name", "data", "status"), FLOODS, ids=[name for name, _, _ in FLOODS])
def test_each_flood_is_refused_in_milliseconds_and_little_memory(name: str, data: bytes, status: int) -> None:
    check_image_bytes(encode(Image.new("RGB", (8, 8)), "PNG"), SETTINGS)  # imports warm
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(InvalidInput) as refused:
            check_image_bytes(data, SETTINGS)
        cpu = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status_code == status
    # Before the walk: 1.7 s of CPU for the chunk and marker floods, 36 MB for a cut 4096x4096 PNG.
    assert cpu < 0.25, (name, cpu)
    assert peak < 4 * 1024 * 1024, (name, peak)


def test_a_whole_4096x4096_png_is_checked_in_pieces() -> None:
    data = encode(Image.new("RGB", (4096, 4096), (9, 8, 7)), "PNG")
    tracemalloc.start()
    try:
        assert check_image_bytes(data, SETTINGS) == "PNG"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # its pixels are 48 MiB


def test_the_chunk_bound_is_exact() -> None:
    empty = png_chunk(b"zzZz", b"")
    fits = png_declaring(16, 16, extra=empty * (MAX_PNG_CHUNKS - 3))  # with IHDR, IDAT and IEND
    assert scan_png(fits).width == 16
    with pytest.raises(InvalidInput, match="more than 4096 chunks"):
        scan_png(png_declaring(16, 16, extra=empty * (MAX_PNG_CHUNKS - 2)))


def test_the_marker_bound() -> None:
    jpeg = encode(Image.new("RGB", (16, 16)), "JPEG")  # about ten markers of its own
    comment = b"\xff\xfe\x00\x02"
    scan_jpeg(jpeg[:2] + comment * (MAX_JPEG_MARKERS - 20) + jpeg[2:])
    with pytest.raises(InvalidInput, match="more than 1024 markers"):
        scan_jpeg(jpeg[:2] + comment * MAX_JPEG_MARKERS + jpeg[2:])
