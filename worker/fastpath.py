"""The worker's fast path: attention, memory layout, fused projections, compile and warm-up.

Each part has its own setting (``auto``, ``on`` or ``off``; ``auto`` is on for CUDA and off
on CPU, except SDPA attention, which ``auto`` turns on everywhere):

* ``SDPA_ATTENTION``: PyTorch's ``scaled_dot_product_attention`` (``AttnProcessor2_0``,
  diffusers' own default, set explicitly) in UNet and VAE; ``off`` uses the classic
  ``AttnProcessor``.
* ``CHANNELS_LAST``: UNet and VAE weights and activations in ``channels_last`` layout.
* ``FUSE_QKV``: one matmul for query, key and value (``fuse_qkv_projections``); it uses
  the fused SDPA processor, so it implies SDPA.
* ``HOST_TIMESTEPS``: the schedulers in :data:`HOST_TIMESTEP_SCHEDULERS` keep their
  timesteps and ``alphas_cumprod`` on the host, so their per-step arithmetic
  (``alphas_cumprod[t]``, ``prev_t >= 0``) is on host scalars and never waits for the
  GPU; the UNet gets its timestep as a device tensor filled from the host value.
* ``TORCH_COMPILE``: ``torch.compile`` of the UNet and of the VAE encoder and decoder,
  one static graph per shape (``COMPILE_MODE``, ``COMPILE_BACKEND``), warmed up at
  load over every shape the service accepts, so no request pays a compile.

Inputs of the compiled modules are normalised before every call (timestep as a 0-d
float32 tensor on the device, activations in one canonical memory layout), so that
switching schedulers, whose timesteps differ in dtype and device, or a tensor arriving
with other strides never triggers a recompile.

Host-device synchronisations inside the denoising loop, by scheduler (diffusers 0.42, read
from its source; ``bench/gpu.py`` counts them on a GPU): DDIM, PNDM and DDPM branch on a
device timestep at every step (DDPM also finds it with ``nonzero``) unless
``HOST_TIMESTEPS`` is on; UniPC solves a small linear system (``torch.linalg.solve``) at
every step of order two and up; DPM Multi, DPM Single, Euler, Euler a, Heun, DPM2, DPM2 a
and LMS keep their sigmas on the host and index them with a Python step counter. Progress
bars are off and the step callback reports plain integers, so the runner adds none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch.utils._pytree import tree_map_only

from shared.settings import Settings

log = logging.getLogger(__name__)

# Schedulers that look up ``alphas_cumprod`` by timestep and branch on its value.
HOST_TIMESTEP_SCHEDULERS: Final = frozenset({"DDIM", "PNDM", "DDPM"})
# Inductor modes that record CUDA graphs: each shape must run twice during warm-up.
CUDAGRAPH_MODES: Final = frozenset({"reduce-overhead", "max-autotune"})
# Guidance of warm-up calls: above 1 runs classifier-free guidance (UNet batch 2 x samples).
WARMUP_GUIDANCE: Final = 7.5
NO_GUIDANCE: Final = 1.0


def _switch(value: str, cuda: bool) -> bool:
    return value == "on" or (value == "auto" and cuda)


@dataclass(frozen=True)
class FastPath:
    """The fast-path parts in effect for one device, resolved from the settings."""

    sdpa: bool
    channels_last: bool
    fuse_qkv: bool
    host_timesteps: bool
    compile: bool
    compile_mode: str
    compile_backend: str
    warmup: str  # full, cfg, basic or off
    warmup_images: tuple[int, ...]  # images per call a full or cfg warm-up covers; () for all

    @classmethod
    def resolve(cls, settings: Settings, device: torch.device) -> FastPath:
        cuda = device.type == "cuda"
        compile_on = _switch(settings.torch_compile, cuda)
        mode = settings.compile_mode
        if mode == "auto":
            mode = "max-autotune" if cuda else "default"
        warmup = settings.warmup
        if warmup == "auto":
            warmup = "full" if compile_on else "basic"
        return cls(
            sdpa=settings.sdpa_attention != "off",
            channels_last=_switch(settings.channels_last, cuda),
            fuse_qkv=_switch(settings.fuse_qkv, cuda),
            host_timesteps=_switch(settings.host_timesteps, cuda),
            compile=compile_on,
            compile_mode=mode,
            compile_backend=settings.compile_backend,
            warmup=warmup,
            warmup_images=tuple(sorted(set(settings.warmup_images))),
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def normalises_inputs(self) -> bool:
        """Whether UNet and VAE calls go through :func:`install_inputs`."""
        return self.channels_last or self.host_timesteps or self.compile

    @property
    def cudagraphs(self) -> bool:
        return self.compile and self.compile_backend == "inductor" and self.compile_mode in CUDAGRAPH_MODES

    def describe(self) -> str:
        parts = [
            f"sdpa={'on' if self.sdpa else 'off'}",
            f"channels_last={'on' if self.channels_last else 'off'}",
            f"fuse_qkv={'on' if self.fuse_qkv else 'off'}",
            f"host_timesteps={'on' if self.host_timesteps else 'off'}",
            f"compile={self.compile_backend}/{self.compile_mode}" if self.compile else "compile=off",
            f"warmup={self.warmup}",
        ]
        return " ".join(parts)


def apply(pipe: StableDiffusionImg2ImgPipeline, fast: FastPath) -> None:
    """Switch ``pipe`` (already on its device and dtype) to the fast path, in place."""
    processor = AttnProcessor2_0() if fast.sdpa else AttnProcessor()  # type: ignore[no-untyped-call]
    pipe.unet.set_attn_processor(processor)
    pipe.vae.set_attn_processor(processor)
    if fast.fuse_qkv:
        pipe.fuse_qkv_projections(unet=True, vae=True)
    if fast.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if fast.normalises_inputs:
        compile_fn = _compiler(fast) if fast.compile else None
        steps = fast.cudagraphs
        install_inputs(pipe.unet, fast.memory_format, compile_fn, timestep=True, graph_steps=steps)
        install_inputs(pipe.vae.encoder, fast.memory_format, compile_fn, graph_steps=steps)
        install_inputs(pipe.vae.decoder, fast.memory_format, compile_fn, graph_steps=steps)


def _compiler(fast: FastPath) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    mode = None if fast.compile_mode == "default" or fast.compile_backend != "inductor" else fast.compile_mode

    def compile_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
        # dynamic=False: one static graph per shape, each warmed up at load.
        return torch.compile(fn, backend=fast.compile_backend, mode=mode, fullgraph=True, dynamic=False)

    return compile_fn


def install_inputs(
    module: torch.nn.Module,
    memory_format: torch.memory_format,
    compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]] | None,
    timestep: bool = False,
    graph_steps: bool = False,
) -> None:
    """Route ``module``'s forward through input normalisation, then (maybe) a compiled graph.

    Normalisation runs eagerly, outside the graph; the module keeps its type, so the
    pipeline's checks and ``.config`` lookups see the original model.
    """
    forward: Callable[..., Any] = module.forward
    target = owned_outputs(compile_fn(forward), graph_steps) if compile_fn is not None else forward

    if timestep:

        def unet_forward(sample: torch.Tensor, t: Any, *args: Any, **kwargs: Any) -> Any:
            hidden = kwargs.get("encoder_hidden_states")
            if isinstance(hidden, torch.Tensor):
                kwargs["encoder_hidden_states"] = canonical(hidden, torch.contiguous_format)
            return target(
                canonical(sample, memory_format), device_timestep(t, sample.device), *args, **kwargs
            )

        module.forward = unet_forward
    else:

        def vae_forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return target(canonical(sample, memory_format), *args, **kwargs)

        module.forward = vae_forward


def owned_outputs(compiled: Callable[..., Any], graph_steps: bool = False) -> Callable[..., Any]:
    """``compiled`` returning copies of its outputs.

    A CUDA graph writes every replay into the same output buffers, so an output kept past
    the next call (PNDM keeps the UNet's between steps when there is no guidance) would be
    overwritten under it. Each call hands out copies, so the graph's own buffers are free
    again as soon as it returns; with ``graph_steps`` (inductor's CUDA graph trees) each call
    also starts a new graph step. A copy costs one latent-sized write per call, nothing next
    to the call itself."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if graph_steps:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        return tree_map_only(torch.Tensor, torch.clone, compiled(*args, **kwargs))

    return call


def canonical_strides(shape: Sequence[int], memory_format: torch.memory_format) -> tuple[int, ...]:
    """The strides ``torch.empty(shape, memory_format=...)`` gives a tensor."""
    if memory_format == torch.channels_last and len(shape) == 4:
        _, c, h, w = shape
        return (h * w * c, 1, w * c, c)
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return tuple(strides)


def canonical(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` with exactly the canonical strides of ``memory_format`` (a copy only if needed).

    Compiled graphs guard on strides, size-1 dimensions included, so "contiguous in this
    format" is not enough: a slice of a batch can carry another batch stride.
    """
    fmt = memory_format if x.dim() == 4 else torch.contiguous_format
    if x.stride() == canonical_strides(x.shape, fmt):
        return x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    out.copy_(x)
    return out


def device_timestep(t: Any, device: torch.device) -> torch.Tensor:
    """The UNet's timestep as a float32 tensor on ``device``, made without waiting for it.

    The UNet casts timesteps to float32 before its sinusoidal embedding, so the cast
    changes nothing; one dtype for every scheduler keeps one compiled graph per shape.
    """
    if isinstance(t, torch.Tensor):
        if t.device == device:
            return t.to(torch.float32)
        if t.device.type == "cpu" and t.dim() == 0:
            # A fill from a host scalar: no copy from pageable memory, no synchronisation.
            return torch.full((), float(t), dtype=torch.float32, device=device)
        return t.to(device=device, dtype=torch.float32, non_blocking=True)
    return torch.full((), float(t), dtype=torch.float32, device=device)


def prepare_scheduler(scheduler: SchedulerMixin, name: str, fast: FastPath) -> SchedulerMixin:
    """Keep the timesteps of ``scheduler`` (a fresh one per job) on the host where that avoids syncs."""
    if fast.host_timesteps and name in HOST_TIMESTEP_SCHEDULERS:
        target: Any = scheduler  # diffusers' schedulers are untyped
        set_timesteps, add_noise = target.set_timesteps, target.add_noise
        host_alphas = target.alphas_cumprod

        def host_set_timesteps(*args: Any, device: Any = None, **kwargs: Any) -> Any:
            return set_timesteps(*args, device="cpu", **kwargs)

        def host_add_noise(*args: Any, **kwargs: Any) -> Any:
            try:
                return add_noise(*args, **kwargs)
            finally:
                # add_noise (once per job, before the loop) moves alphas_cumprod to the
                # device; the loop's per-step lookups stay host scalars.
                target.alphas_cumprod = host_alphas

        target.set_timesteps = host_set_timesteps
        target.add_noise = host_add_noise
    return scheduler


@dataclass(frozen=True)
class WarmupCall:
    """One pipeline call made at load time."""

    width: int
    height: int
    images: int
    guidance_scale: float
    num_inference_steps: int
    strength: float


def call_sizes(settings: Settings, fast: FastPath) -> tuple[int, ...]:
    """Images per pipeline call that a request may run at without compiling.

    Every count up to ``settings.largest_call``; with a compiled ``full`` or ``cfg`` warm-up
    limited by ``WARMUP_IMAGES``, only those counts (and 1), and the runner cuts each batch
    into calls of these sizes, so no request ever waits for a compile."""
    every = tuple(range(1, settings.largest_call + 1))
    if not (fast.compile and fast.warmup in ("full", "cfg") and fast.warmup_images):
        return every
    return tuple(sorted({1, *(n for n in fast.warmup_images if n in every)}))


def warmup_plan(sizes: Sequence[int], fast: FastPath, images: Sequence[int]) -> list[WarmupCall]:
    """The calls that leave every accepted shape warm.

    ``full`` covers every width x height x call size in ``images``, with classifier-free
    guidance (UNet batch 2 x images) and without it (guidance_scale <= 1: batch = images),
    each UNet batch once per size; ``cfg`` only the guided batches; ``basic`` one short call
    per square size; ``off`` none. With CUDA graphs every call runs twice, since a graph
    is recorded on the second call of its shape.
    """
    ordered = sorted(set(sizes))
    if fast.warmup == "off":
        return []
    if fast.warmup == "basic":
        return [WarmupCall(s, s, 1, WARMUP_GUIDANCE, 2, 0.5) for s in ordered]
    guided = {2 * n for n in images}
    calls: list[WarmupCall] = []
    for width in ordered:
        for height in ordered:
            # Three denoising steps: compile, then record and replay a CUDA graph.
            calls += [WarmupCall(width, height, n, WARMUP_GUIDANCE, 3, 1.0) for n in images]
            if fast.warmup == "full":
                calls += [
                    WarmupCall(width, height, n, NO_GUIDANCE, 3, 1.0) for n in images if n not in guided
                ]
    return calls * 2 if fast.cudagraphs else calls


def unet_batches(plan: Sequence[WarmupCall]) -> set[tuple[int, int, int]]:
    """(width, height, UNet batch) shapes that ``plan`` compiles."""
    return {(c.width, c.height, c.images * (2 if c.guidance_scale > 1 else 1)) for c in plan}


def allow_graphs(count: int) -> None:
    """Let dynamo keep ``count`` static graphs per compiled function (default 8)."""
    config: Any = torch._dynamo.config
    # Named cache_size_limit before torch 2.6.
    per_code = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    total = "accumulated_recompile_limit" if hasattr(config, "accumulated_recompile_limit") else ""
    setattr(config, per_code, max(int(getattr(config, per_code)), count))
    if total:
        setattr(config, total, max(int(getattr(config, total)), 4 * count))


def graphs_compiled() -> int:
    """How many graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
