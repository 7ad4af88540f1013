"""One EchoDistill iteration against method.md, computed a second time by hand.

`reference_gradients` writes out the five steps and the echo with plain tensor arithmetic on the same
networks: the noising and the v target of the teacher's masked loss, the one-step student at its
terminal timestep, the re-noising with the shared noise, classifier-free guidance, the weight abar_t',
the student objective and the discriminator loss, the echo's ranking and weight. It draws its
randomness in the trainer's order (the batch, the echo's prompts, noise and discriminator scores, the
teacher's timesteps and the echo's, the re-noising timesteps, then the draws of steps 4 and 5) from a
generator with the same seed. The colour loss is taken from `losses.py`: tests/test_losses.py checks
it against its definition.

The trainer must step each optimizer with exactly the reference's gradients of exactly the reference's
parameters. Changing an equation of the method (a target, a weight, a detach, the guidance, the
re-noising, a label, the echo's ranking or weight, which model computes what, what trains) changes a
gradient or a parameter set, and these tests fail.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from conftest import SIZE, make_concept, tiny_config
from echodistill_core import losses as L
from echodistill_core import trainer as trainer_module
from echodistill_core.backbones import TEACHER_FEATURES, ImageBackbone
from echodistill_core.config import PRESETS
from echodistill_core.data import random_choice
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer

REAL, FAKE = 1, 0


def tiny_clip_vision() -> ImageBackbone:
    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=24))
    return ImageBackbone.from_transformers(vision)


# Every setting an iteration reads, away from its default, so that a setting ignored shows.
UNUSUAL = dict(batch_size=4, guidance_scale=6.5, echo_beta=0.3, echo_keep=0.75, echo_context_probability=0.9,
               echo_contexts=("in space", "on mars", "at dawn"), adversarial_weight=0.7, latent_weight=1.3,
               feature_weight=0.6, color_weight=0.35, teacher_timesteps=(100, 999), renoise_timesteps=(0, 300),
               teacher_lr=3e-2, token_lr=2e-2, student_lr=1e-3, discriminator_lr=2e-3, weight_decay=0.05,
               grad_clip=0.05)


def build(image_networks: bool = True, **changes) -> EchoDistillTrainer:
    """SD's shape in miniature: a VAE latent space, a v-prediction teacher and an epsilon student. With
    `image_networks`, the teacher-feature discriminator beside an image one and an image feature
    network; without, the defaults (the base teacher's features for both)."""
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    config = tiny_config(**{"batch_size": 2, "guidance_scale": 7.5, **changes})
    networks = {}
    if image_networks:
        networks = dict(discriminator_backbones=[TEACHER_FEATURES, tiny_clip_vision()],
                        feature_network=tiny_clip_vision())
    return EchoDistillTrainer(teacher, student, text, make_concept(config), config, **networks)


def parameters(trainer: EchoDistillTrainer) -> dict[str, list[torch.Tensor]]:
    return {name: [p for group in optimizer.param_groups for p in group["params"]]
            for name, optimizer in trainer.optimizers.items()}


def record(trainer: EchoDistillTrainer) -> tuple[dict, dict]:
    """The gradients each optimizer steps with, and its parameters after the step, as the run goes."""
    gradients, after = {}, {}
    for name, optimizer in trainer.optimizers.items():
        optimizer.register_step_pre_hook(lambda opt, args, kwargs, name=name: gradients.__setitem__(
            name, [None if p.grad is None else p.grad.clone() for g in opt.param_groups for p in g["params"]]))
        optimizer.register_step_post_hook(lambda opt, args, kwargs, name=name: after.__setitem__(
            name, [p.detach().clone() for g in opt.param_groups for p in g["params"]]))
    return gradients, after


def v_prediction_x0(model, z, t, c):
    abar = model.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt() * z - (1 - abar).sqrt() * model.unet(z, t, c).sample


def one_step_student(student, noise, c):
    """x_s = G(eps, c) at t = 999, SD-Turbo's epsilon parameterisation."""
    t = torch.full((len(noise),), 999)
    abar = student.schedule.alphas_cumprod[999]
    return (noise - (1 - abar).sqrt() * student.unet(noise, t, c).sample) / abar.sqrt()


def decode(model, latents):
    return model.vae.decode(latents / model.vae.config.scaling_factor).sample


def scores(trainer, latents, images, c, generator) -> list[torch.Tensor]:
    """Each discriminator's backbone features of a batch (latent or image space)."""
    return [d.backbone(latents if d.space == "latent" else images, c, generator) for d in trainer.discriminators]


@torch.no_grad()
def reference_echo(ref: EchoDistillTrainer, shape, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Student samples for template prompts, a context added with the configured probability; the
    `echo_keep` fraction with the highest realness summed over the discriminators, most real first."""
    config, student = ref.config, ref.student
    prompts = []
    for _ in range(shape[0]):
        prompt = ref.concept.template_prompt(g)
        if torch.rand(1, generator=g) < config.echo_context_probability:
            prompt = f"{prompt} {random_choice(config.echo_contexts, g)}"
        prompts.append(prompt)
    c = ref.text(prompts)
    x = one_step_student(student, torch.randn(shape, generator=g), c)
    features = scores(ref, x, decode(student, x), c, g)
    realness = sum(F.log_softmax(d.head(f), dim=1)[:, REAL] for d, f in zip(ref.discriminators, features))
    kept = realness.argsort(descending=True)[: max(1, round(config.echo_keep * shape[0]))]
    return x[kept], [prompts[i] for i in kept.tolist()]


def reference_gradients(ref: EchoDistillTrainer, after: dict) -> dict[str, list[torch.Tensor | None]]:
    config, teacher, student, text, concept, g = ref.config, ref.teacher, ref.student, ref.text, ref.concept, ref.generator
    params = parameters(ref)
    expected = {}
    with ref.applied():
        batch = concept.sample(config.batch_size, g)
        z_real = teacher.vae.encode(batch.images).latent_dist.mean * teacher.vae.config.scaling_factor
        eps = torch.randn(z_real.shape, generator=g)
        mask = F.interpolate(batch.masks, size=z_real.shape[-2:], mode="area")

        # The echo: student samples for training prompts (some with a new context), the most real kept.
        echo = ref.in_echo_stage
        if echo:
            x_echo, echo_prompts = reference_echo(ref, z_real.shape, g)

        # 1. Teacher step: masked MSE to the v target; + beta * the same loss on the echoed samples.
        def teacher_loss(x0, noise, t, valid, prompts):
            abar = teacher.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
            z_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
            squared = (teacher.unet(z_t, t, text(prompts)).sample - v) ** 2 * valid
            return (squared.flatten(1).sum(1) / valid.expand_as(squared).flatten(1).sum(1)).mean()

        low, high = config.teacher_timesteps
        t = torch.randint(low, high + 1, (config.batch_size,), generator=g)
        loss_T = teacher_loss(z_real, eps, t, mask, batch.prompts)
        if echo:
            eps_echo = torch.randn(x_echo.shape, generator=g)
            t_echo = torch.randint(low, high + 1, (len(x_echo),), generator=g)
            loss_T = loss_T + config.echo_beta * teacher_loss(x_echo, eps_echo, t_echo,
                                                              torch.ones_like(x_echo[:, :1]), echo_prompts)
        expected["teacher"] = torch.autograd.grad(loss_T, params["teacher"])
        with torch.no_grad():  # the teacher as its step left it: the target comes from the just-updated teacher
            for p, value in zip(params["teacher"], after["teacher"]):
                p.copy_(value)

        # 2. Student sample from the shared noise and sg(c).
        with torch.no_grad():
            c, uncond = text(batch.prompts), text([""])
        x_s = one_step_student(student, eps, c)
        images_s = decode(student, x_s)

        # 3. Teacher target: re-noise sg(x_s) with the same eps, one guided evaluation, weight abar_t'.
        low, high = config.renoise_timesteps
        t_renoise = torch.randint(low, high + 1, (config.batch_size,), generator=g)
        with torch.no_grad():
            abar = teacher.schedule.alphas_cumprod[t_renoise].view(-1, 1, 1, 1)
            z = abar.sqrt() * x_s + (1 - abar).sqrt() * eps
            x0_cond = v_prediction_x0(teacher, z, t_renoise, c)
            x0_uncond = v_prediction_x0(teacher, z, t_renoise, uncond.expand_as(c))
            x_T = x0_uncond + config.guidance_scale * (x0_cond - x0_uncond)
            images_T = decode(student, x_T)
        w = abar.flatten()

        # 4. Student step: the adversarial terms unweighted, the alignment weighted by w.
        fake = scores(ref, x_s, images_s, c, g)
        adversarial = sum(F.cross_entropy(d.head(f), torch.full((len(f),), REAL))
                          for d, f in zip(ref.discriminators, fake))
        latent = 0.5 * ((x_s - x_T) ** 2).flatten(1).mean(1)
        f = ref.feature_network
        sample, target = (x_s, x_T) if f.space == "latent" else (images_s, images_T)
        draws = g.get_state()  # the teacher's features see both through the same noise
        with torch.no_grad():
            features_T = f(target, c, g)
        g.set_state(draws)
        feature = 1 - F.cosine_similarity(f(sample, c, g), features_T, dim=1)
        color = L.color_loss(images_s, images_T, g)
        alignment = config.latent_weight * latent + config.feature_weight * feature + config.color_weight * color
        loss_G = config.adversarial_weight * adversarial + (w * alignment).mean()
        expected["student"] = torch.autograd.grad(loss_G, params["student"])

        # 5. Discriminators: real concept images against sg(img(x_s)).
        with torch.no_grad():
            real = scores(ref, z_real, batch.images, c, g)
        loss_D = sum(0.5 * (F.cross_entropy(d.head(r), torch.full((len(r),), REAL))
                            + F.cross_entropy(d.head(f.detach()), torch.full((len(f),), FAKE)))
                     for d, r, f in zip(ref.discriminators, real, fake))
        expected["discriminators"] = torch.autograd.grad(loss_D, params["discriminators"])
    return expected


def clipped(gradients: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], float]:
    """Gradients scaled to a total norm of at most `max_norm`, and their total norm."""
    total = float(torch.stack([g.norm() for g in gradients]).norm())
    return [g * min(1.0, max_norm / (total + 1e-6)) for g in gradients], total


def adamw_step(trainer: EchoDistillTrainer, name: str, before: list[torch.Tensor], gradients) -> list[torch.Tensor]:
    """One AdamW step from `before` with `gradients`, at the config's betas, weight decay and rates."""
    config = trainer.config
    rates = {"teacher": [config.teacher_lr, config.token_lr or config.teacher_lr], "student": [config.student_lr],
             "discriminators": [config.discriminator_lr]}[name]
    tensors, groups = iter(zip(before, gradients)), []
    for group, rate in zip(trainer.optimizers[name].param_groups, rates, strict=True):
        params = []
        for _ in group["params"]:
            value, gradient = next(tensors)
            params.append(value.clone().requires_grad_())
            params[-1].grad = gradient
        groups.append({"params": params, "lr": rate})
    torch.optim.AdamW(groups, betas=config.adam_betas, weight_decay=config.weight_decay).step()
    return [p.detach() for group in groups for p in group["params"]]


@pytest.mark.parametrize("echo, image_networks", [(False, True), (True, True), (True, False)],
                         ids=["before the echo", "in the echo stage", "default networks"])
def test_each_optimizer_steps_with_the_methods_gradient(echo, image_networks):
    changes = dict(UNUSUAL, echo=echo, echo_start=0.0, image_networks=image_networks)
    trainer, ref = build(**changes), build(**changes)
    before = {name: [p.detach().clone() for p in group] for name, group in parameters(trainer).items()}
    gradients, after = record(trainer)
    with trainer.applied():
        losses = trainer.train_step()
    assert ("echo" in losses) == echo
    expected = reference_gradients(ref, after)
    assert set(gradients) == set(expected)
    for name in expected:
        assert len(gradients[name]) == len(expected[name]), f"the {name} optimizer steps other parameters"
        wanted, norm = clipped(list(expected[name]), trainer.config.grad_clip)
        assert norm > trainer.config.grad_clip, f"the {name} gradient is not clipped: the check would be blind"
        for index, (got, want) in enumerate(zip(gradients[name], wanted)):
            assert got is not None, f"{name} parameter {index} got no gradient"
            error = (got - want).norm() / want.norm().clamp(min=1e-12)
            assert error < 2e-4, f"{name} parameter {index}: gradient off by {error:.2e} (relative)"
        for index, (got, want) in enumerate(zip(after[name], adamw_step(trainer, name, before[name], gradients[name]))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"{name} parameter {index} stepped wrongly")


def test_the_target_is_the_just_updated_teachers_guided_refinement():
    """x_T itself, from a teacher whose one step visibly moves it: neither the teacher before its step nor
    the base teacher, and guided (the conditional and unconditional predictions differ)."""
    trainer = build(**UNUSUAL, echo=False)
    before = {key: value.clone() for key, value in trainer.teacher_adapters.state_dict().items()}
    seen = {}

    def spy(teacher, x_s, c, uncond, eps, t, guidance_scale):
        seen.update(args=(x_s.clone(), c.clone(), uncond.clone(), eps.clone(), t.clone(), guidance_scale))
        seen["x_T"], w = original(teacher, x_s, c, uncond, eps, t, guidance_scale)
        return seen["x_T"], w

    original, trainer_module.L.teacher_target = trainer_module.L.teacher_target, spy
    try:
        with trainer.applied():
            trainer.train_step()
    finally:
        trainer_module.L.teacher_target = original
    x_s, c, uncond, eps, t, guidance_scale = seen["args"]
    updated = trainer.teacher_adapters.state_dict()  # the student's step does not touch the teacher

    def guided(adapters_state=None, base=False):
        abar = trainer.teacher.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        z = abar.sqrt() * x_s + (1 - abar).sqrt() * eps
        with torch.no_grad(), trainer.applied():
            if adapters_state is not None:
                trainer.teacher_adapters.load_state_dict(adapters_state)
            with trainer.teacher_adapters.disabled() if base else contextlib.nullcontext():
                cond = v_prediction_x0(trainer.teacher, z, t, c)
                uncond_x0 = v_prediction_x0(trainer.teacher, z, t, uncond.expand_as(c))
        return uncond_x0 + guidance_scale * (cond - uncond_x0), cond, uncond_x0

    want, cond, uncond_x0 = guided({k: v.clone() for k, v in updated.items()})
    stale, base = guided(before)[0], guided(base=True)[0]
    assert guidance_scale == trainer.config.guidance_scale
    nearest_other = min(float((other - want).norm()) for other in (stale, base, cond))
    assert float((seen["x_T"] - want).norm()) < 0.01 * nearest_other  # 100 times closer than any mistake


def test_the_echo_keeps_exactly_the_samples_the_discriminators_rank_most_real():
    trainer, ref = build(batch_size=8, echo_keep=0.5, echo_start=0.0), build(batch_size=8, echo_keep=0.5, echo_start=0.0)
    shape = (8, 4, SIZE // 2, SIZE // 2)
    with trainer.applied():
        echo = trainer.echo_samples_ranked(shape)
        kept, prompts = echo.latents, echo.kept_prompts()
    with ref.applied():
        wanted, wanted_prompts = reference_echo(ref, shape, ref.generator)
    assert prompts == wanted_prompts and len(prompts) == 4
    torch.testing.assert_close(kept, wanted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_echo_prompts_are_training_templates_with_the_configured_contexts(probability):
    trainer = build(batch_size=16, echo_start=0.0, echo_keep=1.0, echo_context_probability=probability,
                    echo_contexts=("in space",))
    with trainer.applied():
        prompts = trainer.echo_samples_ranked((16, 4, SIZE // 2, SIZE // 2)).kept_prompts()
    assert all(prompt.endswith("<sks> dog in space") == (probability == 1.0) for prompt in prompts)
    assert len({prompt.split("<sks>")[0] for prompt in prompts}) > 2  # several templates, not one prompt


def test_the_teacher_feature_discriminator_reads_the_configured_noise_levels():
    trainer = build(discriminator_timesteps=(10, 20))
    assert trainer.discriminators[0].backbone.timesteps == (10, 20)


def test_the_compared_iteration_has_a_masked_batch():
    """The comparison above is only as strong as its inputs: its batch has a pasted (partly masked) image."""
    trainer = build(**UNUSUAL)
    batch = trainer.concept.sample(trainer.config.batch_size, torch.Generator().manual_seed(trainer.config.seed))
    assert (batch.masks < 1).any()


def test_what_trains_is_the_teachers_adapters_and_token_the_students_adapters_and_the_heads():
    trainer = build()
    params = {name: {id(p) for p in group} for name, group in parameters(trainer).items()}
    assert params["teacher"] == {id(p) for p in trainer.teacher_adapters.parameters()} | {id(trainer.token.vector)}
    assert params["student"] == {id(p) for p in trainer.student_adapters.parameters()}
    assert params["discriminators"] == {id(p) for d in trainer.discriminators for p in d.head.parameters()}


def test_the_token_and_the_teacher_learn_only_from_the_teachers_loss():
    """Gradient reaches the shared token and the teacher's adapters once per iteration, in step 1: the
    student reads sg(c), and the teacher-feature discriminator is the frozen base teacher."""
    trainer = build(echo_start=0.0)
    arrivals = {"token": 0, "teacher": 0, "student": 0}
    trainer.token.vector.register_hook(lambda grad: arrivals.__setitem__("token", arrivals["token"] + 1))
    for name, adapters in (("teacher", trainer.teacher_adapters), ("student", trainer.student_adapters)):
        first = next(adapters.parameters())
        first.register_hook(lambda grad, name=name: arrivals.__setitem__(name, arrivals[name] + 1))
    with trainer.applied():
        trainer.train_step()
    assert arrivals == {"token": 1, "teacher": 1, "student": 1}


def test_the_paper_preset_is_method_md():
    paper = PRESETS["paper"]
    assert (paper.teacher_lr, paper.student_lr, paper.discriminator_lr) == (1e-5, 2e-5, 1e-4)
    assert (paper.adam_betas, paper.weight_decay, paper.grad_clip) == ((0.9, 0.999), 1e-2, 1.0)
    assert (paper.batch_size, paper.steps, paper.seed, paper.resolution) == (2, 1000, 42, 0)
    assert paper.guidance_scale == 7.5 and paper.shared_noise
    assert (paper.adversarial_weight, paper.latent_weight, paper.feature_weight, paper.color_weight) == (1, 1, 1, 0.1)
    assert (paper.color_levels, paper.color_projections, paper.color_patch) == (5, 128, 11)
    assert paper.teacher_timesteps == paper.renoise_timesteps == (0, 999)
    assert (paper.echo, paper.echo_start, paper.echo_beta, paper.echo_keep) == (True, 0.75, 0.5, 0.5)
    assert paper.parameterisation == "custom_diffusion" and paper.r1_gamma == 0
