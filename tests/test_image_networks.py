"""Image networks ComfyUI users have (CLIP vision, IP-Adapter, DINO, DINOv2), read offline as frozen backbones.

Tiny random models are written in each published key layout by exporters written here, independently of
the loader, and must come back giving the original model's features.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model, ViTConfig,
                          ViTModel)

from echodistill_core import image_networks
from echodistill_core.backbones import TEACHER_FEATURES, ImageBackbone
from echodistill_core.families import CheckpointError
from echodistill_core.image_networks import (ARCHITECTURES, ImageNetworkFiles, IPAdapterFeatures, IPAdapterProjection,
                                             bundled_config, load_clip_vision, load_dino,
                                             load_ip_adapter_projection)
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer
from conftest import make_concept, tiny_config
from test_checkpoints import Evil

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 16


def randomised(model):
    """Every parameter random (layer norms and layer scales too), so a weight loaded into the wrong place shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.3)
    return model.eval()


def tiny_clip():
    return randomised(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
        patch_size=8, projection_dim=24, hidden_act="gelu")))


def tiny_dinov2(swiglu=False):
    return randomised(Dinov2Model(Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE, patch_size=8,
        use_swiglu_ffn=swiglu)))


def tiny_dino():
    return randomised(ViTModel(ViTConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
        patch_size=8, layer_norm_eps=1e-6), add_pooling_layer=False))


def normalised(images, mean, std):
    """Images in [-1, 1] as a model's pixel values, normalised by hand."""
    return ((images + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def features(model, images, mean, std):
    """The model's own features of images in [-1, 1] at its size: the image embeddings or the CLS token."""
    output = model(pixel_values=normalised(images, mean, std))
    if isinstance(model, CLIPVisionModelWithProjection):
        return output.image_embeds
    return output.last_hidden_state[:, 0]  # after the final layer norm, for DINO and DINOv2 alike


def images(count=2):
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1


def open_clip_layout(model):
    """A transformers CLIP vision tower's weights under OpenCLIP's names (`visual.*`)."""
    state, tower = model.state_dict(), "vision_model."
    names = {"conv1.weight": "embeddings.patch_embedding.weight", "class_embedding": "embeddings.class_embedding",
             "positional_embedding": "embeddings.position_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
             "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
             "ln_post.bias": "post_layernorm.bias"}
    layout = {f"visual.{theirs}": state[tower + ours] for theirs, ours in names.items()}
    layout["visual.proj"] = state["visual_projection.weight"].T  # OpenCLIP: x @ proj
    block_names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for index in range(model.config.num_hidden_layers):
        block, layer = f"visual.transformer.resblocks.{index}.", f"{tower}encoder.layers.{index}."
        for kind in ("weight", "bias"):
            layout |= {f"{block}{theirs}.{kind}": state[f"{layer}{ours}.{kind}"] for theirs, ours in block_names.items()}
            layout[f"{block}attn.in_proj_{kind}"] = torch.cat([state[f"{layer}self_attn.{name}_proj.{kind}"]
                                                                for name in "qkv"])
    return {key: value.contiguous() for key, value in layout.items()}


def facebookresearch_layout(published, layers):
    """DINO / DINOv2 weights in transformers' published layout under the facebookresearch repositories' names."""
    layout = {"cls_token": published["embeddings.cls_token"], "pos_embed": published["embeddings.position_embeddings"],
              "patch_embed.proj.weight": published["embeddings.patch_embeddings.projection.weight"],
              "patch_embed.proj.bias": published["embeddings.patch_embeddings.projection.bias"],
              "norm.weight": published["layernorm.weight"], "norm.bias": published["layernorm.bias"]}
    dinov2 = "embeddings.mask_token" in published
    if dinov2:
        layout["mask_token"] = published["embeddings.mask_token"]
    for index in range(layers):
        block, layer = f"blocks.{index}.", f"encoder.layer.{index}."
        names = ({"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                  "mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.weights_out"} if dinov2 else
                 {"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                  "mlp.fc2": "output.dense"})
        names["attn.proj"] = "attention.output.dense"
        for kind in ("weight", "bias"):
            layout |= {f"{block}{theirs}.{kind}": published[f"{layer}{ours}.{kind}"]
                       for theirs, ours in names.items() if f"{layer}{ours}.{kind}" in published}
            layout[f"{block}attn.qkv.{kind}"] = torch.cat([published[f"{layer}attention.attention.{name}.{kind}"]
                                                           for name in ("query", "key", "value")])
        if dinov2:
            layout |= {f"{block}ls{n}.gamma": published[f"{layer}layer_scale{n}.lambda1"] for n in (1, 2)}
    return layout


def published_file(model, folder):
    """The model as transformers publishes it (a folder with config.json and model.safetensors); its tensors."""
    model.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def clip_file(clip, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_vision") / "clip_vision.safetensors"
    save_file(clip.state_dict(), path)
    return path


# CLIP vision

@pytest.mark.parametrize("layout, name", [("transformers", "clip_vision.safetensors"),
                                          ("transformers", "clip_vision.bin"),
                                          ("OpenCLIP", "open_clip.safetensors"),
                                          ("full OpenCLIP model under a prefix", "open_clip_model.safetensors")])
def test_clip_vision_file_gives_the_towers_image_embeds(clip, tmp_path, layout, name):
    state = clip.state_dict() if layout == "transformers" else open_clip_layout(clip)
    if layout.startswith("full"):  # a text tower beside it, which is not read
        state = {f"model.{key}": value for key, value in state.items()} | {
            "model.token_embedding.weight": torch.zeros(10, 8), "model.ln_final.weight": torch.ones(8)}
    path = tmp_path / name
    torch.save(state, path) if name.endswith(".bin") else save_file(state, path)
    backbone = load_clip_vision(path, config=clip.config)
    x = images()
    torch.testing.assert_close(backbone(x), features(clip, x, CLIP_MEAN, CLIP_STD))
    assert backbone.feature_dim == 24 and backbone.space == "image"
    assert backbone.name == f"CLIP ViT of width 32, 2 layers, patch 8 at 16 px ({name})"


def test_a_clip_vision_file_of_unknown_size_needs_its_config(clip_file):
    with pytest.raises(CheckpointError, match="clip_vision.safetensors is a CLIP ViT of width 32, 2 layers, patch 8 "
                       r"at 16 px giving 24-wide embeddings, which is none of the bundled architectures \(CLIP ViT-H/14, "
                       r"CLIP ViT-L/14, CLIP ViT-bigG/14\)"):
        load_clip_vision(clip_file)


@pytest.mark.parametrize("change, problem", [
    (lambda state: state.pop("vision_model.encoder.layers.1.mlp.fc2.bias"), "lacks vision_model.encoder.layers.1"),
    (lambda state: state.update({"vision_model.encoder.layers.0.extra": torch.zeros(1)}), "has vision_model.encoder"),
    (lambda state: state.update({"vision_model.post_layernorm.bias": torch.zeros(5)}), r"of shape \(5,\)"),
])
def test_an_incomplete_or_foreign_tower_is_refused(clip, tmp_path, change, problem):
    state = dict(clip.state_dict())
    change(state)
    save_file(state, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match=f"odd.safetensors does not fit CLIP ViT .*{problem}.*download it again"):
        load_clip_vision(tmp_path / "odd.safetensors", config=clip.config)


@pytest.mark.parametrize("state, what", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, "is a LoRA"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, "is a Stable Diffusion checkpoint"),
    ({"text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)}, "is a text encoder"),
    ({"image_proj.proj.weight": torch.zeros(8, 4)}, "is an IP-Adapter"),
    ({"embeddings.patch_embeddings.projection.weight": torch.zeros(8, 3, 2, 2)}, "is a DINO or DINOv2 ViT"),
])
def test_a_file_that_is_no_clip_vision_tower_is_refused_saying_what_it_is(tmp_path, state, what):
    save_file(state, tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match=f"wrong.safetensors {what}.*, not a CLIP vision tower; put a CLIP "
                       "vision model in ComfyUI's models/clip_vision folder"):
        load_clip_vision(tmp_path / "wrong.safetensors")


def test_missing_empty_truncated_and_code_holding_files_are_refused_naming_them(clip_file, tmp_path):
    with pytest.raises(CheckpointError, match="nothing.safetensors does not exist; put a CLIP vision model in"):
        load_clip_vision(tmp_path / "nothing.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(clip_file.read_bytes()[: clip_file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors is corrupt or truncated.*download it again"):
        load_clip_vision(cut)
    cut.write_bytes(b"")
    with pytest.raises(CheckpointError, match="cut.safetensors is empty"):
        load_clip_vision(cut)
    marker, evil = tmp_path / "pwned", tmp_path / "clip_vision.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "payload": Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="clip_vision.pt.*never executes a pickle"):
        load_clip_vision(evil)
    assert not marker.exists()


# DINO and DINOv2

DINO_CASES = {
    "DINOv2 folder": (tiny_dinov2, "folder"),
    "DINOv2 file": (tiny_dinov2, "transformers"),
    "DINOv2 facebookresearch file": (tiny_dinov2, "facebookresearch"),
    "DINOv2 SwiGLU facebookresearch file": (lambda: tiny_dinov2(swiglu=True), "facebookresearch"),
    "DINO folder": (tiny_dino, "folder"),
    "DINO file": (tiny_dino, "transformers"),
    "DINO facebookresearch file": (tiny_dino, "facebookresearch"),
}


@pytest.mark.parametrize("case", DINO_CASES)
def test_dino_folder_and_files_give_the_normalised_cls_token(tmp_path, case):
    make, layout = DINO_CASES[case]
    model = make()
    published = published_file(model, tmp_path / "folder")
    if layout == "folder":
        backbone = load_dino(tmp_path / "folder")
    else:
        state = published if layout == "transformers" else facebookresearch_layout(published, 2)
        save_file(state, tmp_path / "dino.safetensors")
        backbone = load_dino(tmp_path / "dino.safetensors", config=model.config)
    x = images()
    torch.testing.assert_close(backbone(x), features(model, x, IMAGENET_MEAN, IMAGENET_STD))
    assert backbone.feature_dim == 32 and backbone.input_size == SIZE
    family = "DINOv2" if isinstance(model, Dinov2Model) else "DINO"
    assert backbone.name.startswith(f"{family} ViT of width 32, 2 layers, patch 8 at 16 px (")


def test_dino_input_size_can_be_chosen(tmp_path):
    model = tiny_dino()
    model.save_pretrained(tmp_path / "dino")
    backbone = load_dino(tmp_path / "dino", input_size=24)
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    pixels = normalised(x, IMAGENET_MEAN, IMAGENET_STD)
    wanted = model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    torch.testing.assert_close(backbone(x), wanted)
    assert backbone.name.endswith("at 24 px (dino)")


def test_a_clip_vision_tower_is_not_taken_for_dino(clip_file, clip, tmp_path):
    with pytest.raises(CheckpointError, match="clip_vision.safetensors is a CLIP vision tower, not a DINO or DINOv2"):
        load_dino(clip_file)
    clip.save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match="clip holds a 'clip_vision_model' model, not a DINOv2 or DINO"):
        load_dino(tmp_path / "clip")


def test_normalisation_follows_the_model_type(clip):
    for model, (mean, std) in [(clip, (CLIP_MEAN, CLIP_STD)), (tiny_dinov2(), (IMAGENET_MEAN, IMAGENET_STD)),
                               (tiny_dino(), (IMAGENET_MEAN, IMAGENET_STD))]:
        backbone = ImageBackbone.from_transformers(model)
        assert torch.equal(backbone.mean, torch.tensor(mean).view(1, 3, 1, 1))
        assert torch.equal(backbone.std, torch.tensor(std).view(1, 3, 1, 1))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_bundled_architecture_is_recognised_from_its_shapes(name):
    config = bundled_config(name)
    model_class, options = image_networks.MODELS[config.model_type]
    with torch.device("meta"):
        model = model_class(config, **options)
    layouts = [model.state_dict()] + ([open_clip_layout(model)] if config.model_type == "clip_vision_model" else [])
    for state in layouts:
        kind, tower = image_networks._tower(state, (image_networks.CLIP_VISION, image_networks.DINO), name)
        matched = image_networks._bundled_match(image_networks._identity(kind, tower, name), name)
        assert matched.to_dict() == config.to_dict()
    assert image_networks._label(config) == ARCHITECTURES[name]


@pytest.mark.parametrize("name, millions, activation", [
    ("clip-vit-h-14", 632.08, "gelu"), ("clip-vit-l-14", 303.97, "quick_gelu"),
    ("clip-vit-l-14-336", 304.29, "quick_gelu"), ("clip-vit-bigg-14", 1844.91, "gelu")])
def test_bundled_clip_towers_have_openclips_published_sizes(name, millions, activation):
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(bundled_config(name))
    assert round(sum(parameter.numel() for parameter in model.parameters()) / 1e6, 2) == millions
    assert model.config.hidden_act == activation


# IP-Adapter

def ip_adapter_state(clip_dim=24, tokens=4, dim=8):
    generator = torch.Generator().manual_seed(2)
    return {"image_proj": {"proj.weight": torch.randn(tokens * dim, clip_dim, generator=generator),
                           "proj.bias": torch.randn(tokens * dim, generator=generator),
                           "norm.weight": torch.randn(dim, generator=generator),
                           "norm.bias": torch.randn(dim, generator=generator)},
            "ip_adapter": {"1.to_k_ip.weight": torch.randn(dim, dim, generator=generator)}}


def flat(nested):
    return {f"{module}.{key}": value for module, tensors in nested.items() for key, value in tensors.items()}


def tokens_by_hand(weights, image_embeds, tokens=4):
    """Linear, split into tokens, LayerNorm (eps 1e-5), written out."""
    projected = (image_embeds @ weights["proj.weight"].T + weights["proj.bias"]).view(len(image_embeds), tokens, -1)
    mean, variance = projected.mean(-1, keepdim=True), projected.var(-1, unbiased=False, keepdim=True)
    return (projected - mean) / torch.sqrt(variance + 1e-5) * weights["norm.weight"] + weights["norm.bias"]


@pytest.mark.parametrize("name", ["ip-adapter_sd15.safetensors", "ip-adapter_sd15.bin"])
def test_ip_adapter_projection_gives_its_image_tokens(tmp_path, name):
    nested = ip_adapter_state()
    path = tmp_path / name
    torch.save(nested, path) if name.endswith(".bin") else save_file(flat(nested), path)
    projection = load_ip_adapter_projection(path)
    image_embeds = torch.randn(2, 24)
    tokens = projection(image_embeds)
    assert tokens.shape == (2, 4, 8) and projection.name == name
    torch.testing.assert_close(tokens, tokens_by_hand(nested["image_proj"], image_embeds))


def test_ip_adapter_features_are_the_tokens_of_the_clip_embeds(clip, clip_file, tmp_path):
    nested = ip_adapter_state()
    save_file(flat(nested), tmp_path / "ip-adapter_sd15.safetensors")
    f = IPAdapterFeatures(load_clip_vision(clip_file, config=clip.config),
                          load_ip_adapter_projection(tmp_path / "ip-adapter_sd15.safetensors"))
    x = images()
    wanted = tokens_by_hand(nested["image_proj"], features(clip, x, CLIP_MEAN, CLIP_STD))
    torch.testing.assert_close(f(x), wanted)
    assert (f.space, f.tokens, f.feature_dim) == ("image", 4, 8)
    assert f.name.startswith("ip-adapter_sd15.safetensors tokens of CLIP ViT")


def test_an_ip_adapter_for_another_clip_names_the_clip_vision_it_needs(clip_file, clip):
    with pytest.raises(CheckpointError, match="IP-Adapter reads CLIP image embeddings of size 1024, but CLIP ViT .* "
                       "gives 24: choose a CLIP ViT-H/14 clip_vision file"):
        IPAdapterFeatures(load_clip_vision(clip_file, config=clip.config), IPAdapterProjection(1024, 4, 8))


def test_ip_adapter_plus_and_other_files_are_refused(tmp_path, clip_file):
    plus = {"image_proj.latents": torch.zeros(1, 16, 8), "image_proj.proj_in.weight": torch.zeros(8, 24),
            "image_proj.layers.0.0.norm1.weight": torch.zeros(8), "ip_adapter.1.to_k_ip.weight": torch.zeros(8, 8)}
    save_file(plus, tmp_path / "ip-adapter-plus_sd15.safetensors")
    with pytest.raises(CheckpointError, match="ip-adapter-plus_sd15.safetensors is an IP-Adapter variant.*"
                       "image_proj.latents.*Only the plain IP-Adapter projection is supported"):
        load_ip_adapter_projection(tmp_path / "ip-adapter-plus_sd15.safetensors")
    with pytest.raises(CheckpointError, match="clip_vision.safetensors is a CLIP vision tower, not an IP-Adapter; "
                       "put an IP-Adapter .* in ComfyUI's models/ipadapter folder"):
        load_ip_adapter_projection(clip_file)


# Frozen, yet differentiable in the images

def test_backbones_are_frozen_but_pass_gradients_to_the_images(clip, clip_file, tmp_path):
    tiny_dinov2().save_pretrained(tmp_path / "dinov2")
    save_file(flat(ip_adapter_state()), tmp_path / "ip.safetensors")
    networks = [load_clip_vision(clip_file, config=clip.config), load_dino(tmp_path / "dinov2"),
                IPAdapterFeatures(load_clip_vision(clip_file, config=clip.config),
                                  load_ip_adapter_projection(tmp_path / "ip.safetensors"))]
    for network in networks:
        assert not any(parameter.requires_grad for parameter in network.parameters())
        x = images().requires_grad_()
        network(x).square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


# Choosing a run's networks

def test_the_default_networks_are_the_teachers_features():
    networks = image_networks.choose_networks()
    assert networks.discriminators == [TEACHER_FEATURES] and networks.feature == TEACHER_FEATURES
    assert networks.image_networks() == [] and networks.weight_bytes(2) == 0
    assert image_networks.choose_networks(feature="none").feature is None


def test_a_choice_names_the_files_it_lacks_and_where_they_go():
    with pytest.raises(CheckpointError, match="the paper discriminator set needs the dino and dinov2 files: "
                       "give DINO ViT-S/16 .*; give DINOv2 ViT-L/14"):
        image_networks.choose_networks("paper", files=ImageNetworkFiles(clip_vision=Path("clip.safetensors")))
    with pytest.raises(CheckpointError, match="the ip-adapter feature network needs the clip_vision and ip_adapter "
                       "files: put a CLIP vision model in ComfyUI's models/clip_vision"):
        image_networks.choose_networks(feature="ip-adapter")


def test_the_papers_networks_share_one_clip_tower_and_train(clip, clip_file, tmp_path):
    save_file(flat(ip_adapter_state()), tmp_path / "ip-adapter_sd15.safetensors")
    tiny_dino().save_pretrained(tmp_path / "dino")
    tiny_dinov2().save_pretrained(tmp_path / "dinov2")
    files = ImageNetworkFiles(clip_vision=load_clip_vision(clip_file, config=clip.config),
                              ip_adapter=tmp_path / "ip-adapter_sd15.safetensors",
                              dino=tmp_path / "dino", dinov2=tmp_path / "dinov2")
    networks = image_networks.choose_networks("paper", "ip-adapter", files)
    dino, dinov2, clip_vision = networks.discriminators
    assert (dino.name.startswith("DINO "), dinov2.name.startswith("DINOv2 ")) == (True, True)
    assert networks.feature.clip_vision is clip_vision  # one CLIP tower for the discriminator and f
    unique = {id(p): p for m in (dino, dinov2, networks.feature) for p in m.parameters()}
    assert networks.weight_bytes(2) == 2 * sum(p.numel() for p in unique.values())

    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    config = tiny_config(steps=1)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config,
                                 discriminator_backbones=networks.discriminators, feature_network=networks.feature)
    trainer.train()
    assert trainer.history[-1]["feature"] > 0
    summary = "\n".join(trainer.describe())
    assert "discriminators: DINO" in summary and "feature x1 on ip-adapter_sd15.safetensors tokens of CLIP" in summary
