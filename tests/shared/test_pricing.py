"""Prices follow compute: samples, denoising steps, UNet evaluations per step and pixels."""

from __future__ import annotations

import pytest

from shared.pricing import job_cost_milli, unet_evaluations
from shared.schema import SCHEDULERS, parse_request
from shared.settings import Settings
from tests.helpers import reference_body

SETTINGS = Settings()


def cost(**changes: object) -> int:
    return job_cost_milli(parse_request(reference_body(**changes), SETTINGS).params, SETTINGS)


def step_part(**changes: object) -> float:
    """The price less the per-job fee, in millicredits."""
    return cost(**changes) - SETTINGS.price_per_job * 1000


@pytest.mark.parametrize("scheduler", ["Heun", "DPM2 Karras", "DPM2 a Karras"])
def test_second_order_schedulers_cost_twice_ddim(scheduler: str) -> None:
    assert unet_evaluations(scheduler) == 2
    assert step_part(scheduler=scheduler) == pytest.approx(2 * step_part(scheduler="DDIM"), abs=1)


def test_every_other_scheduler_costs_as_ddim() -> None:
    for scheduler in SCHEDULERS:
        if unet_evaluations(scheduler) == 1:
            assert cost(scheduler=scheduler) == cost(scheduler="DDIM"), scheduler


def test_the_reference_request_costs_what_the_readme_says() -> None:
    assert cost() == 180  # 0.18 credits
