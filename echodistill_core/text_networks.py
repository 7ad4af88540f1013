"""The text side of a CLIP model the user has, read offline: the text tower that CLIP-T compares samples
with their prompts through (paper_metrics.py).

ComfyUI's `models/clip_vision` files hold the image tower only; CLIP-T needs a whole CLIP model: a
transformers folder (config.json and model.safetensors, e.g. openai/clip-vit-large-patch14-336) or one
weights file in transformers' layout (`text_model.`, `text_projection.`) or OpenCLIP's
(`token_embedding.`, `transformer.resblocks.`, `ln_final.`, `text_projection`). As in image_networks.py, the
shapes (width, layers, vocabulary, positions, projection) pick a bundled config in `assets/image_networks/`
(`clip-text-*.json`, sources in SOURCES.md there); other sizes need an explicit `config=`. The tokenizer is
CLIP's own BPE (`tokenizer.build_clip_tokenizer`), with as many merges as the vocabulary holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, CLIPTextModelWithProjection, PretrainedConfig

from .families import CheckpointError
from .image_networks import (_RESBLOCK, OPEN_CLIP_RULES, _key_ending, _read, _renamed,
                             bundled_config, load_transformers)
from .clip_tokenizer import build_clip_tokenizer

TEXT_ARCHITECTURES = {  # bundled config -> what the user sees
    "clip-text-l-14": "CLIP ViT-L/14 text tower",
    "clip-text-h-14": "CLIP ViT-H/14 text tower",
    "clip-text-bigg-14": "CLIP ViT-bigG/14 text tower",
}
TEXT_IDENTITY = ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings", "projection_dim")
BYTE_SYMBOLS = 2 * 256 + 2  # a CLIP vocabulary: the byte symbols, the same ending a word, the two special tokens
TEXT_ADVICE = ("CLIP-T needs a whole CLIP model, its text tower too: a transformers folder such as "
               "openai/clip-vit-large-patch14-336 (config.json, model.safetensors), its model.safetensors, or "
               "OpenCLIP's open_clip_pytorch_model.bin; ComfyUI's clip_vision files hold the image tower only")
TEXT_LAYOUTS = {  # a key only this layout has -> the layout
    "text_model.embeddings.token_embedding.weight": "transformers",
    "token_embedding.weight": "OpenCLIP",
}
NOT_TEXT = ("visual.", "vision_model.", "visual_projection.", "logit_scale", "logit_bias", "attn_mask")
OPEN_CLIP_TEXT_RULES = [
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"^text_projection$", "text_projection.weight"),
] + [(pattern, target.replace("vision_model.", "text_model.") if isinstance(target, str)
      else tuple(part.replace("vision_model.", "text_model.") for part in target))
     for pattern, target in OPEN_CLIP_RULES if pattern.startswith(_RESBLOCK)]  # the blocks: named as the image tower's


class TextTower(nn.Module):
    """A frozen CLIP text tower with its tokenizer: prompts -> text embeddings [B, projection_dim]."""

    def __init__(self, network: CLIPTextModelWithProjection, name: str):
        super().__init__()
        self.network, self.name = network.requires_grad_(False).eval(), name
        config = network.config
        if config.vocab_size < BYTE_SYMBOLS:
            raise CheckpointError(f"{name} has a vocabulary of {config.vocab_size} tokens, too few for CLIP's BPE")
        self.tokenizer = build_clip_tokenizer(config.vocab_size - BYTE_SYMBOLS)
        self.feature_dim = config.projection_dim

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.network.config.max_position_embeddings)
        return self.network(input_ids=tokens.input_ids.to(self.network.device)).text_embeds.float()


def load_clip_text(path: str | Path, *, config: PretrainedConfig | None = None,
                   dtype: torch.dtype = torch.float32) -> TextTower:
    """The text tower of a whole CLIP model (a transformers folder, or a weights file in transformers' or
    OpenCLIP's layout), frozen. `config` (a CLIPTextConfig) replaces the bundled config the shapes choose."""
    path = Path(path)
    if path.is_dir():
        config = config or clip_folder_config(path, "text")
        path = clip_weights_file(path)
    tower = text_tower(_read(path, TEXT_ADVICE), path.name)
    if config is None:
        identity = _identity(tower, path.name)
        name = next((name for name in TEXT_ARCHITECTURES if _identity_of(bundled_config(name)) == identity), None)
        if name is None:
            known = ", ".join(TEXT_ARCHITECTURES.values())
            raise CheckpointError(f"{path.name} holds a CLIP text tower of width {identity['hidden_size']}, "
                                  f"{identity['num_hidden_layers']} layers, none of the bundled ones ({known}); "
                                  "use one of those (or give its config)")
        config = bundled_config(name)
    label = next((TEXT_ARCHITECTURES[name] for name in TEXT_ARCHITECTURES
                  if _identity_of(bundled_config(name)) == _identity_of(config)), "CLIP text tower")
    network = load_transformers(CLIPTextModelWithProjection, config, tower, path.name, label, dtype)
    return TextTower(network, f"{label} ({path.name})")


def clip_weights_file(folder: Path) -> Path:
    """The weights file of a transformers model folder."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder.name} holds no model.safetensors or pytorch_model.bin; {TEXT_ADVICE}")


def has_text_tower(state: dict[str, torch.Tensor]) -> bool:
    return any(_key_ending(state, anchor) is not None for anchor in TEXT_LAYOUTS)


def text_tower(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The text tower's tensors in transformers' key layout, whatever else the file holds."""
    for anchor, layout in TEXT_LAYOUTS.items():
        key = _key_ending(state, anchor)
        if key is None:
            continue
        prefix = key.removesuffix(anchor)
        tensors = {key[len(prefix):]: value for key, value in state.items()
                   if key.startswith(prefix) and not key[len(prefix):].startswith(NOT_TEXT)}
        if layout == "transformers":
            return {key: value for key, value in tensors.items() if key.startswith(("text_model.", "text_projection."))}
        if "text_projection" in tensors:  # OpenCLIP computes x @ text_projection [width, dim]; a Linear x @ weight.T
            tensors["text_projection"] = tensors["text_projection"].t().contiguous()
        return _renamed(tensors, OPEN_CLIP_TEXT_RULES)
    raise CheckpointError(f"{source} holds no CLIP text tower; {TEXT_ADVICE}")


def clip_folder_config(folder: Path, tower: str) -> PretrainedConfig | None:
    """The config of a whole CLIP transformers folder's `tower` ("text" or "vision"), with the model's
    projection size; None when the folder has no config.json (the bundled configs are chosen by shape)."""
    file = folder / "config.json"
    if not file.is_file():
        return None
    values = json.loads(file.read_text())
    if values.get("model_type") == "clip":
        part = values.get(f"{tower}_config") or {}
        values = {**part, "projection_dim": values.get("projection_dim", part.get("projection_dim"))}
    return AutoConfig.for_model(**{**values, "model_type": f"clip_{tower}_model"})


def _identity(tower: dict[str, torch.Tensor], source: str) -> dict:
    """The config values a text tower is recognised by, read from its weights."""
    missing = [key for key in ("text_model.embeddings.token_embedding.weight",
                               "text_model.embeddings.position_embedding.weight", "text_projection.weight")
               if key not in tower]
    if missing:
        raise CheckpointError(f"{source} lacks {missing[0]}: the file is incomplete, or a text encoder without "
                              f"CLIP's projection; {TEXT_ADVICE}")
    vocab_size, width = tower["text_model.embeddings.token_embedding.weight"].shape
    layers = 1 + max((int(match[1]) for key in tower
                      if (match := re.match(r"^text_model\.encoder\.layers\.(\d+)\.", key))), default=-1)
    return dict(hidden_size=width, num_hidden_layers=layers, vocab_size=vocab_size,
                max_position_embeddings=tower["text_model.embeddings.position_embedding.weight"].shape[0],
                projection_dim=tower["text_projection.weight"].shape[0])


def _identity_of(config: PretrainedConfig) -> dict:
    return {field: getattr(config, field, None) for field in TEXT_IDENTITY}

