"""The image networks ComfyUI users already have, read offline as frozen EchoDistill image backbones.

- A CLIP vision tower from `models/clip_vision`, in transformers' or OpenCLIP's key layout: its image
  embeddings (the IP-Adapter discriminator's backbone).
- IP-Adapter's image projection from `models/ipadapter` on that tower: the four image tokens of the
  paper's feature network f.
- A DINO or DINOv2 ViT, as a transformers folder or one file in the transformers or facebookresearch
  layout: its final-normalised CLS token (the paper's other two discriminator backbones).

A file holds weights only. Its shapes (width, layer count, patch size, position count and so image size,
projection size) pick a bundled config in `assets/image_networks/` (SOURCES.md there gives each number's
source). Attention heads cannot be read from shapes, so other sizes need an explicit `config=`. Files are
read by `checkpoints.read_checkpoint` (safetensors, or pickles through the weights-only unpickler),
transformers builds the model from local data only, and every weight of the network must be in the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModelWithProjection, Dinov2Model, PretrainedConfig, ViTModel

from .backbones import TEACHER_FEATURES, ImageBackbone
from .checkpoints import read_checkpoint
from .compat import transformers_dtype
from .families import CheckpointError

NETWORKS_FOLDER = Path(__file__).parent / "assets" / "image_networks"
ARCHITECTURES = {  # bundled config (NETWORKS_FOLDER / f"{name}.json") -> what the user sees
    "clip-vit-h-14": "CLIP ViT-H/14",
    "clip-vit-l-14": "CLIP ViT-L/14",
    "clip-vit-l-14-336": "CLIP ViT-L/14",
    "clip-vit-bigg-14": "CLIP ViT-bigG/14",
    "dinov2-vits14": "DINOv2 ViT-S/14",
    "dinov2-vitb14": "DINOv2 ViT-B/14",
    "dinov2-vitl14": "DINOv2 ViT-L/14",
    "dinov2-vitg14": "DINOv2 ViT-g/14",
    "dino-vits16": "DINO ViT-S/16",
    "dino-vits8": "DINO ViT-S/8",
    "dino-vitb16": "DINO ViT-B/16",
    "dino-vitb8": "DINO ViT-B/8",
}
FAMILIES = {"clip_vision_model": "CLIP", "dinov2": "DINOv2", "vit": "DINO"}  # transformers model type -> name
MODELS = {  # transformers model type -> the class that gives the features, and its options
    "clip_vision_model": (CLIPVisionModelWithProjection, {}),
    "dinov2": (Dinov2Model, {}),
    "vit": (ViTModel, {"add_pooling_layer": False}),  # DINO has no pooler: its feature is the CLS token
}
IDENTITY = ("model_type", "hidden_size", "num_hidden_layers", "patch_size", "image_size", "projection_dim")

CLIP_VISION, DINO = "a CLIP vision tower", "a DINO or DINOv2 ViT"
ADVICE = {
    CLIP_VISION: "put a CLIP vision model in ComfyUI's models/clip_vision folder (IP-Adapter SD 1.5 reads "
                 "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)",
    DINO: "give a DINO or DINOv2 model: a transformers folder (config.json, model.safetensors) or its weights file",
}
LAYOUTS = {  # a key that only this layout has, after any leading prefix -> (what the file holds, its layout)
    "vision_model.embeddings.patch_embedding.weight": (CLIP_VISION, "transformers"),
    "visual.conv1.weight": (CLIP_VISION, "OpenCLIP"),
    "embeddings.patch_embeddings.projection.weight": (DINO, "transformers"),
    "patch_embed.proj.weight": (DINO, "facebookresearch"),
}
SHAPE_KEYS = {  # what a file holds -> its patch embedding, position embedding and a layer's index, in transformers keys
    CLIP_VISION: ("vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
                  r"^vision_model\.encoder\.layers\.(\d+)\."),
    DINO: ("embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings",
           r"^(?:encoder\.layer|layers)\.(\d+)\."),
}
IP_ADAPTER_ADVICE = "put an IP-Adapter such as ip-adapter_sd15.safetensors in ComfyUI's models/ipadapter folder"
OTHER_FILES = (  # a fragment of a key -> what a file holding it is
    ("image_proj.", "an IP-Adapter (it belongs in models/ipadapter)"),
    ("lora", "a LoRA (it belongs in models/loras)"),
    ("model.diffusion_model.", "a Stable Diffusion checkpoint (it belongs in models/checkpoints)"),
    ("text_model.", "a text encoder (it belongs in models/text_encoders)"),
    ("token_embedding", "a text encoder (it belongs in models/text_encoders)"),
)

# Key layouts converted to transformers' published one: (pattern, replacement) in order, the first match
# wins; a tuple of replacements splits the tensor into equal parts along its first axis (fused q, k, v).
_RESBLOCK, _LAYER = r"^transformer\.resblocks\.(\d+)\.", r"vision_model.encoder.layers.\1."
OPEN_CLIP_RULES = [
    (r"^conv1\.", "vision_model.embeddings.patch_embedding."),
    (r"^class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^ln_pre\.", "vision_model.pre_layrnorm."),  # sic: transformers' spelling
    (r"^ln_post\.", "vision_model.post_layernorm."),
    (r"^proj$", "visual_projection.weight"),
    (_RESBLOCK + r"ln_1\.", _LAYER + "layer_norm1."),
    (_RESBLOCK + r"ln_2\.", _LAYER + "layer_norm2."),
    (_RESBLOCK + r"attn\.in_proj_", tuple(_LAYER + f"self_attn.{name}_proj." for name in "qkv")),
    (_RESBLOCK + r"attn\.out_proj\.", _LAYER + "self_attn.out_proj."),
    (_RESBLOCK + r"mlp\.c_fc\.", _LAYER + "mlp.fc1."),
    (_RESBLOCK + r"mlp\.c_proj\.", _LAYER + "mlp.fc2."),
]
_BLOCK, _ENCODER = r"^blocks\.(\d+)\.", r"encoder.layer.\1."
FACEBOOK_DINO_RULES = [  # DINO and DINOv2 share these
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^norm\.", "layernorm."),
    (_BLOCK + r"attn\.qkv\.", tuple(_ENCODER + f"attention.attention.{name}." for name in ("query", "key", "value"))),
    (_BLOCK + r"attn\.proj\.", _ENCODER + "attention.output.dense."),
]
FACEBOOK_DINOV2_RULES = FACEBOOK_DINO_RULES + [
    (_BLOCK + r"ls(\d)\.gamma$", _ENCODER + r"layer_scale\2.lambda1"),
    (_BLOCK + r"mlp\.w12\.", _ENCODER + "mlp.weights_in."),  # ViT-g's SwiGLU
    (_BLOCK + r"mlp\.w3\.", _ENCODER + "mlp.weights_out."),
    (_BLOCK, _ENCODER),  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names
]
FACEBOOK_DINOV1_RULES = FACEBOOK_DINO_RULES + [
    (_BLOCK + r"norm1\.", _ENCODER + "layernorm_before."),
    (_BLOCK + r"norm2\.", _ENCODER + "layernorm_after."),
    (_BLOCK + r"mlp\.fc1\.", _ENCODER + "intermediate.dense."),
    (_BLOCK + r"mlp\.fc2\.", _ENCODER + "output.dense."),
]


def load_clip_vision(path: str | Path, *, config: PretrainedConfig | None = None,
                     dtype: torch.dtype = torch.float32) -> ImageBackbone:
    """A CLIP vision tower file from ComfyUI's models/clip_vision, frozen: images in [-1, 1] [B, 3, H, W] ->
    image embeddings [B, projection_dim], seen at the config's size (224 or 336 px) with CLIP's mean and std.

    Keys may be transformers' (`vision_model.`, `visual_projection.`) or OpenCLIP's (`visual.`), after any
    leading prefix; the rest of the file (a full CLIP model's text tower) is not read. `config` (a
    CLIPVisionConfig) replaces the bundled config that the shapes choose.
    """
    return _from_file(Path(path), (CLIP_VISION,), config, None, dtype)


def load_dino(path: str | Path, *, config: PretrainedConfig | None = None, input_size: int | None = None,
              dtype: torch.dtype = torch.float32) -> ImageBackbone:
    """A DINOv2 (ViT-S/B/L/g /14) or DINO (ViT-S/B /16 or /8) model, frozen: images in [-1, 1] [B, 3, H, W] ->
    the final-normalised CLS token [B, hidden_size], with ImageNet's mean and std.

    `path` is a transformers folder (config.json and weights) or one weights file in the transformers or
    the facebookresearch key layout. `input_size` defaults to the model's own: 518 px for DINOv2, 224 for
    DINO. `config` (a Dinov2Config or ViTConfig) replaces the folder's or the bundled one.
    """
    path = Path(path)
    if path.is_dir():
        return _from_folder(path, ("dinov2", "vit"), config, input_size, dtype)
    return _from_file(path, (DINO,), config, input_size, dtype)


class IPAdapterProjection(nn.Module):
    """IP-Adapter's image projection: CLIP image embeddings [B, clip_dim] -> image tokens [B, tokens, dim],
    a Linear to tokens * dim split into tokens, each layer-normalised."""

    def __init__(self, clip_dim: int, tokens: int, dim: int, name: str = "IP-Adapter"):
        super().__init__()
        self.tokens, self.name = tokens, name
        self.proj = nn.Linear(clip_dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(image_embeds).view(len(image_embeds), self.tokens, -1))


PLAIN_PROJECTION = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}


def load_ip_adapter_projection(path: str | Path) -> IPAdapterProjection:
    """The image projection of an IP-Adapter file from models/ipadapter (`ip-adapter_sd15.safetensors`, or
    the `.bin` of nested dictionaries), frozen, in float32. Its cross-attention weights are not read."""
    path = Path(path)
    state = _read(path, IP_ADAPTER_ADVICE)
    weights = {key.removeprefix("image_proj."): value for key, value in state.items() if key.startswith("image_proj.")}
    if not weights:
        raise CheckpointError(f"{path.name} is {_contents(state)}, not an IP-Adapter; {IP_ADAPTER_ADVICE}")
    other = sorted(set(weights) - PLAIN_PROJECTION)
    if other:
        raise CheckpointError(
            f"{path.name} is an IP-Adapter variant whose image projection is more than a Linear and a LayerNorm "
            f"(it has image_proj.{other[0]}, as IP-Adapter Plus's resampler or FaceID's MLP do). Only the plain "
            "IP-Adapter projection is supported: use ip-adapter_sd15.safetensors"
        )
    missing = sorted(PLAIN_PROJECTION - set(weights))
    if missing:
        raise CheckpointError(f"{path.name} lacks image_proj.{missing[0]}: the file is incomplete; download it again")
    dim, (out_features, clip_dim) = len(weights["norm.weight"]), weights["proj.weight"].shape
    projection = IPAdapterProjection(clip_dim, out_features // dim, dim, name=path.name)
    projection.load_state_dict(weights)
    return projection.requires_grad_(False).eval()


class IPAdapterFeatures(nn.Module):
    """The paper's feature network f: IP-Adapter's image tokens of a CLIP vision tower's image embeddings.

    Images in [-1, 1] [B, 3, H, W] -> tokens [B, tokens, feature_dim] (4 x 768 for IP-Adapter SD 1.5 on CLIP
    ViT-H/14); L_feature takes the cosine over the last axis. Frozen, differentiable in the images.
    """

    space = "image"

    def __init__(self, clip_vision: ImageBackbone, projection: IPAdapterProjection):
        super().__init__()
        if clip_vision.feature_dim != projection.proj.in_features:
            needed = [label for name, label in ARCHITECTURES.items()
                      if getattr(bundled_config(name), "projection_dim", None) == projection.proj.in_features]
            raise CheckpointError(
                f"{projection.name} reads CLIP image embeddings of size {projection.proj.in_features}, but "
                f"{clip_vision.name} gives {clip_vision.feature_dim}: choose a {' or '.join(needed) or 'matching'} "
                "clip_vision file (IP-Adapter SD 1.5 needs CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)"
            )
        self.clip_vision, self.projection = clip_vision, projection.requires_grad_(False).eval()
        self.tokens, self.feature_dim = projection.tokens, projection.norm.normalized_shape[0]
        self.name = f"{projection.name} tokens of {clip_vision.name}"

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.projection(self.clip_vision(images))


def bundled_config(name: str) -> PretrainedConfig:
    """A bundled architecture's transformers config, e.g. "clip-vit-h-14" (see ARCHITECTURES)."""
    return AutoConfig.for_model(**json.loads((NETWORKS_FOLDER / f"{name}.json").read_text()))


def _read(path: Path, advice: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {advice}")
    return read_checkpoint(path)


def _advice(kinds: tuple[str, ...]) -> str:
    return " or ".join(ADVICE[kind] for kind in kinds)


def _from_file(path: Path, kinds: tuple[str, ...], config: PretrainedConfig | None, input_size: int | None,
               dtype: torch.dtype) -> ImageBackbone:
    """The backbone of whichever of `kinds` the file holds, its config chosen from its shapes unless given."""
    kind, tower = _tower(_read(path, _advice(kinds)), kinds, path.name)
    config = config or _bundled_match(_identity(kind, tower, path.name), path.name)
    return _backbone(config, tower, path.name, input_size, dtype)


def _from_folder(path: Path, model_types: tuple[str, ...], config: PretrainedConfig | None,
                 input_size: int | None, dtype: torch.dtype) -> ImageBackbone:
    if config is None:
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"{path.name} has no readable config.json ({error}); a transformers folder holds config.json "
                "and model.safetensors"
            ) from error
    if config.model_type not in model_types:
        wanted = " or ".join(FAMILIES[model_type] for model_type in model_types)
        raise CheckpointError(f"{path.name} holds a {config.model_type!r} model, not a {wanted} vision model")
    return _backbone(config, path, path.name, input_size, dtype)


def _tower(state: dict[str, torch.Tensor], kinds: tuple[str, ...], source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The first of `kinds` found in a file, and its tensors (after the layout's key) in transformers' key layout."""
    for kind in kinds:
        for anchor, (holds, layout) in LAYOUTS.items():
            key = _key_ending(state, anchor) if holds == kind else None
            if key is not None:
                prefix = key.removesuffix(anchor)
                tensors = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
                return kind, _in_transformers_layout(kind, layout, tensors)
    raise CheckpointError(f"{source} is {_contents(state)}, not {' or '.join(kinds)}; {_advice(kinds)}")


def _key_ending(state: dict[str, torch.Tensor], anchor: str) -> str | None:
    return next((key for key in state if key == anchor or key.endswith("." + anchor)), None)


def _contents(state: dict[str, torch.Tensor]) -> str:
    """What a file holds, told from its keys, for the error that refuses it."""
    held = [kind for anchor, (kind, _) in LAYOUTS.items() if _key_ending(state, anchor) is not None]
    others = (what for fragment, what in OTHER_FILES if any(fragment in key.lower() for key in state))
    return held[0] if held else next(others, "no image network this pack knows")


def _in_transformers_layout(kind: str, layout: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if layout == "OpenCLIP":
        visual = {key.removeprefix("visual."): value for key, value in tensors.items() if key.startswith("visual.")}
        if "proj" in visual:  # OpenCLIP computes x @ proj [width, dim]; a Linear x @ weight.T
            visual["proj"] = visual["proj"].t().contiguous()
        return _renamed(visual, OPEN_CLIP_RULES)
    if layout == "facebookresearch":
        return _renamed(tensors, FACEBOOK_DINOV2_RULES if "mask_token" in tensors else FACEBOOK_DINOV1_RULES)
    if kind == CLIP_VISION:  # a full CLIP model's text tower stays unread
        return {key: value for key, value in tensors.items() if key.startswith(("vision_model.", "visual_projection."))}
    return tensors


def _renamed(tensors: dict[str, torch.Tensor], rules: list) -> dict[str, torch.Tensor]:
    """`tensors` under the names `rules` give; a key no rule matches keeps its name (and is refused later)."""
    renamed = {}
    for key, value in tensors.items():
        pattern, target = next(((p, t) for p, t in rules if re.search(p, key)), (None, None))
        if pattern is None:
            renamed[key] = value
        elif isinstance(target, tuple):
            renamed |= {re.sub(pattern, part_target, key): part
                        for part_target, part in zip(target, value.chunk(len(target)))}
        else:
            renamed[re.sub(pattern, target, key)] = value
    return renamed


def _identity(kind: str, tower: dict[str, torch.Tensor], source: str) -> dict:
    """The config values an architecture is recognised by (IDENTITY), read from its weights: the patch
    embedding [width, 3, patch, patch], the positions (a class token and a square grid of patches), the layers."""
    patch_key, position_key, layer_pattern = SHAPE_KEYS[kind]
    width, _, _, patch_size = tower[patch_key].shape
    positions = _required(tower, position_key, source).shape[-2]
    layers = 1 + max((int(match[1]) for key in tower if (match := re.match(layer_pattern, key))), default=-1)
    if kind == CLIP_VISION:
        model_type, projection_dim = "clip_vision_model", _required(tower, "visual_projection.weight", source).shape[0]
    else:
        model_type, projection_dim = "dinov2" if "embeddings.mask_token" in tower else "vit", None
    return dict(model_type=model_type, hidden_size=width, num_hidden_layers=layers, patch_size=patch_size,
                image_size=math.isqrt(positions - 1) * patch_size, projection_dim=projection_dim)


def _required(tower: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in tower:
        raise CheckpointError(f"{source} lacks {key}: the file is incomplete or another network; download it again")
    return tower[key]


def _identity_of(config: PretrainedConfig) -> dict:
    return {field: getattr(config, field, None) for field in IDENTITY}


def _describe(identity: dict) -> str:
    return (f"{FAMILIES[identity['model_type']]} ViT of width {identity['hidden_size']}, "
            f"{identity['num_hidden_layers']} layers, patch {identity['patch_size']}")


def _bundled_name(identity: dict) -> str | None:
    return next((name for name in ARCHITECTURES if _identity_of(bundled_config(name)) == identity), None)


def _label(config: PretrainedConfig) -> str:
    """The bundled architecture's name for `config`, or its description."""
    name = _bundled_name(_identity_of(config))
    return ARCHITECTURES[name] if name else _describe(_identity_of(config))


def _bundled_match(identity: dict, source: str) -> PretrainedConfig:
    """The bundled config of the architecture the weights' `identity` describes."""
    name = _bundled_name(identity)
    if name:
        return bundled_config(name)
    family = FAMILIES[identity["model_type"]]
    known = ", ".join(dict.fromkeys(label for label in ARCHITECTURES.values() if label.startswith(family + " ")))
    projection = f" giving {identity['projection_dim']}-wide embeddings" if identity["projection_dim"] else ""
    raise CheckpointError(
        f"{source} is a {_describe(identity)} at {identity['image_size']} px{projection}, which is none of the "
        f"bundled architectures ({known}); use one of those (or give its config)"
    )


def _backbone(config: PretrainedConfig, weights: dict[str, torch.Tensor] | Path, source: str,
              input_size: int | None, dtype: torch.dtype) -> ImageBackbone:
    """The model of `config` holding `weights` (tensors, or a transformers folder), every one, as a backbone."""
    model_class, options = MODELS[config.model_type]
    label = _label(config)
    network = load_transformers(model_class, config, weights, source, label, dtype, **options)
    return ImageBackbone.from_transformers(network, input_size=input_size, label=label, source=source)


def load_transformers(model_class, config: PretrainedConfig, weights: dict[str, torch.Tensor] | Path, source: str,
                      label: str, dtype: torch.dtype, **options) -> nn.Module:
    """`model_class` of `config` holding `weights` (tensors, or a transformers folder), offline; refused,
    naming the first difference, unless every weight is there in its shape."""
    folder, state_dict = (None, weights) if isinstance(weights, dict) else (str(weights), None)
    try:
        network, loading = model_class.from_pretrained(
            folder, state_dict=state_dict, config=config, **transformers_dtype(dtype), local_files_only=True,
            output_loading_info=True, ignore_mismatched_sizes=True, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{source} cannot be read as {label} ({error}); download it again") from error
    problems = ([f"lacks {key}" for key in sorted(loading["missing_keys"])]
                + [f"has {key}, which {label} has not" for key in sorted(loading["unexpected_keys"])]
                + [f"has {key} of shape {tuple(found)} where {label} has {tuple(wanted)}"
                   for key, found, wanted in sorted(loading["mismatched_keys"])])
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{source} does not fit {label}: it {problems[0]}{more}. The file is incomplete or another network; "
            "download it again or use one of the supported networks"
        )
    return network


# Choosing a run's networks: the discriminators' backbones and the feature network f.

DISCRIMINATOR_SETS = {
    TEACHER_FEATURES: "the frozen base teacher's features (no download)",
    "paper": "the paper's three: DINO ViT-S/16, DINOv2 ViT-L/14 and the CLIP ViT-H/14 image embedding "
             "(needs the dino, dinov2 and clip_vision files)",
    "teacher + image networks": "the teacher's features and each image network given (clip_vision, dino, dinov2)",
}
FEATURE_NETWORKS = {
    TEACHER_FEATURES: "the frozen base teacher's features (no download)",
    "ip-adapter": "the paper's: IP-Adapter's four image tokens of CLIP ViT-H/14 (needs the clip_vision and "
                  "ip_adapter files)",
    "none": "no feature loss",
}
NEEDS = {"paper": ("dino", "dinov2", "clip_vision"), "ip-adapter": ("clip_vision", "ip_adapter")}  # choice -> files
FILE_ADVICE = {
    "clip_vision": ADVICE[CLIP_VISION],
    "ip_adapter": IP_ADAPTER_ADVICE,
    "dino": "give DINO ViT-S/16 (facebook/dino-vits16) as a transformers folder or weights file",
    "dinov2": "give DINOv2 ViT-L/14 (facebook/dinov2-large) as a transformers folder or weights file",
}


@dataclass(frozen=True)
class ImageNetworkFiles:
    """The user's image-network files: a CLIP vision tower (models/clip_vision), an IP-Adapter
    (models/ipadapter), DINO and DINOv2 (a transformers folder or a weights file). From Python, each may
    also be the network already loaded (`load_clip_vision`, `load_ip_adapter_projection`, `load_dino`)."""

    clip_vision: Path | nn.Module | None = None
    ip_adapter: Path | nn.Module | None = None
    dino: Path | nn.Module | None = None
    dinov2: Path | nn.Module | None = None


@dataclass
class RunNetworks:
    """What `EchoDistillTrainer` takes as `discriminator_backbones` and `feature_network`."""

    discriminators: list[nn.Module | str]
    feature: nn.Module | str | None

    def image_networks(self) -> list[nn.Module]:
        """The loaded image networks, each once (a CLIP tower may serve a discriminator and f)."""
        modules = [m for m in [*self.discriminators, self.feature] if isinstance(m, nn.Module)]
        return list({id(m): m for m in modules}.values())

    def describe(self) -> dict:
        """The networks by name: {"discriminators": [...], "feature": ...} (a choice's name where none is loaded)."""
        def name(network) -> str:
            return getattr(network, "name", network)

        return {"discriminators": [name(network) for network in self.discriminators], "feature": name(self.feature)}

    def weight_bytes(self, bytes_per_weight: int) -> int:
        """The frozen image networks' weights at `bytes_per_weight`, each tensor counted once."""
        tensors = {id(p): p for m in self.image_networks() for p in m.parameters()}
        return sum(p.numel() for p in tensors.values()) * bytes_per_weight


def choose_networks(discriminators: str = TEACHER_FEATURES, feature: str = TEACHER_FEATURES,
                    files: ImageNetworkFiles = ImageNetworkFiles(), *,
                    dtype: torch.dtype = torch.float32) -> RunNetworks:
    """The discriminator set (DISCRIMINATOR_SETS) and feature network (FEATURE_NETWORKS) of a run, the
    image networks read from `files` once each. Raises CheckpointError naming what a choice lacks."""
    if discriminators not in DISCRIMINATOR_SETS or feature not in FEATURE_NETWORKS:
        raise ValueError(f"choose discriminators from {', '.join(DISCRIMINATOR_SETS)} and the feature network "
                         f"from {', '.join(FEATURE_NETWORKS)}")
    for what, needed in ((f"the {discriminators} discriminator set", NEEDS.get(discriminators, ())),
                         (f"the {feature} feature network", NEEDS.get(feature, ()))):
        missing = [name for name in needed if getattr(files, name) is None]
        if missing:
            raise CheckpointError(f"{what} needs the {' and '.join(missing)} file{'s' if len(missing) > 1 else ''}: "
                                  f"{'; '.join(FILE_ADVICE[name] for name in missing)}")
    loaded: dict[str, nn.Module] = {}

    def network(name: str) -> nn.Module:
        if name not in loaded:
            value = getattr(files, name)
            loaded[name] = value if isinstance(value, nn.Module) else LOADERS[name](value, dtype=dtype)
        return loaded[name]

    given = [name for name in ("dino", "dinov2", "clip_vision") if getattr(files, name) is not None]
    chosen = {TEACHER_FEATURES: [TEACHER_FEATURES], "paper": ["dino", "dinov2", "clip_vision"],
              "teacher + image networks": [TEACHER_FEATURES, *given]}[discriminators]
    backbones = [name if name == TEACHER_FEATURES else network(name) for name in chosen]
    f = {"ip-adapter": lambda: IPAdapterFeatures(network("clip_vision"), network("ip_adapter")),
         "none": lambda: None, TEACHER_FEATURES: lambda: TEACHER_FEATURES}[feature]()
    return RunNetworks(backbones, f)


LOADERS = {"clip_vision": load_clip_vision, "dino": load_dino, "dinov2": load_dino,
           "ip_adapter": lambda path, dtype: load_ip_adapter_projection(path)}
