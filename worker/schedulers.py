"""The twelve public scheduler names and the diffusers classes behind them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from shared.schema import SCHEDULERS

# Values are (scheduler class, extra config); classes typed Any as diffusers' are untyped.
SCHEDULER_CLASSES: Mapping[str, tuple[Any, Mapping[str, Any]]] = {
    "DDIM": (DDIMScheduler, {}),
    "DPM Multi": (DPMSolverMultistepScheduler, {}),
    "DPM Single": (DPMSolverSinglestepScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "DPM2 a Karras": (KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": True}),
    "DPM2 Karras": (KDPM2DiscreteScheduler, {"use_karras_sigmas": True}),
    "LMS": (LMSDiscreteScheduler, {}),
    "PNDM": (PNDMScheduler, {}),
    "DDPM": (DDPMScheduler, {}),
    "UniPC": (UniPCMultistepScheduler, {}),
}

if tuple(SCHEDULER_CLASSES) != SCHEDULERS:
    raise RuntimeError("the scheduler table is out of step with the schema")


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler of the named kind built from the model's scheduler config.

    Schedulers hold per-run state (timesteps, step index), so each job gets its own;
    building one is cheap and never touches the model weights.
    """
    cls, extra = SCHEDULER_CLASSES[name]
    scheduler: SchedulerMixin = cls.from_config(base_config, **extra)
    return scheduler
