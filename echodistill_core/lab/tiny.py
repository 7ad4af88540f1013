"""Tiny random teacher/student pairs built from configs, for tests and benchmarks; and the
bundled trained pairs of the tiny world (`bundled_pair`), with the discriminators they train with.

Their shapes follow the full-size models (a CLIP text encoder, a cross-attention UNet, optionally a
VAE) at about a million parameters, so every code path of a real pair runs in seconds on a CPU.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from . import world
from ..backbones import TEACHER_FEATURES, ImageBackbone
from ..image_networks import RunNetworks, load_dino
from ..loading import load_diffusers_folder
from ..models import DiffusionModel, TextConditioner
from ..schedule import NoiseSchedule
from ..clip_tokenizer import build_clip_tokenizer

TINY_NUM_MERGES = 1000
TINY_MAX_TOKENS = 16
TINY_TEXT_WIDTH = 32


def tiny_text(seed: int = 0) -> TextConditioner:
    tokenizer = build_clip_tokenizer(TINY_NUM_MERGES)
    tokenizer.model_max_length = TINY_MAX_TOKENS
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_TEXT_WIDTH, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TINY_MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return TextConditioner(tokenizer, CLIPTextModel(config).eval().requires_grad_(False))


def tiny_scheduler(prediction_type: str = "v_prediction", one_step: bool = False) -> DDPMScheduler:
    """SD's schedule (scaled linear betas 0.00085-0.012 over 1000 steps); `one_step` samples from the last
    timestep, as SD-Turbo's scheduler does."""
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction_type, clip_sample=False,
                         timestep_spacing="trailing" if one_step else "leading")


def tiny_unet(channels: int, sample_size: int, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, block_out_channels=(32, 64),
        layers_per_block=1, cross_attention_dim=TINY_TEXT_WIDTH, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
    )
    return unet.eval().requires_grad_(False)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A two-level VAE: images of N px become 4 x N/2 x N/2 latents."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=32,
    )
    return vae.eval().requires_grad_(False)


def tiny_model(prediction_type: str = "v_prediction", *, image_size: int = 16, latent: bool = False,
               seed: int = 0, name: str = "tiny", vae: AutoencoderKL | None = None) -> DiffusionModel:
    """A random tiny model; with `latent`, a VAE (shared if passed) and a UNet on its latents."""
    if latent:
        vae = vae or tiny_vae(seed)
        unet = tiny_unet(4, image_size // 2, seed)
    else:
        vae, unet = None, tiny_unet(3, image_size, seed)
    schedule = NoiseSchedule.from_scheduler_config(tiny_scheduler(prediction_type).config)
    return DiffusionModel(unet=unet, schedule=schedule, vae=vae, name=name)


def tiny_pair(teacher_prediction: str = "v_prediction", student_prediction: str = "epsilon", *,
              image_size: int = 16, latent: bool = False, seed: int = 0
              ) -> tuple[DiffusionModel, DiffusionModel, TextConditioner]:
    """A random (teacher, student, shared text encoder) triple; the student starts as a copy of no one."""
    teacher = tiny_model(teacher_prediction, image_size=image_size, latent=latent, seed=seed, name="tiny-teacher")
    student = tiny_model(student_prediction, image_size=image_size, latent=latent, seed=seed + 1,
                         name="tiny-student", vae=teacher.vae)
    return teacher, student, tiny_text(seed)


def bundled_pair(pair: str = "pixel", device: str = "cpu") -> tuple[DiffusionModel, DiffusionModel, TextConditioner]:
    """(teacher, student, shared text encoder) of a bundled pair of `world.PAIRS`: "pixel" (32 px images,
    a v-prediction student) or "latent" (a tiny VAE's 4 x 8 x 8 latents and an epsilon-prediction student
    at the last timestep: SD 2.1 and SD-Turbo in miniature). Loaded as any diffusers folder is; both folders
    hold the same VAE, and the pair shares the teacher's, as SD 2.1 and SD-Turbo share theirs."""
    if pair not in world.PAIRS:
        raise ValueError(f"unknown bundled pair {pair!r}; choose one of {', '.join(world.PAIRS)}")
    teacher_folder, student_folder = world.PAIRS[pair]
    teacher, text = load_diffusers_folder(teacher_folder, device=device, role="teacher")
    student, _ = load_diffusers_folder(student_folder, device=device, role="student")
    if student.vae is not None:
        student.vae = teacher.vae
    return teacher, student, text


def tiny_image_network() -> ImageBackbone:
    """The tiny world's image network (`world.IMAGE_NETWORK_FOLDER`, trained by
    `tools/train_tiny_image_network.py`): a small ViT that tells the world's shapes, colours and looks apart,
    read as any DINO folder is. It stands where DINO and CLIP stand for real pairs, and it is not the
    evaluation's judge."""
    return load_dino(world.IMAGE_NETWORK_FOLDER)


def tiny_networks() -> RunNetworks:
    """The image networks the bundled pairs train with, as the paper's runs have DINO and CLIP: two
    discriminators, on the base teacher's features and on the tiny image network, and that network as the
    feature network f. On the pixel pair the image discriminator drew my circle's band in one step, where
    the teacher's features alone drew a blue centre (README, "The tiny world")."""
    network = tiny_image_network()
    return RunNetworks([TEACHER_FEATURES, network], network)
