"""The trainable parts of each UNet: Custom Diffusion K/V copies, or LoRA.

An `AdapterSet` holds only the trainable tensors, keyed by the path of the frozen linear layer they
adapt. `adapters.applied(unet)` swaps those layers for adapted ones for the duration of a block and
puts the originals back after, so the base model is never changed and can be shared (with ComfyUI's
cache, or between a personalized and a plain model). `adapters.disabled()` gives the base model's
output inside that block (the frozen teacher that the default discriminator reads).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import PARAMETERISATIONS


def target_layers(unet: nn.Module, all_attention: bool = False) -> dict[str, nn.Linear]:
    """The linear layers to adapt: every cross-attention key and value projection (`attn2.to_k/to_v`),
    or with `all_attention` every query, key, value and output projection of every attention."""
    names = ("to_q", "to_k", "to_v", "to_out.0") if all_attention else ("to_k", "to_v")
    attentions = ("attn1", "attn2") if all_attention else ("attn2",)
    return {
        path: module
        for path, module in unet.named_modules()
        if isinstance(module, nn.Linear)
        and any(path.endswith(f"{attention}.{name}") for attention in attentions for name in names)
    }


class LinearAdapter(nn.Module):
    """The trainable tensors for one frozen `nn.Linear`: a full weight copy, or LoRA factors."""

    def __init__(self, base: nn.Linear, kind: str, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if kind not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation {kind!r} is unknown; use one of {PARAMETERISATIONS}")
        self.kind = kind
        if kind == "custom_diffusion":  # a trainable copy initialised from the pretrained weight
            self.weight = nn.Parameter(base.weight.detach().float().clone())
        else:  # delta W = up @ down * alpha / rank, zero at the start
            self.down = nn.Parameter(torch.empty(rank, base.in_features))
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            self.up = nn.Parameter(torch.zeros(base.out_features, rank))
            self.alpha = float(alpha if alpha is not None else rank)

    @property
    def scale(self) -> float:
        return self.alpha / self.down.shape[0]

    def delta(self, base: nn.Linear) -> torch.Tensor:
        """The change this adapter makes to the base weight, [out, in] in float32, on the adapter's device (the
        base may wait on another: a host such as ComfyUI offloads it between uses)."""
        if self.kind == "custom_diffusion":
            return self.weight.detach() - base.weight.detach().to(self.weight.device, torch.float32)
        return (self.up.detach() @ self.down.detach()) * self.scale

    def forward(self, base: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "custom_diffusion":
            bias = None if base.bias is None else base.bias.float()
            return F.linear(x.float(), self.weight, bias).to(x.dtype)
        low_rank = F.linear(F.linear(x.float(), self.down), self.up) * self.scale
        return base(x) + low_rank.to(x.dtype)


class AdaptedLinear(nn.Module):
    """Stands in for a frozen linear layer while an `AdapterSet` is applied."""

    def __init__(self, base: nn.Linear, adapter: LinearAdapter, owner: "AdapterSet"):
        super().__init__()
        self.base, self.adapter = base, adapter
        self._owner = [owner]  # a list, so the owner is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._owner[0].enabled:
            return self.base(x)
        return self.adapter(self.base, x)


class AdapterSet(nn.Module):
    """The adapters of one UNet. Keys are the adapted layers' paths with "." written as "__"."""

    def __init__(self, unet: nn.Module, kind: str = "custom_diffusion", rank: int = 4,
                 alpha: float | None = None, all_attention: bool = False):
        super().__init__()
        if kind == "custom_diffusion" and all_attention:
            raise ValueError("all_attention applies to LoRA only; Custom Diffusion adapts cross-attention K/V")
        self.kind, self.rank, self.all_attention = kind, rank, all_attention
        layers = target_layers(unet, all_attention)
        if not layers:
            raise ValueError("the UNet has no cross-attention layers to adapt (no attn2.to_k / attn2.to_v)")
        self.adapters = nn.ModuleDict(
            {_key(path): LinearAdapter(layer, kind, rank, alpha) for path, layer in layers.items()}
        )
        self.enabled = True
        device = next(unet.parameters()).device
        self.to(device)

    def paths(self) -> list[str]:
        return [key.replace("__", ".") for key in self.adapters]

    @contextmanager
    def applied(self, unet: nn.Module) -> Iterator[None]:
        """Run `unet` with these adapters in place of its frozen layers; restore them afterwards."""
        swapped = []
        try:
            for key, adapter in self.adapters.items():
                parent, name = _parent(unet, key.replace("__", "."))
                base = getattr(parent, name)
                if isinstance(base, AdaptedLinear):
                    raise RuntimeError("an AdapterSet is already applied to this UNet; apply one at a time")
                setattr(parent, name, AdaptedLinear(base, adapter, self))
                swapped.append((parent, name, base))
            yield
        finally:
            for parent, name, base in reversed(swapped):
                setattr(parent, name, base)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside an `applied` block, give the frozen base model's outputs."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def deltas(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        """Weight changes [out, in] per adapted layer path, for export as full-weight `.diff` patches."""
        return {
            key.replace("__", "."): adapter.delta(_parent_child(unet, key.replace("__", ".")))
            for key, adapter in self.adapters.items()
        }


def _key(path: str) -> str:
    return path.replace(".", "__")


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return root.get_submodule(parent_path), name


def _parent_child(root: nn.Module, path: str) -> nn.Linear:
    parent, name = _parent(root, path)
    child = getattr(parent, name)
    return child.base if isinstance(child, AdaptedLinear) else child
