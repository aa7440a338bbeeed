"""What a job costs, in credits.

The price follows the compute: the number of samples, the denoising steps actually run
(``int(num_inference_steps * strength)``), the UNet evaluations each step takes (two for the
second-order Heun and DPM2 schedulers, one for the others) and the output resolution. One
credit buys ``1 / PRICE_PER_STEP`` UNet steps of one 512x512 image::

    cost = PRICE_PER_JOB + PRICE_PER_STEP * samples * denoising_steps * unet_evaluations
           * (img_width * img_height) / (512 * 512)

Balances and costs are kept as integer millicredits, so charges and refunds are exact.
"""

from __future__ import annotations

import math

from shared.schema import GenerationParams
from shared.settings import Settings

MILLI = 1000
_REFERENCE_PIXELS = 512 * 512
# Schedulers that evaluate the UNet twice per denoising step (a predictor and a corrector).
SECOND_ORDER: frozenset[str] = frozenset({"Heun", "DPM2 Karras", "DPM2 a Karras"})


def unet_evaluations(scheduler: str) -> int:
    """UNet evaluations per denoising step."""
    return 2 if scheduler in SECOND_ORDER else 1


def job_cost_milli(params: GenerationParams, settings: Settings) -> int:
    """The job's price in millicredits, rounded up."""
    pixels = params.img_width * params.img_height / _REFERENCE_PIXELS
    steps = params.samples * params.denoising_steps * unet_evaluations(params.scheduler) * pixels
    return math.ceil((settings.price_per_job + settings.price_per_step * steps) * MILLI - 1e-9)


def to_milli(credits: float) -> int:
    return round(credits * MILLI)


def format_credits(milli: int) -> str:
    """Millicredits as a decimal credit amount, e.g. ``1250`` -> ``"1.250"``."""
    sign = "-" if milli < 0 else ""
    whole, frac = divmod(abs(milli), MILLI)
    return f"{sign}{whole}.{frac:03d}"
