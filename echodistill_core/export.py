"""Export a personalization as files stock ComfyUI uses with no help from this pack.

- The student's adapters as a LoRA file with kohya key names (`lora_unet_<diffusers module path>`):
  LoRA factors as `lora_down.weight` / `lora_up.weight` / `alpha`, Custom Diffusion's full key/value
  changes as `.diff` weight differences. ComfyUI's LoraLoader maps these names for SD 1.x/2.x UNets.
- The token as a textual-inversion embedding (`emb_params`), used in prompts as `embedding:<name>`.
Metadata names the trigger word and the base model; safetensors metadata values are strings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .personalization import Personalization
from .serialization import write_atomically


def kohya_name(module_path: str) -> str:
    """"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k" -> "lora_unet_down_blocks_1_..._to_k"."""
    return "lora_unet_" + module_path.replace(".", "_")


def student_lora_tensors(personalization: Personalization, student_unet: torch.nn.Module,
                         dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    adapters = personalization.student_adapters
    tensors = {}
    if adapters.kind == "custom_diffusion":
        for path, delta in adapters.deltas(student_unet).items():
            tensors[f"{kohya_name(path)}.diff"] = delta.to(dtype).contiguous()
        return tensors
    for key, adapter in adapters.adapters.items():
        name = kohya_name(key.replace("__", "."))
        tensors[f"{name}.lora_down.weight"] = adapter.down.detach().to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = adapter.up.detach().to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(adapter.alpha, dtype=dtype)
    return tensors


def metadata(personalization: Personalization, embedding_name: str) -> dict[str, str]:
    config = personalization.config
    return {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": personalization.base_models.get("student", ""),
        "modelspec.title": f"EchoDistill {config.token} {config.class_word}".strip(),
        "modelspec.trigger_phrase": f"embedding:{embedding_name} {config.class_word}".strip(),
        "echodistill.trigger_word": config.token,
        "echodistill.class_word": config.class_word,
        "echodistill.embedding": embedding_name,
        "echodistill.parameterisation": config.parameterisation,
        "echodistill.base_models": ", ".join(f"{k}: {v}" for k, v in personalization.base_models.items()),
    }


def save_student_lora(path: str | Path, personalization: Personalization, student_unet: torch.nn.Module,
                      embedding_name: str) -> Path:
    tensors = student_lora_tensors(personalization, student_unet)
    meta = metadata(personalization, embedding_name)
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=meta))


def save_embedding(path: str | Path, personalization: Personalization) -> Path:
    """The token's vector as a one-vector textual-inversion embedding."""
    tensors = {"emb_params": personalization.token.vector.detach().float()[None].contiguous()}
    meta = {"echodistill.trigger_word": personalization.config.token}
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=meta))
