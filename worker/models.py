"""Write random-weight Stable Diffusion img2img pipelines in diffusers format.

The written directory loads with
``StableDiffusionImg2ImgPipeline.from_pretrained(out_dir)`` exactly like real
weights, but nothing is downloaded: the tokenizer is built locally from the
256 byte-level BPE symbols and every network gets deterministic random weights.

Two architectures are available:

* ``tiny``: a ~1.3 MB model with the same interfaces as SD 1.5 (the VAE
  downsamples by 8, the UNet works on 4-channel 64x64 latents); a 512x512,
  20-step img2img call takes well under a second on a 2-core CPU.
* ``sd15``: the full Stable Diffusion 1.5 architecture (1.07 B parameters,
  ~4.1 GB of float32 safetensors) with random weights, for load and memory tests.

Usage::

    python -m worker.models tiny --out models/tiny
    python -m worker.models sd15 --out models/sd15-random --seed 1 --force

A directory that already holds a ``model_index.json`` is reused unless
``--force`` is given. Models are built in a temporary sibling directory and
renamed into place, so concurrent writers never expose a half-written model.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch

# Import from the defining modules: under type checking, ``from diffusers import X``
# resolves to diffusers' untyped dummy placeholder classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

ARCHES: Final[tuple[str, ...]] = ("tiny", "sd15")

MODEL_INDEX: Final = "model_index.json"
MAX_TOKENS: Final = 77
BOS_TOKEN: Final = "<|startoftext|>"
EOS_TOKEN: Final = "<|endoftext|>"
WORD_END: Final = "</w>"
SD15_VOCAB_SIZE: Final = 49408
TOKENIZER_FILES: Final = ("vocab.json", "merges.txt")
SD15_SCHEDULER_CONFIG: Final[dict[str, Any]] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


def bytes_to_unicode() -> list[str]:
    """Return GPT-2's byte-level BPE alphabet: one printable character per byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    byte_values = list(printable)
    code_points = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return [chr(code_point) for code_point in code_points]


def tokenizer_vocab() -> dict[str, int]:
    """Return the local CLIP vocabulary: bytes, bytes + ``</w>``, then BOS and EOS."""
    alphabet = bytes_to_unicode()
    tokens = [*alphabet, *(symbol + WORD_END for symbol in alphabet), BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def check_arch(arch: str) -> None:
    """Raise ValueError unless ``arch`` is one of :data:`ARCHES`."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")


def build_tokenizer(work_dir: Path) -> CLIPTokenizer:
    """Build a byte-level CLIP tokenizer from files written under ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = (work_dir / name for name in TOKENIZER_FILES)
    vocab_file.write_text(json.dumps(tokenizer_vocab(), ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MAX_TOKENS)


def token_id(tokenizer: CLIPTokenizer, token: str) -> int:
    """Return the id of a special token, failing loudly if it is unknown."""
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int):
        raise ValueError(f"tokenizer has no id for {token!r}")
    return value


def build_text_encoder(arch: str, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """Build a randomly initialised CLIP text encoder for ``arch``."""
    tiny = arch == "tiny"
    hidden = 32 if tiny else 768
    config = CLIPTextConfig(
        vocab_size=len(tokenizer) if tiny else SD15_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=37 if tiny else 3072,
        num_hidden_layers=2 if tiny else 12,
        num_attention_heads=2 if tiny else 12,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=hidden,
        hidden_act="quick_gelu",
        bos_token_id=token_id(tokenizer, BOS_TOKEN),
        eos_token_id=token_id(tokenizer, EOS_TOKEN),
        pad_token_id=token_id(tokenizer, EOS_TOKEN),
    )
    return CLIPTextModel(config)


def build_unet(arch: str) -> UNet2DConditionModel:
    """Build a randomly initialised conditional UNet on 4x64x64 latents."""
    if arch == "tiny":
        return UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            # Attention only at 16x16: self-attention over 64x64 latents would
            # dominate the CPU time of the whole tiny pipeline.
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16, 32),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_vae(arch: str) -> AutoencoderKL:
    """Build a randomly initialised KL autoencoder that downsamples by 8."""
    channels = (4, 8, 8, 8) if arch == "tiny" else (128, 256, 512, 512)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1 if arch == "tiny" else 2,
        latent_channels=4,
        norm_num_groups=4 if arch == "tiny" else 32,
        sample_size=512,
        scaling_factor=0.18215,
    )


def build_scheduler() -> PNDMScheduler:
    """Build the PNDM scheduler from Stable Diffusion 1.5's ``scheduler_config.json``."""
    # from_config keeps keys PNDM ignores (clip_sample) in the saved config, as the
    # real file has them, so schedulers derived via from_config match real weights.
    scheduler = PNDMScheduler.from_config(dict(SD15_SCHEDULER_CONFIG))
    if not isinstance(scheduler, PNDMScheduler):
        raise TypeError(f"expected a PNDMScheduler, got {type(scheduler).__name__}")
    return scheduler


def build_pipeline(arch: str, work_dir: Path, seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    """Assemble a random-weight img2img pipeline; scratch files go to ``work_dir``."""
    check_arch(arch)
    tokenizer = build_tokenizer(work_dir)
    # Seed a forked RNG so the weights are deterministic without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Typed as Any: diffusers annotates ``scheduler`` as an enum and forbids None here.
        components: dict[str, Any] = {
            "vae": build_vae(arch),
            "text_encoder": build_text_encoder(arch, tokenizer),
            "tokenizer": tokenizer,
            "unet": build_unet(arch),
            "scheduler": build_scheduler(),
            "safety_checker": None,
            "feature_extractor": None,
        }
    return StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)


def save_pipeline(pipeline: StableDiffusionImg2ImgPipeline, target: Path, tokenizer_src: Path) -> None:
    """Save ``pipeline`` as safetensors with world-readable files.

    The tokenizer's ``vocab.json`` and ``merges.txt`` are copied next to its
    ``tokenizer.json`` so transformers 4's slow ``CLIPTokenizer`` loads it too.
    """
    pipeline.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_src / name, target / "tokenizer" / name)
    # Some writers create files via mkstemp (mode 0600); models are shared read-only.
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)


def is_model_dir(path: Path) -> bool:
    """Return whether ``path`` already holds a diffusers pipeline."""
    return (path / MODEL_INDEX).is_file()


def is_nonempty_dir(path: Path) -> bool:
    """Return whether ``path`` is a directory with at least one entry."""
    return path.is_dir() and any(path.iterdir())


def discard(path: Path) -> None:
    """Move ``path`` aside (a fast rename), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    try:
        os.replace(path, trash / path.name)
    except FileNotFoundError:
        pass  # another forced writer moved it first
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def move_into_place(built: Path, out_dir: Path, force: bool) -> bool:
    """Rename ``built`` to ``out_dir``; return False if another model won the race.

    The rename is atomic: readers see either no model or a complete one. With
    ``force`` an existing ``out_dir`` is renamed away just before.
    """
    if force and out_dir.exists():
        discard(out_dir)
    try:
        os.replace(built, out_dir)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY) and is_model_dir(out_dir):
            return False
        raise
    return True


def write_pipeline(arch: str, out_dir: Path, seed: int = 0, force: bool = False) -> Path:
    """Write a random-weight ``arch`` pipeline to ``out_dir`` and return its path.

    An existing model in ``out_dir`` is reused unless ``force`` is set. A
    non-empty ``out_dir`` that is not a model is only replaced with ``force``.
    """
    check_arch(arch)
    out_dir = Path(out_dir).absolute()
    if is_model_dir(out_dir) and not force:
        logger.info("reusing existing %s model at %s", arch, out_dir)
        return out_dir
    if is_nonempty_dir(out_dir) and not force:
        raise FileExistsError(f"{out_dir} is not empty and holds no {MODEL_INDEX}; use force")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        built = staging / "model"
        logger.info("building random-weight %s pipeline (seed %d)", arch, seed)
        tokenizer_src = staging / "tokenizer-src"
        pipeline = build_pipeline(arch, tokenizer_src, seed)
        save_pipeline(pipeline, built, tokenizer_src)
        if move_into_place(built, out_dir, force):
            logger.info("wrote %s model to %s", arch, out_dir)
        else:
            logger.info("another writer created %s first; keeping it", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_tiny_model(out_dir: Path) -> Path:
    """Write the tiny test model to ``out_dir`` unless one is already there."""
    return write_pipeline("tiny", out_dir)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.models",
        description="Write a random-weight Stable Diffusion img2img pipeline.",
    )
    parser.add_argument("arch", choices=ARCHES, help="architecture to write")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the weights")
    parser.add_argument("--force", action="store_true", help="overwrite an existing model")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command-line tool; print the model directory on success."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = write_pipeline(args.arch, args.out, seed=args.seed, force=args.force)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
