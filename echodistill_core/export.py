"""Export a personalization as files stock ComfyUI uses with no help from this pack.

- The student's adapters as a LoRA file with kohya key names (`lora_unet_<diffusers module path>`),
  factors as `lora_down.weight` / `lora_up.weight` / `alpha`, which ComfyUI's LoraLoader and diffusers'
  `load_lora_weights` both read for SD 1.x/2.x UNets. Custom Diffusion's full key/value changes are
  factored exactly (SVD, alpha = rank, at most the rank the change has): a kohya file of full-weight
  `.diff` patches loads in ComfyUI only, diffusers refuses it.
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


FACTOR_TOLERANCE = 1e-4  # of a change's norm: well below what fp16 storage itself keeps


def low_rank_factors(delta: torch.Tensor, tolerance: float = FACTOR_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with up @ down = `delta` [out, in], dropping only the smallest singular values whose joint
    (Frobenius) norm is at most `tolerance` times the change's: the exact change at the rank it really has."""
    u, s, vh = torch.linalg.svd(delta.detach().float(), full_matrices=False)
    tail = s.square().flip(0).cumsum(0).flip(0)  # tail[i]: the squared norm of singular values i, i+1, ...
    rank = max(1, int((tail > tolerance**2 * tail[0]).sum()))
    root = s[:rank].sqrt()  # split the scale evenly, so neither factor leaves fp16's range
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def student_lora_tensors(personalization: Personalization, student_unet: torch.nn.Module,
                         dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    adapters = personalization.student_adapters
    tensors = {}
    if adapters.kind == "custom_diffusion":
        for path, delta in adapters.deltas(student_unet).items():
            up, down = low_rank_factors(delta)
            name = kohya_name(path)
            tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]), dtype=dtype)  # scale alpha / rank = 1
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
