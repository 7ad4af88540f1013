"""What makes an iteration cheaper computes the same thing: each saving against what it replaced.

- the noise schedule on the device is copied there once, with the same values;
- the colour loss's pyramid (one plain strided convolution) equals the grouped blur-then-subsample;
- the losses are read from the device at once, with the same values as one by one;
- AdamW is fused where the device has it (tests/test_method.py checks its steps against plain AdamW);
- nothing is decoded that nothing reads, and the cheaper colour option decodes nothing;
- randomness reaches the device with the values drawn; compiled UNets train as the plain ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SIZE, make_concept, tiny_config
from echodistill_core import losses as L
from echodistill_core.schedule import NoiseSchedule
from echodistill_core.lab.tiny import tiny_pair, tiny_scheduler
from echodistill_core.trainer import EchoDistillTrainer, read_losses


def test_the_schedule_is_copied_to_a_device_once_with_the_same_values():
    schedule = NoiseSchedule.from_scheduler_config(tiny_scheduler().config)
    assert schedule.alphas_cumprod_on("cpu") is schedule.alphas_cumprod  # already there: no copy
    on_meta = schedule.alphas_cumprod_on("meta")
    assert on_meta.device.type == "meta" and schedule.alphas_cumprod_on("meta") is on_meta
    schedule.alphas_cumprod = schedule.alphas_cumprod * 0.5  # a new table is copied anew
    assert schedule.alphas_cumprod_on("meta") is not on_meta
    t = torch.tensor([0, 10, 999])
    x = torch.ones(3, 1, 2, 2)
    assert torch.equal(schedule.abar(t, x).flatten(), schedule.alphas_cumprod[t])


def grouped_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The pyramid as first written: a grouped 5 x 5 binomial blur of every channel, then every second pixel."""
    kernel_1d = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(images.shape[1], 1, 5, 5)
    pyramid = [images]
    for _ in range(levels - 1):
        blurred = F.conv2d(L._pad(pyramid[-1], 2), kernel, groups=images.shape[1])
        pyramid.append(blurred[..., ::2, ::2])
    return pyramid


@pytest.mark.parametrize("size", [32, 33, 5])  # even, odd, and small enough for replicate padding
def test_the_pyramid_is_the_grouped_blur_subsampled(size):
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size), requires_grad=True)
    for got, want in zip(L.gaussian_pyramid(images, 5), grouped_pyramid(images, 5), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    got = torch.autograd.grad(L.gaussian_pyramid(images, 4)[-1].square().sum(), images)[0]
    want = torch.autograd.grad(grouped_pyramid(images, 4)[-1].square().sum(), images)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_losses_are_read_at_once_with_the_values_of_reading_them_one_by_one():
    losses = {"teacher": torch.tensor(0.123456789), "echo_kept": 2.0, "student": torch.tensor(3.25, requires_grad=True),
              "half": torch.tensor(0.1, dtype=torch.float16)}
    read = read_losses(losses)
    assert list(read) == list(losses)
    assert read == {name: float(value.detach()) if torch.is_tensor(value) else value for name, value in losses.items()}
    assert read_losses({"echo_kept": 1.0}) == {"echo_kept": 1.0}


def latent_trainer(**changes) -> EchoDistillTrainer:
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    config = tiny_config(batch_size=2, **changes)
    return EchoDistillTrainer(teacher, student, text, make_concept(config), config)


def count_decodes(trainer: EchoDistillTrainer, monkeypatch) -> list[bool]:
    """Each decode of the iteration, as whether it kept a gradient."""
    calls, decode = [], type(trainer.student).decode

    def counted(model, latents, *args, **kwargs):
        calls.append(torch.is_grad_enabled() and latents.requires_grad)
        return decode(model, latents, *args, **kwargs)

    monkeypatch.setattr(type(trainer.student), "decode", counted)
    return calls


@pytest.mark.parametrize("augment", ["flip", False])
def test_recurring_images_are_encoded_once_with_the_latents_encoding_gives(monkeypatch, augment):
    """Without crops and pastes every example is a concept image or its mirror image: each is encoded the first
    time it is drawn, and its kept latents are those encoding it gives."""
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    config = tiny_config(batch_size=4)
    concept = make_concept(config, augment=augment)
    trainer = EchoDistillTrainer(teacher, student, text, concept, config)
    encoded, encode = [], type(teacher).encode
    monkeypatch.setattr(type(teacher), "encode", lambda model, images: encoded.append(len(images)) or encode(model, images))
    with trainer.applied():
        for _ in range(6):
            trainer.train_step()
    distinct = len(concept) * (2 if augment else 1)
    assert 0 < sum(encoded) <= distinct and len(trainer._kept_latents) == sum(encoded)
    for (index, flipped), latents in trainer._kept_latents.items():
        image = concept.images[index].flip(-1) if flipped else concept.images[index]
        with torch.no_grad():
            torch.testing.assert_close(latents, encode(teacher, image[None])[0], rtol=1e-5, atol=1e-6)


def test_crops_and_pastes_are_encoded_every_time(monkeypatch):
    trainer = latent_trainer()
    encoded, encode = [], type(trainer.teacher).encode
    monkeypatch.setattr(type(trainer.teacher), "encode",
                        lambda model, images: encoded.append(len(images)) or encode(model, images))
    with trainer.applied():
        for _ in range(2):
            trainer.train_step()
    assert encoded == [2, 2] and not trainer._kept_latents


def test_adamw_is_fused_where_the_device_has_it():
    trainer = latent_trainer()
    assert all(optimizer.defaults["fused"] for optimizer in trainer.optimizers.values())


def test_the_default_decodes_the_sample_with_gradient_and_the_target_without(monkeypatch):
    trainer = latent_trainer()
    calls = count_decodes(trainer, monkeypatch)
    with trainer.applied():
        trainer.train_step()
    assert calls == [True, False]  # img(x_s) for the colour loss, with gradient; img(x_T) without


def test_the_cheaper_colour_option_decodes_nothing_and_still_learns_colour(monkeypatch):
    trainer = latent_trainer(color_space="latent_preview")
    assert trainer._preview_map.shape == (5, 3)  # 4 latent channels and the offset, to RGB
    calls = count_decodes(trainer, monkeypatch)
    with trainer.applied():
        losses = trainer.train_step()
    assert calls == [] and losses["color"] > 0


def test_the_latent_preview_recovers_an_affine_map_from_latents_to_colours():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=generator)
    mapping = torch.randn(5, 3, generator=generator)
    colours = L.latent_preview(latents, mapping)
    images = F.interpolate(colours, scale_factor=2, mode="nearest")  # each latent pixel covers 2 x 2 pixels
    torch.testing.assert_close(L.fit_latent_preview(latents, images), mapping, rtol=1e-4, atol=1e-4)


def test_an_unknown_colour_space_is_refused():
    with pytest.raises(ValueError, match="color_space must be one of"):
        latent_trainer(color_space="hsv")


def test_randomness_reaches_the_device_with_the_values_drawn():
    from echodistill_core.trainer import to_device

    drawn = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_device(drawn, torch.device("cpu")), drawn)
    if torch.cuda.is_available():  # through pinned memory, without waiting for the GPU
        assert torch.equal(to_device(drawn, torch.device("cuda")).cpu(), drawn)


def test_the_run_says_when_the_colour_loss_reads_the_latents_preview():
    assert "MS-SWD of the latents' colour preview" in "\n".join(latent_trainer(color_space="latent_preview").describe())
    assert "colour (MS-SWD) x" in "\n".join(latent_trainer().describe())


def test_compiling_is_opt_in_and_undone_after_the_run(monkeypatch):
    from echodistill_core import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", "aot_eager")  # no C++ compiler needed
    trainer = latent_trainer(compile_unets=True)
    unets = (trainer.teacher.unet, trainer.student.unet)
    with trainer.applied():
        assert all(unet._compiled_call_impl is not None for unet in unets)
    assert all(unet._compiled_call_impl is None for unet in unets)  # the base models as they were
    with latent_trainer().applied():
        assert all(unet._compiled_call_impl is None for unet in unets)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_unets_train_as_the_plain_ones(monkeypatch, backend):
    from echodistill_core import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", backend)
    runs = []
    for compiled in (False, True):
        trainer = latent_trainer(compile_unets=compiled)
        with trainer.applied():
            runs.append([trainer.guarded_step() for _ in range(2)])
        torch._dynamo.reset()
    for plain, compiled in zip(*runs):
        assert compiled == pytest.approx(plain, rel=1e-4, abs=1e-6)
