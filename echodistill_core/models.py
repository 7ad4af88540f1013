"""The networks EchoDistill is given: two diffusion models and one shared text encoder.

Nothing here is hard-wired to a checkpoint: a `DiffusionModel` is any diffusers UNet with the noise
schedule of its scheduler and an optional VAE (no VAE means the model works in pixel space), and a
`TextConditioner` is the teacher's text encoder and tokenizer, which the student shares.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .config import VAE_DECODES
from .families import FAMILIES, pair_problem
from .schedule import NoiseSchedule

DECODE_TILE_LATENTS = 32  # "tiled" decoding: 32 x 32 latent tiles (256 px for SD), overlapping by a quarter
PARTS = ("unet", "vae", "text_encoder")


def part_dtype(dtype: torch.dtype | dict[str, torch.dtype], part: str) -> torch.dtype:
    """The loaders' `dtype`: one for every part, or one per part (keys PARTS), as a host such as ComfyUI
    chooses them."""
    return dtype if isinstance(dtype, torch.dtype) else dtype[part]


@dataclass
class TextConditioner:
    tokenizer: object  # a transformers CLIP tokenizer
    text_encoder: torch.nn.Module  # a transformers CLIPTextModel

    @property
    def width(self) -> int:
        return self.text_encoder.config.hidden_size

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """[B, tokens, width] hidden states of `prompts`, padded to the tokenizer's model_max_length: the
        conditioning every UNet of a pair receives (`encoder_hidden_states`)."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]


@dataclass
class DiffusionModel:
    unet: UNet2DConditionModel
    schedule: NoiseSchedule
    vae: AutoencoderKL | None = None
    name: str = "model"
    family: str = ""  # the checkpoint family (families.py) when loaded from a single file

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's weight dtype (diffusers' own `unet.dtype` walks every parameter on each call)."""
        return self.unet.conv_in.weight.dtype

    @property
    def in_pixel_space(self) -> bool:
        return self.vae is None

    def latent_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of the space the UNet denoises."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    def image_size(self) -> int:
        _, height, _ = self.latent_shape()
        return height * self.vae_scale_factor()

    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def predict_x0(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One network evaluation at z_t, converted to the clean sample it implies."""
        output = self.unet(z_t.to(self.dtype), t.to(z_t.device), cond.to(self.dtype)).sample.to(z_t.dtype)
        return self.schedule.to_x0(output, z_t, t)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], [B, 3, H, W] -> latents (the mean of the VAE posterior, scaled)."""
        if self.vae is None:
            return images
        posterior = self.vae.encode(images.to(self.vae.encoder.conv_in.weight.dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).to(images.dtype)

    def decode(self, latents: torch.Tensor, mode: str = "plain") -> torch.Tensor:
        """Latents -> images in [-1, 1] (unclamped, differentiable).

        `mode` sets what decoding with gradient keeps for the backward pass (without gradient all three
        cost the same): "plain" every activation (at 512 px several GB); "checkpointed" only each decoder
        block's input, recomputing the block in the backward pass (the same images and gradients);
        "tiled" decodes overlapping tiles of `DECODE_TILE_LATENTS` latents, each checkpointed the same
        way, so that one recomputed block is a tile's (an approximation: tiles are blended at their seams).
        """
        if mode not in VAE_DECODES:
            raise ValueError(f"decode mode must be one of {VAE_DECODES}, not {mode!r}")
        if self.vae is None:
            return latents
        scaled = latents / self.vae.config.scaling_factor
        with _decoder_settings(self.vae, checkpointed=mode != "plain", tiled=mode == "tiled"):
            images = self.vae.decode(scaled.to(self.vae.decoder.conv_in.weight.dtype)).sample
        return images.to(latents.dtype)


@contextmanager
def _decoder_settings(vae: AutoencoderKL, checkpointed: bool, tiled: bool) -> Iterator[None]:
    """Set the shared VAE's checkpointing and tiling for one decode, and put back what was there."""
    switch_checkpointing = checkpointed and not vae.decoder.gradient_checkpointing
    tiling = (vae.use_tiling, vae.tile_latent_min_size, vae.tile_sample_min_size)
    if switch_checkpointing:
        vae.enable_gradient_checkpointing()
    if tiled:
        vae.use_tiling = True
        vae.tile_latent_min_size = DECODE_TILE_LATENTS
        vae.tile_sample_min_size = DECODE_TILE_LATENTS * 2 ** (len(vae.config.block_out_channels) - 1)
    try:
        yield
    finally:
        if switch_checkpointing:
            vae.disable_gradient_checkpointing()
        vae.use_tiling, vae.tile_latent_min_size, vae.tile_sample_min_size = tiling


class IncompatiblePairError(ValueError):
    """A teacher and student that cannot be trained together."""


def check_pair(teacher: DiffusionModel, student: DiffusionModel, text: TextConditioner,
               student_text: TextConditioner | None = None) -> None:
    """Refuse a pair that cannot share one text encoder or one latent space, saying what fits."""
    if teacher.family and student.family:
        problem = pair_problem(FAMILIES[teacher.family], FAMILIES[student.family], teacher.name, student.name)
        if problem:
            raise IncompatiblePairError(problem)
    width = text.width
    for role, model in (("teacher", teacher), ("student", student)):
        cross = model.unet.config.cross_attention_dim
        if cross != width:
            raise IncompatiblePairError(
                f"the {role} UNet expects text embeddings of width {cross}, but the shared (teacher's) "
                f"text encoder gives {width}; choose a {role} of the teacher's family "
                "(for an SD 2.1 teacher, an SD 2.x student such as SD-Turbo)"
            )
    if student_text is not None:
        _check_same_text_encoder(text, student_text)
    if _same_weights(teacher.unet, student.unet):
        raise IncompatiblePairError(
            f"the teacher {teacher.name} and the student {student.name} are the same model (their UNet weights "
            "are equal); EchoDistill trains a multi-step teacher (e.g. SD 2.1) with a one-step student "
            "(e.g. SD-Turbo)"
        )
    if teacher.in_pixel_space != student.in_pixel_space:
        raise IncompatiblePairError(
            "one model works in pixel space and the other in a VAE latent space; teacher and student "
            "must share one latent space"
        )
    if teacher.vae is not None and student.vae is not None:
        keys = ("latent_channels", "block_out_channels", "scaling_factor")
        if any(teacher.vae.config[key] != student.vae.config[key] for key in keys):
            raise IncompatiblePairError(
                "the teacher's and the student's VAEs differ, so their latent spaces differ; use a pair "
                "of one family (SD 2.1 and SD-Turbo share theirs)"
            )
    if teacher.latent_shape()[0] != student.latent_shape()[0]:
        raise IncompatiblePairError(
            f"the teacher denoises {teacher.latent_shape()[0]} channels and the student "
            f"{student.latent_shape()[0]}; use a pair of one family"
        )


# Relative weight distance between the two text encoders: fp16/bf16 copies (~1e-3) and light fine-tunes
# pass; an encoder trained apart (~1) does not.
TEXT_ENCODER_TOLERANCE = 0.1


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    if first is second:
        return True
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(a[key].shape == b[key].shape and torch.equal(a[key], b[key].to(a[key]))
                                        for key in a)


def _relative_distance(first: torch.nn.Module, second: torch.nn.Module) -> float:
    """|a - b| / |a| over all weights of two modules of one architecture."""
    a, b = first.state_dict(), second.state_dict()
    difference = norm = 0.0
    for key, value in a.items():  # a tensor at a time, in fp32 sums: no copy of a whole model
        difference = difference + torch.linalg.vector_norm(value - b[key].to(value), dtype=torch.float32) ** 2
        norm = norm + torch.linalg.vector_norm(value, dtype=torch.float32) ** 2
    return float((difference / max(float(norm), 1e-30)) ** 0.5)


def _check_same_text_encoder(text: TextConditioner, student_text: TextConditioner) -> None:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    teacher_config, student_config = text.text_encoder.config, student_text.text_encoder.config
    differing = [key for key in keys if getattr(teacher_config, key) != getattr(student_config, key)]
    vocabularies = (text.tokenizer.vocab_size, student_text.tokenizer.vocab_size)  # without added tokens
    if differing or vocabularies[0] != vocabularies[1]:
        detail = ", ".join(
            f"{key} {getattr(teacher_config, key)} vs {getattr(student_config, key)}" for key in differing
        ) or f"tokenizers of {vocabularies[0]} vs {vocabularies[1]} tokens"
        raise IncompatiblePairError(
            f"teacher and student text encoders differ ({detail}); EchoDistill trains one shared text "
            "encoder, so an SD 2.1 teacher needs an SD 2.x-family student such as SD-Turbo, and an "
            "SD 1.5 teacher an SD 1.x student"
        )
    if text.text_encoder is not student_text.text_encoder:
        distance = _relative_distance(text.text_encoder, student_text.text_encoder)
        if distance > TEXT_ENCODER_TOLERANCE:
            raise IncompatiblePairError(
                f"the student was trained with another text encoder than the teacher's (their weights differ "
                f"by {distance:.0%}), and EchoDistill conditions both on the teacher's; pair the student with "
                "the teacher it was distilled from (SD-Turbo with SD 2.1)"
            )
