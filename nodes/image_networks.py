"""Load Image Networks: the discriminators' backbones and the feature network of a run, from the user's files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..echodistill_core.backbones import TEACHER_FEATURES
from ..echodistill_core.image_networks import (DISCRIMINATOR_SETS, FEATURE_NETWORKS, NEEDS, ImageNetworkFiles,
                                               choose_networks)
from . import comfyui_host as host
from .comfyui_host import io
from .loaders import file_fingerprint, precision_input, weights_dtype
from .sockets import CATEGORY, IMAGE_NETWORKS

NONE = "none"
FOLDERS = {  # file input -> ComfyUI's model folder kind, and what of it the input lists
    "clip_vision": ("clip_vision", host.weights_files),
    "ip_adapter": (host.IP_ADAPTER_KIND, host.weights_files),
    "dino": (host.DINO_KIND, host.weights_and_model_folders),
    "dinov2": (host.DINO_KIND, host.weights_and_model_folders),
}
FILE_TOOLTIPS = {
    "clip_vision": "A CLIP vision model from ComfyUI's models/clip_vision: a discriminator backbone (the paper's "
                   "CLIP ViT-H/14 image embedding) and IP-Adapter's image encoder. IP-Adapter SD 1.5 reads "
                   "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors.",
    "ip_adapter": "An IP-Adapter from models/ipadapter, e.g. ip-adapter_sd15.safetensors: its image projection of "
                  "the clip_vision embedding is the paper's feature network (Plus and FaceID variants are refused).",
    **{name: f"{network}, a discriminator backbone of the paper's set. Put it in ComfyUI's models/dino folder as "
              "a transformers folder (config.json and model.safetensors) or as one weights file, then refresh the page."
       for name, network in (("dino", "DINO ViT-S/16 (facebook/dino-vits16)"),
                             ("dinov2", "DINOv2 ViT-L/14 (facebook/dinov2-large)"))},
}


def file_choices(name: str) -> list[str]:
    kind, listing = FOLDERS[name]
    return listing(kind)


def missing_file(name: str, value: str) -> str:
    return (f"{name}: {value} is not in ComfyUI's models/{FOLDERS[name][0]} folder; put it there and refresh the "
            "page, or choose another")


def choice_problem(discriminators: str, feature_network: str, files: dict[str, str | None]) -> str | None:
    """What keeps the widgets' choice from running, told without reading any file; None if nothing does.
    A value of None is an input linked from another node: unknown until the run."""
    for name, value in files.items():
        if value not in (NONE, None) and value not in file_choices(name):
            return missing_file(name, value)
    needed = NEEDS.get(discriminators, ()) + NEEDS.get(feature_network, ())
    unknown = discriminators not in DISCRIMINATOR_SETS or feature_network not in FEATURE_NETWORKS
    if unknown or any(files[name] == NONE for name in needed):
        try:  # choose_networks refuses an unknown choice or a missing file before it reads anything
            choose_networks(discriminators, feature_network,
                            ImageNetworkFiles(**{name: None if value == NONE else Path(str(value))
                                                 for name, value in files.items()}))
        except ValueError as error:  # CheckpointError included
            return str(error)
    return None


class LoadImageNetworks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillLoadImageNetworks", display_name="EchoDistill Load Image Networks", category=CATEGORY,
            description="Choose the frozen networks EchoDistill Train's discriminators and feature loss read: the "
                        "teacher's own features (the default, nothing to download) or the paper's image networks "
                        "from your CLIP vision, IP-Adapter, DINO and DINOv2 files.",
            inputs=[
                io.Combo.Input("discriminators", options=list(DISCRIMINATOR_SETS), default=TEACHER_FEATURES,
                               tooltip="The backbones of the discriminators (each gets a small trainable head). " +
                               "; ".join(f"{name}: {what}" for name, what in DISCRIMINATOR_SETS.items()) + "."),
                io.Combo.Input("feature_network", options=list(FEATURE_NETWORKS), default=TEACHER_FEATURES,
                               tooltip="f of the feature loss, 1 - cosine(f(student sample), f(teacher target)). " +
                               "; ".join(f"{name}: {what}" for name, what in FEATURE_NETWORKS.items()) + "."),
                *[io.Combo.Input(name, options=[NONE] + file_choices(name), default=NONE, tooltip=tooltip +
                                 " none: no file.") for name, tooltip in FILE_TOOLTIPS.items()],
                precision_input(),
            ],
            outputs=[io.Custom(IMAGE_NETWORKS).Output("image_networks", display_name="image_networks", tooltip=(
                "The discriminators' backbones and the feature network: connect to EchoDistill Train."))])

    @classmethod
    def validate_inputs(cls, discriminators=None, feature_network=None, clip_vision=None, ip_adapter=None,
                        dino=None, dinov2=None):
        """At queue time: a chosen file that is not there, or a choice that lacks its files (the core's message)."""
        if discriminators is None or feature_network is None:
            return True
        files = dict(clip_vision=clip_vision, ip_adapter=ip_adapter, dino=dino, dinov2=dinov2)
        return choice_problem(discriminators, feature_network, files) or True

    @classmethod
    def fingerprint_inputs(cls, **files):
        """The chosen files as they are on disk: one replaced under its name is read again."""
        return tuple((name, value, file_fingerprint(host.model_path(FOLDERS[name][0], value)))
                     for name, value in sorted(files.items()) if name in FOLDERS and value not in (NONE, None))

    @classmethod
    def execute(cls, discriminators, feature_network, clip_vision, ip_adapter, dino, dinov2, precision):
        paths = {}
        for name, value in dict(clip_vision=clip_vision, ip_adapter=ip_adapter, dino=dino, dinov2=dinov2).items():
            if value != NONE and value not in file_choices(name):
                raise ValueError(missing_file(name, value))
            paths[name] = None if value == NONE else host.model_path(FOLDERS[name][0], value)
        with torch.inference_mode(False):  # frozen weights that training passes gradients through
            networks = choose_networks(discriminators, feature_network, ImageNetworkFiles(**paths),
                                       dtype=weights_dtype(precision, host.torch_device()))
        return io.NodeOutput(networks)
