"""The decode gate: a pixel budget per process and a bound per key, each with its answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from api.decodes import DecodeGate
from shared.errors import RateLimited, Unavailable

MAX = 4096 * 4096


@contextmanager
def held(gate: DecodeGate, key: str | None, pixels: int) -> Iterator[threading.Event]:
    """Hold a decode in another thread until the yielded event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.admit(key, pixels):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(5)
    try:
        yield release
    finally:
        release.set()
        thread.join(5)


def test_a_key_beyond_its_decodes_waits_briefly_then_is_429() -> None:
    gate = DecodeGate(budget_pixels=10 * MAX, per_key=2, key_wait=0.2)
    with ExitStack() as stack:
        stack.enter_context(held(gate, "k1", 100))
        stack.enter_context(held(gate, "k1", 100))
        started = time.monotonic()
        with pytest.raises(RateLimited) as refused, gate.admit("k1", 100):
            pass
        assert 0.15 < time.monotonic() - started < 2
        assert refused.value.retry_after >= 1
        with gate.admit("k2", 100):  # another key goes on
            assert gate.pixels_in_flight == 300
        with gate.admit(None, 100):  # keys off: no per-key bound
            pass
    with gate.admit("k1", 100):  # its slots are back
        pass
    assert gate.pixels_in_flight == 0


def test_a_key_waiting_for_its_slot_gets_it_when_one_ends() -> None:
    gate = DecodeGate(budget_pixels=10 * MAX, per_key=1, key_wait=5)
    with held(gate, "k1", 100) as release:
        threading.Timer(0.2, release.set).start()
        with gate.admit("k1", 100):
            assert gate.pixels_in_flight == 100


def test_the_budget_holds_large_images_back_then_answers_503() -> None:
    gate = DecodeGate(budget_pixels=2 * MAX, per_key=8, budget_wait=0.3)
    with held(gate, "a", MAX), held(gate, "b", MAX):
        with pytest.raises(Unavailable):
            with gate.admit("c", MAX):
                pass
        assert gate.pixels_in_flight == 2 * MAX
    with gate.admit("c", 3 * MAX):  # over the budget alone: one image always fits an idle process
        pass
    assert gate.pixels_in_flight == 0


def test_a_decode_that_fails_gives_its_pixels_back() -> None:
    gate = DecodeGate(budget_pixels=MAX, per_key=1)
    with pytest.raises(ValueError), gate.admit("k", MAX):
        raise ValueError("the image did not decode")
    assert gate.pixels_in_flight == 0
    with gate.admit("k", MAX):
        pass
