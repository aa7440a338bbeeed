from __future__ import annotations

from pathlib import Path

import torch
from diffusers import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, PNDMScheduler

from shared.schema import SCHEDULERS
from worker.schedulers import SCHEDULER_CLASSES, Schedulers, make_scheduler


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
    table = Schedulers(config)
    for name in SCHEDULERS:
        used, copied, built = table.make(name), table.make(name), make_scheduler(name, config)
        assert used is not copied and type(copied) is type(built)
        used.set_timesteps(25)  # a run's state stays with its own copy
        for scheduler in (copied, built):
            scheduler.set_timesteps(10)
        assert torch.equal(copied.timesteps, built.timesteps), name
        if hasattr(built, "sigmas"):
            assert torch.equal(copied.sigmas, built.sigmas), name
        unused, pristine = table.make(name), make_scheduler(name, config)  # never touched by a run
        if pristine.timesteps is None:
            assert unused.timesteps is None, name
        else:
            assert torch.equal(unused.timesteps, pristine.timesteps), name
