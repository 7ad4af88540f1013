"""Memory presets: how one EchoDistill iteration fits a GPU of 8, 12 or 24 GB, as data.

A preset chooses how the run is carried out, never what it computes (apart from a smaller batch on
small cards): the precision of the frozen weights (what trains, the adapters, the token and the
discriminator heads, is always fp32), gradient checkpointing of both UNets, how the VAE decodes with
gradient, how much room image networks (CLIP, DINO) may take, the largest batch, whether the frozen
text encoder and VAE wait on the CPU between uses, and where the snapshot that undoes a failed step
lives. `preset.apply(config)` sets the config's memory fields, which the trainer follows;
`preset.weight_dtype(device)` is the dtype it counts on the frozen models being loaded in (what
`recipe.frozen_dtype` gives for "auto"). `bench/memory.py` measures
each preset with SD 2.1 + SD-Turbo at 512 px; README, "Memory".

Sizes to design for (SD 2.1 or SD-Turbo UNet 865 M parameters, OpenCLIP-H text encoder 354 M, VAE
84 M; GB = 2^30 bytes, as GPU memory is counted): frozen weights 4.0 GB in bf16; Custom Diffusion's
K/V copies 2 x 26 M parameters, 0.2 GB in fp32, 0.6 GB with AdamW's moments, 1.2 GB with a
rollback snapshot on the device.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from .config import ROLLBACKS, VAE_DECODES, EchoDistillConfig

if TYPE_CHECKING:
    from .image_networks import RunNetworks


@dataclass(frozen=True)
class MemoryPreset:
    name: str
    summary: str  # one line for tooltips and --help
    frozen_dtype: torch.dtype | None  # on a GPU; None keeps the precision the models were loaded in
    gradient_checkpointing: bool  # both UNets
    vae_decode: str  # decoding with gradient (DiffusionModel.decode): plain, checkpointed or tiled
    image_networks_gb: float | None  # room for image networks' frozen weights (GB in bf16); None: no limit
    max_batch_size: int | None  # caps the run's batch size (its config's); None keeps it
    offload: bool  # the frozen text encoder and VAE wait on the CPU between uses
    rollback: str  # the per-step snapshot: on the device, on the host (CPU memory), or off

    def __post_init__(self) -> None:
        if self.vae_decode not in VAE_DECODES or self.rollback not in ROLLBACKS:
            raise ValueError(f"memory preset {self.name}: vae_decode must be one of {VAE_DECODES} and "
                             f"rollback one of {ROLLBACKS}")

    def apply(self, config: EchoDistillConfig) -> EchoDistillConfig:
        """`config` with this preset's batch-size cap and memory settings."""
        batch_size = min(config.batch_size, self.max_batch_size or config.batch_size)
        return config.replace(batch_size=batch_size, gradient_checkpointing=self.gradient_checkpointing,
                              vae_decode=self.vae_decode, offload=self.offload, rollback=self.rollback)

    def check_image_networks(self, networks: "RunNetworks") -> None:
        """Refuse image networks whose weights exceed this preset's room, before anything is trained.

        Counted in bf16 (2 bytes a weight), each tensor once. The room leaves space for their activations
        with gradient as well: every student sample passes through each of them in the student's backward,
        which bench/memory.py measured at 1.4 times the weights for the paper's set (1.8 GB of weights,
        4.3 GB more at the student step's peak)."""
        if self.image_networks_gb is None:
            return
        size = networks.weight_bytes(2) / 2**30
        if size > self.image_networks_gb:
            names = ", ".join(getattr(network, "name", type(network).__name__) for network in networks.image_networks())
            raise ValueError(
                f"the chosen image networks ({names}) hold {size:.2f} GB of weights in bf16, more than the "
                f"{self.name} memory preset leaves room for ({self.image_networks_gb:g} GB); choose a larger memory "
                "preset (24 GB holds the paper's set), fewer image networks, or the teacher's features, which "
                "cost no extra weights")

    def weight_dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The frozen weights' dtype this preset counts on, on `device`: on a GPU what precision "auto" loads
        (recipe.frozen_dtype: bf16, fp16 where a GPU lacks bf16); None (keep them as loaded) on a CPU, whose
        bf16 and fp16 kernels are many times slower than fp32, and for a preset that keeps every precision."""
        from .recipe import frozen_dtype  # the precision rule lives with the run recipe, which imports this module

        device = torch.device(device)
        if self.frozen_dtype is None or device.type != "cuda":
            return None
        return frozen_dtype("auto", device) if self.frozen_dtype == torch.bfloat16 else self.frozen_dtype


MEMORY_PRESETS: dict[str, MemoryPreset] = {preset.name: preset for preset in (
    MemoryPreset(
        "8 GB", "bf16 weights, checkpointing, tiled VAE decoding, batch 1, text encoder and VAE on the CPU "
        "between uses, rollback snapshot in CPU memory",
        torch.bfloat16, gradient_checkpointing=True, vae_decode="tiled", image_networks_gb=0.25, max_batch_size=1,
        offload=True, rollback="host"),
    MemoryPreset(
        "12 GB", "bf16 weights, checkpointing, checkpointed VAE decoding, the paper's batch of 2",
        torch.bfloat16, gradient_checkpointing=True, vae_decode="checkpointed", image_networks_gb=0.5,
        max_batch_size=2, offload=False, rollback="device"),
    MemoryPreset(
        "24 GB", "bf16 weights, no UNet checkpointing (faster), checkpointed VAE decoding, room for image "
        "backbones",
        torch.bfloat16, gradient_checkpointing=False, vae_decode="checkpointed", image_networks_gb=5.0,
        max_batch_size=None, offload=False, rollback="device"),
    MemoryPreset(
        "unlimited", "everything kept, in the precision the models were loaded in: the bundled tiny models, "
        "CPUs, GPUs of 40 GB and more",
        None, gradient_checkpointing=False, vae_decode="plain", image_networks_gb=None, max_batch_size=None,
        offload=False, rollback="device"),
)}
DEFAULT_MEMORY_PRESET = "12 GB"


class Offload:
    """Frozen modules that wait on the CPU and visit the training device only while used.

    Inside `parked()` the modules live on the CPU; `using(*modules)` brings some to `device` for a
    block, which must span every forward *and backward* pass through them. Disabled, both are no-ops.
    """

    def __init__(self, modules: list[nn.Module | None], device: torch.device, enabled: bool):
        unique = {id(module): module for module in modules if module is not None}
        self.modules, self.device, self.enabled = list(unique.values()), device, enabled
        self._parked = False
        self._visiting: set[int] = set()  # ids of the modules on the device now (nested `using` blocks)

    @contextmanager
    def parked(self) -> Iterator[None]:
        """The modules on the CPU for the block (a training run), back on the device afterwards."""
        if not self.enabled or self._parked:
            yield
            return
        self._move(self.modules, "cpu")
        self._parked = True
        try:
            yield
        finally:
            self._parked = False
            self._move(self.modules, self.device)

    @contextmanager
    def using(self, *modules: nn.Module | None) -> Iterator[None]:
        """`modules` on the device for the block (if parked), back on the CPU afterwards."""
        if not self._parked:
            yield
            return
        needed = [module for module in modules if module is not None and id(module) not in self._visiting]
        self._move(needed, self.device)
        self._visiting.update(id(module) for module in needed)
        try:
            yield
        finally:
            self._visiting.difference_update(id(module) for module in needed)
            self._move(needed, "cpu")

    @staticmethod
    def _move(modules: list[nn.Module], device) -> None:
        for module in modules:
            module.to(device)
