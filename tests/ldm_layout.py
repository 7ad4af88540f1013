"""Diffusers models written out as the single files Stability published, for tests.

The published Stable Diffusion checkpoints are one `.safetensors` file in the original LDM / sgm key
layout. This module builds random diffusers models in a family's topology (same levels, block types
and layers per block, so the same `input_blocks.N...` names) with shrunk widths, and writes them
under exactly those names, so that loading and family detection can be tested without the real
multi-GB weights. The same functions write full-size files from full-size configs
(`family_configs_from_folder`).

Layouts: `sd1` SD 1.x and `sd2` SD 2.x (512 eps and 768 v alike) as LDM files; `sgm_sd2` SD-Turbo
and `sdxl` SDXL (and SDXL-Turbo) as Stability's sgm files. All hold the UNet under
`model.diffusion_model.` (SDXL's with `label_emb.0.0/.0.2`) and the VAE under `first_stage_model.`;
the text encoders (`LAYOUTS`) are:

| layout    | prefix                                            | text encoder      | key naming   |
| --------- | ------------------------------------------------- | ----------------- | ------------ |
| `sd1`     | `cond_stage_model.transformer.text_model.`        | CLIP ViT-L        | transformers |
| `sd2`     | `cond_stage_model.model.`                         | OpenCLIP ViT-H    | OpenCLIP     |
| `sgm_sd2` | `conditioner.embedders.0.model.`                  | OpenCLIP ViT-H    | OpenCLIP     |
| `sdxl`    | `conditioner.embedders.0.transformer.text_model.` | CLIP ViT-L        | transformers |
|           | `conditioner.embedders.1.model.`                  | OpenCLIP ViT-bigG | OpenCLIP     |

OpenCLIP-H files hold one resblock more than diffusers' 23-layer text encoder uses (SD 2 reads the
penultimate layer) and a `text_projection` it drops; both are written with random values. The
transformers-named CLIP-L carries its `embeddings.position_ids` buffer, as the published files do.
Schedule buffers (`alphas_cumprod`, ...) and markers such as ComfyUI's `v_pred` go through `extra`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from echodistill_core.lab.tiny import TINY_NUM_MERGES
from echodistill_core.clip_tokenizer import build_clip_tokenizer

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
TEXT_CLASSES = {cls.__name__: cls for cls in (CLIPTextModel, CLIPTextModelWithProjection)}
TextEncoder = CLIPTextModel | CLIPTextModelWithProjection
TRAINED_LOGIT_SCALE = math.log(100.0)  # CLIP's logit scale ends training at its clamp, 100
UNUSED_TENSOR_SEED = 0  # the generator of the OpenCLIP tensors diffusers does not load


@dataclass(frozen=True)
class TextSlot:
    """Where one text encoder sits in a single file, and in which key naming."""

    prefix: str
    open_clip: bool  # OpenCLIP names (resblocks, fused in_proj) rather than transformers' (layers, q/k/v)
    unused_blocks: int = 0  # resblocks the file holds past the ones the diffusers text encoder has


LAYOUTS: dict[str, tuple[TextSlot, ...]] = {
    "sd1": (TextSlot("cond_stage_model.transformer.text_model.", open_clip=False),),
    "sd2": (TextSlot("cond_stage_model.model.", open_clip=True, unused_blocks=1),),
    "sgm_sd2": (TextSlot("conditioner.embedders.0.model.", open_clip=True, unused_blocks=1),),
    "sdxl": (
        TextSlot("conditioner.embedders.0.transformer.text_model.", open_clip=False),
        TextSlot("conditioner.embedders.1.model.", open_clip=True),
    ),
}


@dataclass(frozen=True)
class FamilyConfigs:
    """What builds a family's models: diffusers config dicts and one transformers config per text encoder."""

    unet: dict
    vae: dict
    text_encoders: tuple[CLIPTextConfig, ...]  # each names its class in `architectures`


# ---------------------------------------------------------------------------------------------- models


def tiny_family_configs(layout: str) -> FamilyConfigs:
    """The family's topology at 2.6-2.8 M parameters (2.2 M of them the UNet).

    Widths keep the published ratios (UNet 320/640/1280/1280 -> 16/32/64/64, VAE 128/256/512/512 ->
    8/16/32/32), so that every shortcut convolution the real files hold exists here too. The text
    encoders have two layers, the tiny CLIP vocabulary and CLIP's 77 positions; their widths differ
    (CLIP-L 32, OpenCLIP-H 48, OpenCLIP-bigG 64), as diffusers tells SDXL's two apart by width.
    """
    vocab_size = len(build_clip_tokenizer(TINY_NUM_MERGES))
    clip_l = _tiny_text_config(CLIPTextModel, 32, "quick_gelu", vocab_size)
    if layout == "sd1":
        unet = _tiny_sd_unet(cross_attention_dim=32, attention_head_dim=2, use_linear_projection=False)
        return FamilyConfigs(unet, _tiny_vae(0.18215), (clip_l,))
    if layout in ("sd2", "sgm_sd2"):
        open_clip_h = _tiny_text_config(CLIPTextModel, 48, "gelu", vocab_size)
        unet = _tiny_sd_unet(cross_attention_dim=48, attention_head_dim=(1, 2, 4, 4),
                             use_linear_projection=True)
        return FamilyConfigs(unet, _tiny_vae(0.18215), (open_clip_h,))
    if layout == "sdxl":
        open_clip_big_g = _tiny_text_config(CLIPTextModelWithProjection, 64, "gelu", vocab_size)
        unet = _tiny_sdxl_unet(clip_l.hidden_size, open_clip_big_g.hidden_size, open_clip_big_g.projection_dim)
        return FamilyConfigs(unet, _tiny_vae(0.13025), (clip_l, open_clip_big_g))
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def _tiny_text_config(cls: type, width: int, activation: str, vocab_size: int) -> CLIPTextConfig:
    """A two-layer CLIP text encoder config with BOS/EOS at the end of the vocabulary, as CLIP has them."""
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=activation, projection_dim=width,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, architectures=[cls.__name__],
    )


def _tiny_sd_unet(cross_attention_dim: int, attention_head_dim, use_linear_projection: bool) -> dict:
    """SD 1.x / 2.x: three cross-attention levels and a plain one, two resnets per level.

    SD 1 has 8 heads at every level (`attention_head_dim` 8, a count despite its name), SD 2 64
    channels per head (5/10/20/20 heads); the tiny ones keep the pattern at 16 channels per head.
    """
    return dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=attention_head_dim, cross_attention_dim=cross_attention_dim,
        use_linear_projection=use_linear_projection, norm_num_groups=8,
    )


def _tiny_sdxl_unet(clip_l_width: int, big_g_width: int, pooled_width: int) -> dict:
    """SDXL: a plain level then two cross-attention levels, `text_time` added conditioning.

    The context is both text encoders' hidden states side by side; `label_emb` takes six size and
    crop numbers (each embedded in `addition_time_embed_dim`) and bigG's pooled projection.
    """
    time_embed_dim = 8
    return dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 2, 4), use_linear_projection=True,
        cross_attention_dim=clip_l_width + big_g_width, addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim, norm_num_groups=8,
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_width,
    )


def _tiny_vae(scaling_factor: float) -> dict:
    """The SD VAE's four levels of two resnets (three in the decoder), 8x downsampling, 4 latent channels."""
    return dict(
        block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, norm_num_groups=4,
        sample_size=64, scaling_factor=scaling_factor,
    )


def build_family_models(configs: FamilyConfigs, seed: int = 0
                        ) -> tuple[UNet2DConditionModel, AutoencoderKL, list[TextEncoder]]:
    """Random, frozen models from `configs`, every parameter jittered (see `_jitter`)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs.unet)
    vae = AutoencoderKL.from_config(configs.vae)
    text_encoders = [TEXT_CLASSES[config.architectures[0]](config) for config in configs.text_encoders]
    for module in (unet, vae, *text_encoders):
        _jitter(module)
        module.eval().requires_grad_(False)
    return unet, vae, text_encoders


def _jitter(module: torch.nn.Module) -> None:
    """Add small noise to every parameter, so that no two tensors are equal.

    Fresh models hold many identical tensors (zero biases, unit norms); with them a conversion that
    swapped two keys would still round-trip.
    """
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)


def tiny_family_models(layout: str, seed: int = 0
                       ) -> tuple[UNet2DConditionModel, AutoencoderKL, list[TextEncoder], FamilyConfigs]:
    """Random tiny (unet, vae, text encoders, configs) in the topology of `layout`'s family."""
    configs = tiny_family_configs(layout)
    return (*build_family_models(configs, seed), configs)


# ------------------------------------------------------------------------------------ the single file


def to_single_file(layout: str, unet: UNet2DConditionModel, vae: AutoencoderKL,
                   text_encoders: list[TextEncoder]) -> dict[str, torch.Tensor]:
    """The models' weights under the key names of `layout`'s published single files."""
    slots = LAYOUTS[layout]
    if len(slots) != len(text_encoders):
        raise ValueError(f"layout {layout!r} holds {len(slots)} text encoder(s), got {len(text_encoders)}")
    state_dict = {UNET_PREFIX + key: value for key, value in unet_to_ldm(unet).items()}
    state_dict.update({VAE_PREFIX + key: value for key, value in vae_to_ldm(vae).items()})
    for slot, encoder in zip(slots, text_encoders):
        names = open_clip_names(encoder, slot.unused_blocks) if slot.open_clip else transformers_clip_names(encoder)
        state_dict.update({slot.prefix + key: value for key, value in names.items()})
    return state_dict


# The LDM names of a UNet resnet's parts (a TimestepEmbedSequential's ResBlock).
UNET_RESNET_PARTS = {
    "norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection.",
}
VAE_RESNET_PARTS = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION_PARTS = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
VAE_CONV_ATTENTION = (".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")  # 1x1 convolutions in LDM


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights under LDM's `openaimodel.UNetModel` names (without `model.diffusion_model.`)."""
    prefixes = _unet_prefixes(unet.config)
    return {_rename(key, prefixes): value for key, value in unet.state_dict().items()}


def _unet_prefixes(config) -> list[tuple[str, str, dict]]:
    """(diffusers prefix, LDM prefix, renames of the parts under it) for every block of the UNet.

    LDM numbers its blocks in one flat sequence per side: `input_blocks.0` is conv_in, then each
    level gives `layers_per_block` (resnet `.0`, attention `.1`) blocks and a downsampler block
    (`.0.op`); `output_blocks` give one block more per level, the upsampler riding in the level's
    last block after its resnet (`.1.conv`) or after its attention too (`.2.conv`).
    """
    per_level = config["layers_per_block"] + 1
    levels = len(config["block_out_channels"])
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0.", {}), ("time_embedding.linear_2.", "time_embed.2.", {}),
        ("add_embedding.linear_1.", "label_emb.0.0.", {}), ("add_embedding.linear_2.", "label_emb.0.2.", {}),
        ("conv_in.", "input_blocks.0.0.", {}), ("conv_norm_out.", "out.0.", {}), ("conv_out.", "out.2.", {}),
        ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET_PARTS),
        ("mid_block.attentions.0.", "middle_block.1.", {}),
        ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET_PARTS),
    ]
    for level in range(levels):
        down, ldm_down = f"down_blocks.{level}.", f"input_blocks.{(level + 1) * per_level}.0.op."
        for layer in range(per_level - 1):
            block = f"input_blocks.{1 + level * per_level + layer}."
            prefixes.append((f"{down}resnets.{layer}.", f"{block}0.", UNET_RESNET_PARTS))
            prefixes.append((f"{down}attentions.{layer}.", f"{block}1.", {}))
        prefixes.append((f"{down}downsamplers.0.conv.", ldm_down, {}))
    for level, block_type in enumerate(config["up_block_types"]):
        up = f"up_blocks.{level}."
        for layer in range(per_level):
            block = f"output_blocks.{level * per_level + layer}."
            prefixes.append((f"{up}resnets.{layer}.", f"{block}0.", UNET_RESNET_PARTS))
            prefixes.append((f"{up}attentions.{layer}.", f"{block}1.", {}))
        upsampler = 2 if block_type.startswith("CrossAttn") else 1
        prefixes.append((f"{up}upsamplers.0.", f"output_blocks.{(level + 1) * per_level - 1}.{upsampler}.", {}))
    return prefixes


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The VAE's weights under LDM's `AutoencoderKL` names (without `first_stage_model.`).

    The mid-block attention's linear layers become the 1x1 convolutions LDM uses ([C, C, 1, 1]).
    """
    prefixes = _vae_prefixes(vae.config)
    state_dict = {}
    for key, value in vae.state_dict().items():
        name = _rename(key, prefixes)
        state_dict[name] = value[:, :, None, None] if name.endswith(VAE_CONV_ATTENTION) else value
    return state_dict


def _vae_prefixes(config) -> list[tuple[str, str, dict]]:
    """(diffusers prefix, LDM prefix, part renames) for every block of the VAE.

    The decoder has one resnet more per level than the encoder, and LDM numbers its levels from the
    bottom: diffusers' `decoder.up_blocks.0` is `decoder.up.3`.
    """
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    prefixes = [(name, name, {}) for name in ("quant_conv.", "post_quant_conv.")]
    for side in ("encoder", "decoder"):
        prefixes += [
            (f"{side}.conv_in.", f"{side}.conv_in.", {}), (f"{side}.conv_out.", f"{side}.conv_out.", {}),
            (f"{side}.conv_norm_out.", f"{side}.norm_out.", {}),
            (f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.", VAE_RESNET_PARTS),
            (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.", VAE_RESNET_PARTS),
            (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", VAE_ATTENTION_PARTS),
        ]
    for level in range(levels):
        down, up = f"encoder.down_blocks.{level}.", f"decoder.up_blocks.{level}."
        ldm_down, ldm_up = f"encoder.down.{level}.", f"decoder.up.{levels - 1 - level}."
        for layer in range(layers):
            prefixes.append((f"{down}resnets.{layer}.", f"{ldm_down}block.{layer}.", VAE_RESNET_PARTS))
        for layer in range(layers + 1):
            prefixes.append((f"{up}resnets.{layer}.", f"{ldm_up}block.{layer}.", VAE_RESNET_PARTS))
        prefixes.append((f"{down}downsamplers.0.", f"{ldm_down}downsample.", {}))
        prefixes.append((f"{up}upsamplers.0.", f"{ldm_up}upsample.", {}))
    return prefixes


def _rename(key: str, prefixes: list[tuple[str, str, dict]]) -> str:
    """`key` under its LDM name: its block prefix swapped, then the part under the block.

    Raises on a key no prefix covers, so that a model this module does not know is never written
    half-converted.
    """
    for old, new, parts in prefixes:
        if key.startswith(old):
            rest = key[len(old):]
            for part, renamed in parts.items():
                if rest.startswith(part):
                    return new + renamed + rest[len(part):]
            return new + rest
    raise KeyError(f"no LDM name known for {key!r}")


def _text_state_dict(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights named from `embeddings.`/`encoder.`/`final_layer_norm.` on.

    transformers 5 dropped the `text_model.` level of `CLIPTextModel`; `CLIPTextModelWithProjection`
    keeps it. `text_projection.weight` stays as it is.
    """
    return {key.removeprefix("text_model."): value for key, value in encoder.state_dict().items()}


def transformers_clip_names(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """CLIP-L as the LDM/sgm files hold it: transformers' names, with the `position_ids` buffer.

    transformers made `position_ids` a non-persistent buffer after these files were written, so it
    is added back (int64 [1, 77]) unless the state dict already has it.
    """
    state_dict = _text_state_dict(encoder)
    positions = torch.arange(encoder.config.max_position_embeddings).unsqueeze(0)
    state_dict.setdefault("embeddings.position_ids", positions)
    return state_dict


# transformers' name of each OpenCLIP resblock part besides the fused attention input projection.
OPEN_CLIP_BLOCK_PARTS = {
    "layer_norm1": "ln_1", "self_attn.out_proj": "attn.out_proj", "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def open_clip_names(encoder: TextEncoder, unused_blocks: int = 0) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower under OpenCLIP's names (without the layout prefix).

    q, k and v fuse into `attn.in_proj_*`; `text_projection` is the transposed transformers weight
    ([width, embed_dim]), or random when the encoder has none (SD 2's `CLIPTextModel`);
    `unused_blocks` random resblocks follow the encoder's own, as in SD 2's 24-block files.
    """
    source = _text_state_dict(encoder)
    state_dict = {
        "token_embedding.weight": source["embeddings.token_embedding.weight"],
        "positional_embedding": source["embeddings.position_embedding.weight"],
        "ln_final.weight": source["final_layer_norm.weight"],
        "ln_final.bias": source["final_layer_norm.bias"],
        "logit_scale": torch.tensor(TRAINED_LOGIT_SCALE),
    }
    layers = encoder.config.num_hidden_layers
    for index in range(layers):
        state_dict.update(_open_clip_block(source, index))
    generator = torch.Generator().manual_seed(UNUSED_TENSOR_SEED)
    for index in range(layers, layers + unused_blocks):
        state_dict.update({
            key.replace("resblocks.0.", f"resblocks.{index}."): _random(value.shape, generator)
            for key, value in _open_clip_block(source, 0).items()
        })
    if "text_projection.weight" in source:
        state_dict["text_projection"] = source["text_projection.weight"].T
    else:
        width = encoder.config.hidden_size
        state_dict["text_projection"] = _random((width, width), generator)
    return state_dict


def _open_clip_block(source: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Resblock `index` of an OpenCLIP transformer from transformers' `encoder.layers.{index}`."""
    layer, block = f"encoder.layers.{index}.", f"transformer.resblocks.{index}."
    state_dict = {
        f"{block}attn.in_proj_{kind}": torch.cat([source[f"{layer}self_attn.{q_k_v}_proj.{kind}"] for q_k_v in "qkv"])
        for kind in ("weight", "bias")
    }
    for old, new in OPEN_CLIP_BLOCK_PARTS.items():
        for kind in ("weight", "bias"):
            state_dict[f"{block}{new}.{kind}"] = source[f"{layer}{old}.{kind}"]
    return state_dict


def _random(shape, generator: torch.Generator) -> torch.Tensor:
    """Small random float32 values for weights no diffusers model loads."""
    return torch.randn(shape, generator=generator) * 0.02


# ------------------------------------------------------------------------------------------ on disk


def write_single_file(path: str | Path, layout: str, unet: UNet2DConditionModel, vae: AutoencoderKL,
                      text_encoders: list[TextEncoder], dtype: torch.dtype | None = None,
                      extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save `to_single_file(...)` as safetensors, floating tensors cast to `dtype` if given.

    `extra` adds (or replaces) keys as they are, e.g. LDM's schedule buffers or ComfyUI's `v_pred`.
    """
    state_dict = to_single_file(layout, unet, vae, text_encoders)
    if dtype is not None:
        state_dict = {
            key: value.to(dtype) if value.is_floating_point() else value for key, value in state_dict.items()
        }
    state_dict.update(extra or {})
    path = Path(path)
    save_file({key: value.contiguous() for key, value in state_dict.items()}, path)
    return path


def write_config_folder(folder: str | Path, unet: UNet2DConditionModel, vae: AutoencoderKL,
                        text_encoders: list[TextEncoder], scheduler_config: dict) -> Path:
    """A diffusers config folder for the models, the kind `from_single_file(config=...)` reads.

    It holds `model_index.json`, `unet/`, `vae/`, `text_encoder/` (and `text_encoder_2/`) configs
    and `scheduler/scheduler_config.json`; `scheduler_config` names its class in `_class_name`. No
    tokenizer files: pipelines must be given the tokenizer(s), e.g. `build_clip_tokenizer(...)`.
    """
    if "_class_name" not in scheduler_config:
        raise ValueError("scheduler_config must name the scheduler class under '_class_name'")
    folder = Path(folder)
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    for name, encoder in zip(TEXT_ENCODER_FOLDERS, text_encoders):
        config = copy.deepcopy(encoder.config)
        config.architectures = [type(encoder).__name__]
        config.save_pretrained(folder / name)
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config)
    model_index = _model_index(unet, vae, text_encoders, scheduler_config["_class_name"])
    _write_json(folder / "model_index.json", model_index)
    return folder


def _model_index(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoders: list[TextEncoder],
                 scheduler_class: str) -> dict:
    """The pipeline's `model_index.json`: SD's pipeline for one text encoder, SDXL's for two."""
    sdxl = len(text_encoders) == 2
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(unet).__name__],
        "vae": ["diffusers", type(vae).__name__],
        "scheduler": ["diffusers", scheduler_class],
    }
    for encoder_folder, tokenizer_folder, encoder in zip(TEXT_ENCODER_FOLDERS, TOKENIZER_FOLDERS, text_encoders):
        index[encoder_folder] = ["transformers", type(encoder).__name__]
        index[tokenizer_folder] = ["transformers", "CLIPTokenizer"]
    if sdxl:
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(content), indent=2, sort_keys=True) + "\n")


def family_configs_from_folder(folder: str | Path) -> FamilyConfigs:
    """The configs of a diffusers config folder (this module's, or `echodistill_core/assets/families/*`)."""
    folder = Path(folder)
    text_encoders = tuple(
        CLIPTextConfig.from_pretrained(folder / name) for name in TEXT_ENCODER_FOLDERS if (folder / name).is_dir()
    )
    return FamilyConfigs(
        unet=dict(UNet2DConditionModel.load_config(folder / "unet")),
        vae=dict(AutoencoderKL.load_config(folder / "vae")),
        text_encoders=text_encoders,
    )


def write_small_sd1_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """An SD 1.x single file that ComfyUI's stock loader detects and samples, in 0.4 GB instead of SD 1.5's 2 GB:
    ComfyUI knows SD 1.x by the UNet's width (320 channels) and text width (768), not by its depth, so the UNet
    here has one level of one cross-attention resnet (8 M parameters); the VAE (84 M) and CLIP ViT-L (123 M)
    are full size, as ComfyUI builds them at their one size whatever the file holds. Random weights, fp16."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=768,
        attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512)
    clip_l = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
    return write_single_file(path, "sd1", unet, vae, [clip_l], dtype=torch.float16)
