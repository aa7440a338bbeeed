from __future__ import annotations

from pathlib import Path

from diffusers import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, PNDMScheduler

from shared.schema import SCHEDULERS
from worker.schedulers import SCHEDULER_CLASSES, make_scheduler


def test_every_public_name_maps_to_its_class(tiny_model: Path) -> None:
    config = PNDMScheduler.from_pretrained(tiny_model, subfolder="scheduler").config
    assert tuple(SCHEDULER_CLASSES) == SCHEDULERS
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, config)
        assert type(scheduler) is SCHEDULER_CLASSES[name][0]
        assert scheduler.config.beta_schedule == "scaled_linear"
    for name, cls in (
        ("DPM2 Karras", KDPM2DiscreteScheduler),
        ("DPM2 a Karras", KDPM2AncestralDiscreteScheduler),
    ):
        scheduler = make_scheduler(name, config)
        assert isinstance(scheduler, cls)
        assert scheduler.config.use_karras_sigmas is True


def test_each_job_gets_a_fresh_scheduler(tiny_model: Path) -> None:
    config = PNDMScheduler.from_pretrained(tiny_model, subfolder="scheduler").config
    assert make_scheduler("DDIM", config) is not make_scheduler("DDIM", config)
