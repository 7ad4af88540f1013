"""Tiny models written in the published single-file layouts load back through diffusers unchanged."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from ldm_layout import (
    LAYOUTS,
    TEXT_ENCODER_FOLDERS,
    TOKENIZER_FOLDERS,
    UNET_PREFIX,
    VAE_PREFIX,
    build_family_models,
    family_configs_from_folder,
    tiny_family_models,
    to_single_file,
    write_config_folder,
    write_single_file,
)
from safetensors.torch import load_file

from echodistill_core.families import FAMILIES_FOLDER
from echodistill_core.lab.tiny import TINY_NUM_MERGES
from echodistill_core.clip_tokenizer import build_clip_tokenizer

SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
}


def prefixed(prefix: str, *keys: str) -> list[str]:
    return [prefix + key for key in keys]


# Names the published files hold (UNet and VAE names follow the topology, not the widths).
COMMON_KEYS = prefixed(
    UNET_PREFIX, "time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight",
    "middle_block.0.in_layers.2.weight", "middle_block.2.emb_layers.1.bias", "out.0.weight", "out.2.bias",
) + prefixed(
    VAE_PREFIX, "encoder.down.0.block.1.conv2.weight", "encoder.down.1.block.0.nin_shortcut.weight",
    "encoder.down.2.downsample.conv.weight", "encoder.mid.attn_1.q.weight", "encoder.norm_out.bias",
    "decoder.mid.block_2.norm1.weight", "decoder.mid.attn_1.proj_out.weight", "decoder.up.0.block.2.conv1.weight",
    "decoder.up.1.block.0.nin_shortcut.weight", "decoder.up.3.upsample.conv.weight", "decoder.conv_out.weight",
    "quant_conv.weight", "post_quant_conv.bias",
)
SD_UNET_KEYS = prefixed(
    UNET_PREFIX, "input_blocks.1.1.proj_in.weight", "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
    "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight", "input_blocks.11.0.out_layers.3.weight",
    "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight", "output_blocks.2.1.conv.weight",
    "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight", "output_blocks.11.0.skip_connection.weight",
    "output_blocks.11.1.transformer_blocks.0.norm1.bias",
)
OPEN_CLIP_H_KEYS = (
    "token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
    "transformer.resblocks.1.ln_2.bias", "transformer.resblocks.2.mlp.c_proj.bias", "ln_final.weight",
    "text_projection", "logit_scale",
)
PUBLISHED_KEYS = {
    "sd1": SD_UNET_KEYS + prefixed(
        "cond_stage_model.transformer.text_model.", "embeddings.position_ids", "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight", "encoder.layers.1.self_attn.q_proj.weight",
        "encoder.layers.1.mlp.fc2.bias", "final_layer_norm.weight",
    ),
    "sd2": SD_UNET_KEYS + prefixed("cond_stage_model.model.", *OPEN_CLIP_H_KEYS),
    "sgm_sd2": SD_UNET_KEYS + prefixed("conditioner.embedders.0.model.", *OPEN_CLIP_H_KEYS),
    "sdxl": prefixed(
        UNET_PREFIX, "label_emb.0.0.weight", "label_emb.0.2.bias", "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight", "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.7.1.transformer_blocks.1.ff.net.2.weight", "input_blocks.8.0.emb_layers.1.weight",
        "middle_block.1.transformer_blocks.1.norm3.weight", "output_blocks.2.2.conv.weight",
        "output_blocks.5.2.conv.weight", "output_blocks.8.0.skip_connection.weight",
    ) + prefixed(
        "conditioner.embedders.0.transformer.text_model.", "embeddings.position_ids",
        "encoder.layers.1.layer_norm2.weight",
    ) + prefixed(
        "conditioner.embedders.1.model.", "positional_embedding", "transformer.resblocks.1.attn.in_proj_bias",
        "transformer.resblocks.1.mlp.c_fc.weight", "ln_final.bias", "text_projection", "logit_scale",
    ),
}
# Each layout's bundled full-size config folder, and how many tensors the published files hold under
# each prefix (2,515 in all for SDXL base 1.0).
FULL_SIZE = {
    "sd1": ("sd1", {UNET_PREFIX: 686, VAE_PREFIX: 248, "cond_stage_model.transformer.text_model.": 197}),
    "sd2": ("sd2-768-v", {UNET_PREFIX: 686, VAE_PREFIX: 248, "cond_stage_model.model.": 294}),
    "sgm_sd2": ("sd-turbo", {UNET_PREFIX: 686, VAE_PREFIX: 248, "conditioner.embedders.0.model.": 294}),
    "sdxl": ("sdxl", {UNET_PREFIX: 1680, VAE_PREFIX: 248, "conditioner.embedders.0.transformer.text_model.": 197,
                      "conditioner.embedders.1.model.": 390}),
}


@dataclass
class Written:
    layout: str
    path: Path
    config: Path
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list


@pytest.fixture(scope="module", params=list(LAYOUTS))
def written(request, tmp_path_factory) -> Written:
    """One layout's tiny models, their single file and their config folder."""
    layout = request.param
    unet, vae, text_encoders, _ = tiny_family_models(layout)
    folder = tmp_path_factory.mktemp(layout)
    path = write_single_file(folder / "model.safetensors", layout, unet, vae, text_encoders)
    config = write_config_folder(folder / "config", unet, vae, text_encoders, SCHEDULER)
    return Written(layout, path, config, unet, vae, text_encoders)


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    expected, actual = original.state_dict(), loaded.state_dict()
    assert actual.keys() == expected.keys()
    assert [key for key in expected if not torch.equal(actual[key], expected[key])] == []


def test_unet_and_vae_load_back_unchanged(written):
    options = dict(config=str(written.config), local_files_only=True)
    unet = UNet2DConditionModel.from_single_file(str(written.path), subfolder="unet", **options)
    vae = AutoencoderKL.from_single_file(str(written.path), subfolder="vae", **options)
    assert_same_weights(unet, written.unet)
    assert_same_weights(vae, written.vae)


def test_text_encoders_load_back_unchanged(written):
    checkpoint = load_file(written.path)
    for folder, encoder in zip(TEXT_ENCODER_FOLDERS, written.text_encoders):
        loaded = create_diffusers_clip_model_from_ldm(
            type(encoder), checkpoint, subfolder=folder, config=str(written.config), local_files_only=True
        )
        assert_same_weights(loaded, encoder)


def test_pipeline_loads_from_the_file_and_the_config_folder(written):
    """model_index.json names every component; only the tokenizers are passed in."""
    pipeline_class = StableDiffusionXLPipeline if written.layout == "sdxl" else StableDiffusionPipeline
    names = TOKENIZER_FOLDERS[: len(written.text_encoders)]
    tokenizers = {name: build_clip_tokenizer(TINY_NUM_MERGES) for name in names}
    pipeline = pipeline_class.from_single_file(
        str(written.path), config=str(written.config), local_files_only=True, **tokenizers
    )
    assert type(pipeline.scheduler).__name__ == SCHEDULER["_class_name"]
    for folder, encoder in zip(TEXT_ENCODER_FOLDERS, written.text_encoders):
        assert_same_weights(getattr(pipeline, folder), encoder)
    assert_same_weights(pipeline.unet, written.unet)


def test_keys_are_the_published_names(written):
    checkpoint = load_file(written.path)
    assert [key for key in COMMON_KEYS + PUBLISHED_KEYS[written.layout] if key not in checkpoint] == []
    prefixes = (UNET_PREFIX, VAE_PREFIX, *(slot.prefix for slot in LAYOUTS[written.layout]))
    assert [key for key in checkpoint if not key.startswith(prefixes)] == []


def test_full_size_configs_give_the_published_names(written):
    """The bundled family configs, built on the meta device, give the published tensor counts, and the tiny
    file's names are among theirs (it has fewer text layers and, for SDXL, fewer transformer blocks)."""
    folder, counts = FULL_SIZE[written.layout]
    with torch.device("meta"):
        models = build_family_models(family_configs_from_folder(FAMILIES_FOLDER / folder))
        full = to_single_file(written.layout, *models)
    assert {prefix: sum(key.startswith(prefix) for key in full) for prefix in counts} == counts
    assert len(full) == sum(counts.values())
    assert set(load_file(written.path)) <= set(full)


def test_shapes_follow_the_original_modules(written):
    """LDM's 1x1-conv VAE attention, SD 1's conv proj_in, OpenCLIP's fused in_proj and [width, dim] projection."""
    checkpoint = load_file(written.path)
    q = checkpoint[VAE_PREFIX + "encoder.mid.attn_1.q.weight"]
    assert q.shape == (q.shape[0], q.shape[0], 1, 1)
    proj_in = checkpoint[UNET_PREFIX + "input_blocks.4.1.proj_in.weight"]
    assert proj_in.dim() == (4 if written.layout == "sd1" else 2)
    for slot, encoder in zip(LAYOUTS[written.layout], written.text_encoders):
        if slot.open_clip:
            width = encoder.config.hidden_size
            assert checkpoint[slot.prefix + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
            assert checkpoint[slot.prefix + "text_projection"].shape[0] == width
            assert checkpoint[slot.prefix + "logit_scale"].shape == ()
        else:
            assert checkpoint[slot.prefix + "embeddings.position_ids"].dtype == torch.int64


def test_open_clip_h_holds_one_block_more_than_diffusers_uses():
    unet, vae, text_encoders, _ = tiny_family_models("sd2")
    state_dict = to_single_file("sd2", unet, vae, text_encoders)
    prefix = "cond_stage_model.model.transformer.resblocks."
    blocks = {key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)}
    assert blocks == {str(index) for index in range(text_encoders[0].config.num_hidden_layers + 1)}


def test_config_folder_rebuilds_the_same_architecture(written):
    unet, vae, text_encoders = build_family_models(family_configs_from_folder(written.config), seed=1)
    for rebuilt, original in zip((unet, vae, *text_encoders), (written.unet, written.vae, *written.text_encoders)):
        assert type(rebuilt) is type(original)
        shapes = {key: value.shape for key, value in original.state_dict().items()}
        assert {key: value.shape for key, value in rebuilt.state_dict().items()} == shapes


def test_dtype_casts_floats_only_and_extra_keys_are_added(tmp_path):
    unet, vae, text_encoders, _ = tiny_family_models("sd1")
    extra = {"v_pred": torch.tensor([]), "alphas_cumprod": torch.linspace(1, 0, 1000)}
    path = write_single_file(tmp_path / "half.safetensors", "sd1", unet, vae, text_encoders,
                             dtype=torch.float16, extra=extra)
    checkpoint = load_file(path)
    assert checkpoint["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert checkpoint[UNET_PREFIX + "out.2.weight"].dtype == torch.float16
    assert checkpoint["alphas_cumprod"].dtype == torch.float32 and "v_pred" in checkpoint


def test_text_encoder_count_must_match_the_layout():
    unet, vae, text_encoders, _ = tiny_family_models("sd1")
    with pytest.raises(ValueError, match="2 text encoder"):
        to_single_file("sdxl", unet, vae, text_encoders)
