"""Memory presets and what they switch in the engine: checkpointed and tiled decoding, offloading,
where the rollback snapshot lives, and the full-size benchmark (slow)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformers import CLIPVisionModelWithProjection, Dinov2Model, ViTModel

from conftest import SIZE, make_concept, tiny_config
from echodistill_core import trainer as trainer_module
from echodistill_core.backbones import TEACHER_FEATURES, ImageBackbone
from echodistill_core.image_networks import (ARCHITECTURES, IPAdapterFeatures, IPAdapterProjection, RunNetworks,
                                             bundled_config)
from echodistill_core.memory import MEMORY_PRESETS, Offload
from echodistill_core.models import DECODE_TILE_LATENTS
from echodistill_core.lab.tiny import tiny_model, tiny_pair
from echodistill_core.trainer import EchoDistillTrainer, NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


def test_presets_cap_the_batch_and_set_the_memory_fields():
    recipe = tiny_config(batch_size=4)
    assert [MEMORY_PRESETS[name].apply(recipe).batch_size for name in ("8 GB", "12 GB", "24 GB", "unlimited")] == \
        [1, 2, 4, 4]
    small = MEMORY_PRESETS["8 GB"].apply(recipe)
    assert (small.gradient_checkpointing, small.vae_decode, small.offload, small.rollback) == \
        (True, "tiled", True, "host")
    assert small.replace(batch_size=4, gradient_checkpointing=False, vae_decode="plain", offload=False,
                         rollback="device") == recipe  # nothing else changed


def test_presets_choose_bf16_on_a_gpu_fp16_without_bf16_and_keep_weights_on_a_cpu(monkeypatch):
    preset = MEMORY_PRESETS["12 GB"]
    assert preset.weight_dtype("cpu") is None and MEMORY_PRESETS["unlimited"].weight_dtype("cuda") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert preset.weight_dtype("cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert preset.weight_dtype("cuda") == torch.float16


def test_what_trains_is_fp32_when_the_frozen_weights_are_bf16():
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    for module in (teacher.unet, student.unet, teacher.vae, text.text_encoder):
        module.to(torch.bfloat16)
    config = tiny_config()
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    trainable = [*trainer.teacher_adapters.parameters(), *trainer.student_adapters.parameters(), trainer.token.vector,
                 *(p for d in trainer.discriminators for p in d.trainable_parameters())]
    assert {p.dtype for p in trainable} == {torch.float32}
    assert teacher.dtype == torch.bfloat16


def decode_with_gradient(model, latents, mode):
    latents = latents.clone().requires_grad_(True)
    images = model.decode(latents, mode)
    (images * torch.linspace(-1, 1, images.numel()).view_as(images)).sum().backward()
    return images.detach(), latents.grad


def test_checkpointed_decoding_gives_the_same_images_and_gradients():
    model = tiny_model("epsilon", image_size=SIZE, latent=True)
    latents = torch.randn(2, 4, SIZE // 2, SIZE // 2)
    plain, checkpointed = (decode_with_gradient(model, latents, mode) for mode in ("plain", "checkpointed"))
    torch.testing.assert_close(checkpointed[0], plain[0])
    torch.testing.assert_close(checkpointed[1], plain[1])
    assert not model.vae.decoder.gradient_checkpointing  # the shared VAE is left as it was


def test_tiled_decoding_is_the_vaes_tiling_made_cheap_for_the_backward_pass():
    model = tiny_model("epsilon", image_size=SIZE, latent=True)
    vae, size = model.vae, DECODE_TILE_LATENTS + DECODE_TILE_LATENTS // 2  # two tiles a side
    latents = torch.randn(1, 4, size, size)
    tiled = decode_with_gradient(model, latents, "tiled")
    assert not vae.use_tiling and not vae.decoder.gradient_checkpointing  # restored
    vae.enable_tiling()  # diffusers' own tiling, keeping every activation
    vae.tile_latent_min_size, vae.tile_sample_min_size = DECODE_TILE_LATENTS, DECODE_TILE_LATENTS * 2
    reference = decode_with_gradient(model, latents, "plain")
    torch.testing.assert_close(tiled[0], reference[0])
    torch.testing.assert_close(tiled[1], reference[1])
    vae.disable_tiling()
    assert tiled[0].shape == (1, 3, 2 * size, 2 * size)
    assert not torch.allclose(tiled[0], decode_with_gradient(model, latents, "plain")[0])  # an approximation


def test_a_unknown_decode_mode_is_refused():
    with pytest.raises(ValueError, match="checkpointed"):
        tiny_model("epsilon", image_size=SIZE, latent=True).decode(torch.zeros(1, 4, 8, 8), "sliced")


def test_offload_moves_modules_only_while_parked_and_not_twice_when_nested(monkeypatch):
    moves = []
    monkeypatch.setattr(Offload, "_move", staticmethod(lambda modules, device: moves.append(
        ([type(m).__name__ for m in modules], str(device)))))
    text_encoder, vae = torch.nn.Linear(1, 1), torch.nn.Conv2d(1, 1, 1)
    offload = Offload([text_encoder, vae, vae, None], torch.device("cuda"), enabled=True)
    with offload.using(vae):
        pass
    assert moves == []  # not parked: the modules stay where they are
    with offload.parked():
        with offload.using(text_encoder, vae):
            with offload.using(vae):
                pass
    assert moves == [(["Linear", "Conv2d"], "cpu"), (["Linear", "Conv2d"], "cuda"), ([], "cuda"), ([], "cpu"),
                     (["Linear", "Conv2d"], "cpu"), (["Linear", "Conv2d"], "cuda")]
    moves.clear()
    with Offload([vae], torch.device("cuda"), enabled=False).parked():
        pass
    assert moves == []


def test_with_offloading_the_text_encoder_and_vae_run_only_while_on_the_device():
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    config = tiny_config(steps=2, echo_start=0.5, offload=True, preview_every=2)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    calls = []

    def watch(module, owner):
        def on_device(_module, _inputs):
            assert id(owner) in trainer.offload._visiting, f"{type(module).__name__} ran while parked"
            calls.append(type(module).__name__)
        module.register_forward_pre_hook(on_device)

    for module, owner in ((text.text_encoder, text.text_encoder), (teacher.vae.encoder, teacher.vae),
                          (teacher.vae.decoder, teacher.vae)):
        watch(module, owner)
    reports = []
    trainer.train(callback=reports.append)
    assert {"CLIPTextModel", "Encoder", "Decoder"} <= set(calls) and reports[-1].preview is not None


def test_gradient_checkpointing_follows_the_config_both_ways(pair):
    teacher, student, text = pair
    for checkpointing in (True, False):  # while a run is applied, and as they were afterwards
        trainer = EchoDistillTrainer(teacher, student, text, make_concept(tiny_config()),
                                     tiny_config(gradient_checkpointing=checkpointing))
        with trainer.applied():
            assert teacher.unet.is_gradient_checkpointing == student.unet.is_gradient_checkpointing == checkpointing
        assert not teacher.unet.is_gradient_checkpointing and not student.unet.is_gradient_checkpointing


def learned(trainer) -> dict[str, torch.Tensor]:
    tensors = {f"teacher.{k}": v for k, v in trainer.teacher_adapters.state_dict().items()}
    tensors |= {f"student.{k}": v for k, v in trainer.student_adapters.state_dict().items()}
    return {**tensors, "token": trainer.token.vector.detach().clone()}


@pytest.mark.parametrize("rollback", ["device", "host"])
def test_a_snapshot_on_the_device_or_the_host_undoes_a_failed_step(pair, monkeypatch, rollback):
    trainer = EchoDistillTrainer(*pair, make_concept(tiny_config()), tiny_config(steps=3, rollback=rollback))
    trainer.train(should_cancel=lambda: trainer.step == 1)
    good = {name: tensor.clone() for name, tensor in learned(trainer).items()}
    monkeypatch.setattr(trainer_module.L, "color_loss", lambda a, b, *args, **kw: torch.full((len(a),), float("nan")))
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    assert all(torch.equal(good[name], tensor) for name, tensor in learned(trainer).items())


def test_without_a_snapshot_a_failed_step_says_the_state_may_hold_part_of_it(pair, monkeypatch, caplog):
    trainer = EchoDistillTrainer(*pair, make_concept(tiny_config()), tiny_config(steps=3, rollback="off"))
    monkeypatch.setattr(trainer_module.L, "color_loss", lambda a, b, *args, **kw: torch.full((len(a),), float("nan")))
    with caplog.at_level(logging.WARNING, logger="echodistill"), pytest.raises(NonFiniteLossError):
        trainer.train()
    assert trainer.step == 0 and "may hold part of step 1" in caplog.text


def test_a_state_resumes_under_a_smaller_memory_preset(pair):
    roomy = MEMORY_PRESETS["24 GB"].apply(tiny_config(steps=4))
    first = EchoDistillTrainer(*pair, make_concept(roomy), roomy)
    first.train(should_cancel=lambda: first.step == 2)
    small = MEMORY_PRESETS["8 GB"].apply(roomy)
    second = EchoDistillTrainer(*pair, make_concept(small), small)
    second.load_state_dict(first.state_dict())
    assert second.train() and second.step == 4


@pytest.mark.slow
def test_the_memory_benchmark_reports_every_phase_and_ends_with_json():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memory.py"), "--presets", "8 GB,12 GB", "--resolution", "64"],
        capture_output=True, text=True, timeout=1800, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])["presets"]
    assert set(figures) == {"8 GB", "12 GB"}
    for preset in figures.values():
        assert "error" not in preset, preset["error"]
        assert set(preset["phases"]) == {"teacher", "student", "discriminators"}
        assert 3 < preset["peak_gb"] < preset["rss_peak_gb"] and preset["seconds_per_iteration"] > 0
    assert figures["8 GB"]["peak_gb"] < figures["12 GB"]["peak_gb"]


def full_size(name: str) -> ImageBackbone:
    """A bundled image network at its published size, on the meta device: shapes without memory."""
    config = bundled_config(name)
    with torch.device("meta"):
        model = {"clip_vision_model": CLIPVisionModelWithProjection, "dinov2": Dinov2Model}.get(config.model_type)
        network = model(config) if model else ViTModel(config, add_pooling_layer=False)
        return ImageBackbone.from_transformers(network, label=ARCHITECTURES[name])


def test_memory_presets_budget_the_chosen_image_networks():
    dino, dinov2, clip_h = full_size("dino-vits16"), full_size("dinov2-vitl14"), full_size("clip-vit-h-14")
    paper = RunNetworks([dino, dinov2, clip_h], IPAdapterFeatures(clip_h, IPAdapterProjection(1024, 4, 768)))
    assert paper.weight_bytes(2) / 2**30 == pytest.approx(1.79, abs=0.005)  # CLIP-H 632 M, DINOv2-L 304 M, DINO-S 22 M, ...
    for name in ("8 GB", "12 GB"):
        with pytest.raises(ValueError, match=f"DINO ViT-S/16 .*CLIP ViT-H/14.* hold 1.79 GB of weights in bf16, "
                           f"more than the {name} memory preset leaves room for"):
            MEMORY_PRESETS[name].check_image_networks(paper)
    for name in ("24 GB", "unlimited"):
        MEMORY_PRESETS[name].check_image_networks(paper)
    MEMORY_PRESETS["8 GB"].check_image_networks(RunNetworks([dino], TEACHER_FEATURES))  # 22 M weights fit anywhere
    MEMORY_PRESETS["8 GB"].check_image_networks(RunNetworks([TEACHER_FEATURES], TEACHER_FEATURES))
