"""One EchoDistill iteration: method.md's five steps, in order, and the echo's branch where it joins.

    encode               the augmented concept photos to latents (recurring ones once)
    echo samples         in the echo stage: student samples the discriminators rank most real
    1 teacher step       the teacher (K/V adapters + token row) learns the concept from real images,
                         and in the echo stage also from the kept echo samples, weighted by beta
    2 student sample     x_s = G(eps, sg(c)) in one step
    3 teacher target     the just-updated teacher refines the re-noised x_s with CFG: x_T, w = abar_t'
    4 student step       adversarial + w * (latent + feature + colour) alignment to x_T
    5 discriminators     each head learns real concept images from sg(x_s)

All randomness comes from one generator, so a run is reproducible and resumes exactly. The config's
memory settings (memory.py's presets) decide gradient checkpointing, how the VAE decodes with
gradient, whether the text encoder and VAE wait on the CPU between uses, and where the snapshot that
undoes a failed step lives. Around the iteration, each in its module: the run loop and previews
(run_loop.py), the step that undoes itself on failure (rollback.py), states and their files
(training_state.py); the trainer's methods of those names delegate to them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from . import rollback, run_loop, training_state
from .backbones import TEACHER_FEATURES, TeacherUNetFeatures
from .config import EchoDistillConfig
from .data import LARGE_EDITS, SMALL_EDITS, ConceptDataset, random_choice
from .discriminators import Discriminator
from .memory import Offload
from .models import DiffusionModel, TextConditioner, check_pair
from .parallel import Shard, average_gradients
from .personalization import Personalization
# Re-exported: what callers of the trainer catch, read or time.
from .rollback import NonFiniteLossError, TrainingOutOfMemoryError, read_losses  # noqa: F401
from .run_loop import StepReport  # noqa: F401
from .training_state import STATE_FORMAT  # noqa: F401

log = logging.getLogger("echodistill")
FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch.optim.AdamW(fused=True) runs
PREVIEWED = " of the latents' colour preview"  # the cheaper colour loss, as describe() names it
COMPILE_BACKEND = "inductor"  # torch.compile's backend for config.compile_unets


@dataclass
class EchoSamples:
    """The echo's kept student samples, with what the teacher's loss needs of their prompts, on the device."""
    latents: torch.Tensor  # [kept, C, h, w]: sg(x_s) of the candidates the discriminators rank most real, most real first
    embeddings: torch.Tensor  # [candidates, tokens, width]: every candidate's prompt encoded, with the token's gradient
    chosen: torch.Tensor  # [kept]: the kept candidates' indices, on the device
    prompts: list[str]  # every candidate's prompt

    def kept_embeddings(self) -> torch.Tensor:
        return self.embeddings.index_select(0, self.chosen)

    def kept_prompts(self) -> list[str]:
        """The kept samples' prompts: reads the choice from the device (a wait), so for inspection, not for a step."""
        return [self.prompts[index] for index in self.chosen.tolist()]


class EchoDistillTrainer:
    def __init__(self, teacher: DiffusionModel, student: DiffusionModel, text: TextConditioner,
                 concept: ConceptDataset, config: EchoDistillConfig, *,
                 discriminator_backbones: list[nn.Module | str] | None = None,
                 feature_network: nn.Module | str | None = TEACHER_FEATURES,
                 student_text: TextConditioner | None = None):
        """`discriminator_backbones`: each discriminator's frozen backbone, an image network or
        TEACHER_FEATURES (the default). `feature_network`: f of the feature loss, an image network (the
        paper's: IP-Adapter's projection of CLIP-H embeddings), TEACHER_FEATURES (the default, which
        needs no download) or None to drop the feature loss."""
        check_pair(teacher, student, text, student_text)
        resolution = training_resolution(config, student)
        if concept.resolution != resolution:
            chosen_by = "the config's resolution" if config.resolution else "the student's native size"
            raise ValueError(f"the concept images are prepared at {concept.resolution} px, but this run trains at "
                             f"{resolution} px ({chosen_by}); prepare them at {resolution} px or set the "
                             f"resolution to {concept.resolution}")
        last = teacher.schedule.terminal_timestep
        beyond = [name for name in ("teacher_timesteps", "renoise_timesteps", "discriminator_timesteps")
                  if getattr(config, name)[1] > last]
        if beyond:
            raise ValueError(f"{', '.join(beyond)} reach past the teacher's last timestep ({last}); keep them within 0..{last}")
        self.teacher, self.student, self.text, self.concept, self.config = teacher, student, text, concept, config
        self.shard = Shard.current()  # several processes share each batch (parallel.py); one: the whole batch
        self.shard.size(config.batch_size)
        with torch.random.fork_rng(devices=[]):  # initial LoRA factors and heads follow the seed
            torch.manual_seed(config.seed)
            self.personalization = Personalization.create(config, teacher, student, text)
            backbones = [self._backbone(backbone) for backbone in discriminator_backbones or [TEACHER_FEATURES]]
            self.discriminators = nn.ModuleList(
                Discriminator(backbone, f"{type(backbone).__name__}_{index}") for index, backbone in enumerate(backbones)
            ).to(teacher.device)
            self.feature_network = None if feature_network is None else self._backbone(feature_network).to(teacher.device)
        if self.feature_network is None:
            log.info("feature loss off: no feature network")
        self._check_token_within_the_text_window()
        self.offload = Offload([text.text_encoder, teacher.vae, student.vae], teacher.device, config.offload)

        def adamw(groups):  # fused: one kernel for all of a group's tensors, where the device has it
            return torch.optim.AdamW(groups, betas=config.adam_betas, weight_decay=config.weight_decay,
                                     fused=True if teacher.device.type in FUSED_ADAMW_DEVICES else None)

        self.optimizers = {
            "teacher": adamw([{"params": list(self.teacher_adapters.parameters()), "lr": config.teacher_lr},
                              {"params": [self.token.vector], "lr": config.token_lr or config.teacher_lr}]),
            "student": adamw([{"params": list(self.student_adapters.parameters()), "lr": config.student_lr}]),
            "discriminators": adamw([{"params": [p for d in self.discriminators for p in d.trainable_parameters()],
                                      "lr": config.discriminator_lr}]),
        }
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.echo_samples = 0
        self._uncond: torch.Tensor | None = None
        self._kept_latents: dict[tuple[int, bool], torch.Tensor] = {}  # the frozen VAE's latents of recurring images
        if config.color_space not in L.COLOR_SPACES:
            raise ValueError(f"color_space must be one of {L.COLOR_SPACES}, not {config.color_space!r}")
        self._preview_map = None  # the cheaper colour loss's latent-to-colour map, fitted on the concept
        if config.color_space == "latent_preview" and not teacher.in_pixel_space:
            with torch.no_grad(), self.offload.using(teacher.vae):
                images = torch.stack(concept.images).to(teacher.device)
                latents = torch.cat([teacher.encode(chunk) for chunk in images.split(config.batch_size)])
                self._preview_map = L.fit_latent_preview(latents, images)

    def _check_token_within_the_text_window(self) -> None:
        """Every prompt training can draw (the captions, or each template with each edit; the echo's contexts
        come after the token) must keep the token inside the text encoder's window, or it would be cut off."""
        concept = self.concept
        if concept.captions is not None:
            prompts = concept.caption_prompts()
        else:
            edits = ("",) + SMALL_EDITS + LARGE_EDITS
            prompts = [template.format(edit + concept.subject) for template in concept.templates for edit in edits]
        for prompt in prompts:
            self.token.check_within_window(prompt)

    def _backbone(self, backbone: nn.Module | str) -> nn.Module:
        if backbone == TEACHER_FEATURES:
            return TeacherUNetFeatures(self.teacher, self.teacher_adapters, self.config.discriminator_timesteps)
        if isinstance(backbone, str):
            raise ValueError(f"unknown network {backbone!r}; give {TEACHER_FEATURES!r} (the base teacher's features) "
                             "or an image network")
        return backbone

    # The learned parts, by name.
    @property
    def token(self):
        return self.personalization.token

    @property
    def teacher_adapters(self):
        return self.personalization.teacher_adapters

    @property
    def student_adapters(self):
        return self.personalization.student_adapters

    @property
    def history(self) -> list[dict]:
        return self.personalization.history

    @property
    def in_echo_stage(self) -> bool:
        return self.config.echo and self.step >= self.config.echo_start_step

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The personalized text encoder and both adapted UNets, recomputing activations in the backward pass
        if the config says so, for the duration of the block: afterwards the base models are as they were."""
        unets = (self.teacher.unet, self.student.unet)
        checkpointing = [unet.is_gradient_checkpointing for unet in unets]
        compiled = [unet._compiled_call_impl for unet in unets]
        try:
            for unet in unets:
                _set_checkpointing(unet, self.config.gradient_checkpointing)
                if self.config.compile_unets and unet._compiled_call_impl is None:
                    unet.compile(backend=COMPILE_BACKEND)  # in place; compiles at the first steps
            with self.personalization.applied(self.text, self.teacher, self.student):
                yield
        finally:
            for unet, was_on, call in zip(unets, checkpointing, compiled):
                _set_checkpointing(unet, was_on)
                unet._compiled_call_impl = call

    def describe(self) -> list[str]:
        """What this run computes, a line per part: printed by the CLI, shown on the Train node."""
        config = self.config
        what = "K/V copies" if config.parameterisation == "custom_diffusion" else f"LoRA rank {config.lora_rank}"
        feature = (f"feature x{config.feature_weight:g} on {_name(self.feature_network)}" if self.feature_network
                   else "no feature loss")
        lines = [
            f"teacher: {what} and the token {config.token}, lr {config.teacher_lr:g}; "
            f"student: {what}, lr {config.student_lr:g}, one step",
            f"student loss: adversarial x{config.adversarial_weight:g} + abar_t' * (latent x{config.latent_weight:g}"
            f" + {feature} + colour (MS-SWD{PREVIEWED if self._preview_map is not None else ''})"
            f" x{config.color_weight:g}); target with guidance {config.guidance_scale:g}",
            "discriminators: " + ", ".join(_name(d.backbone) for d in self.discriminators),
            f"echo: from step {config.echo_start_step + 1} of {config.steps}, weight {config.echo_beta:g}, the "
            f"{config.echo_keep:.0%} most real kept" if config.echo else "echo: off",
            f"{config.steps} steps of batch {config.batch_size} at {self.concept.resolution} px",
        ]
        return lines

    # Randomness, all from self.generator.
    # Per-sample draws are made for the whole batch and sliced (parallel.py): the same on any number of processes.
    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        whole = torch.randn((len(like) * self.shard.world, *like.shape[1:]), generator=self.generator)
        return to_device(self.shard.take(whole), like.device).to(like.dtype)

    def _timesteps(self, bounds: tuple[int, int], count: int) -> torch.Tensor:
        whole = torch.randint(bounds[0], bounds[1] + 1, (count * self.shard.world,), generator=self.generator)
        return to_device(self.shard.take(whole), self.teacher.device)

    def _real_latents(self, images: torch.Tensor, sources: list | None) -> torch.Tensor:
        """The VAE latents of the batch's images. An image that recurs (a concept image as prepared, or its
        mirror image: `ConceptBatch.sources`) is encoded the first time only: the VAE is frozen, so its
        latents are the same every time. Crops and pastes are new images, encoded each time."""
        if self.teacher.in_pixel_space or sources is None:
            return self.teacher.encode(images)
        kept = self._kept_latents
        rows = {}  # each image to encode, once: the first row showing it
        for row, source in enumerate(sources):
            if source is None or source not in kept:
                rows.setdefault(row if source is None else source, row)
        if len(rows) == len(sources):
            encoded = self.teacher.encode(images)
        else:
            encoded = self.teacher.encode(images[list(rows.values())]) if rows else images[:0]
        fresh = {}
        for key, latents in zip(rows, encoded):
            fresh[key] = latents
            if not isinstance(key, int):
                kept[key] = latents.clone()
        if len(rows) == len(sources):
            return encoded
        return torch.stack([fresh[row] if source is None else kept[source] for row, source in enumerate(sources)])

    def _uncond_embedding(self) -> torch.Tensor:
        if self._uncond is None:
            with torch.no_grad():
                self._uncond = self.text([""])
        return self._uncond

    # One iteration.
    def train_step(self) -> dict[str, float]:
        """Method.md's five steps and the echo, in order; returns the losses (tensors: `guarded_step` reads
        them at once). Call inside `applied()`."""
        config, teacher = self.config, self.teacher
        batch = self.concept.sample(config.batch_size, self.generator)  # the whole batch; this process's slice
        images, prompts = self.shard.take(batch.images).to(teacher.device), self.shard.take(batch.prompts)
        with self.offload.using(self.text.text_encoder, teacher.vae):
            with torch.no_grad(), phase("encode"):
                z_real = self._real_latents(images, self.shard.take(batch.sources) if batch.sources else None)
                uncond = self._uncond_embedding()
            mask = F.interpolate(self.shard.take(batch.masks).to(teacher.device), size=z_real.shape[-2:], mode="area")
            eps = self._noise(z_real)
            echo = None
            if self.in_echo_stage:  # the echo: the student's samples the discriminators rank most real
                with phase("echo samples"):
                    echo = self.echo_samples_ranked(z_real.shape)
            with phase("1 teacher step"):  # ... join the teacher's batch here
                losses = self.teacher_step(z_real, prompts, eps, mask, echo)
            with torch.no_grad():
                c = self.text(prompts)  # sg(c), with the token as just updated

        with self.offload.using(self.student.vae):
            with phase("2 student sample"):
                x_s, images_s = self.student_sample(eps if config.shared_noise else self._noise(z_real), c)
            with phase("3 teacher target"):
                x_T, w = self.teacher_target(x_s, c, uncond, eps if config.shared_noise else None)
            with phase("4 student step"):
                fake_features = self.discriminator_features(x_s, images_s, c)
                losses |= self.student_step(x_s, images_s, x_T, w, c, fake_features)
        with phase("5 discriminators"):
            losses["discriminator"] = self.discriminator_step(z_real, images, c, fake_features)
        return losses

    def echo_samples_ranked(self, shape: torch.Size) -> "EchoSamples":
        """Student samples of latent `shape` (the training resolution) for training prompts and new
        contexts; the `echo_keep` fraction the discriminators find most real is kept. The choice stays on
        the device (no wait for it): the candidates' prompts are encoded once, here, differentiably in the
        token, and the teacher's loss takes the kept rows of that encoding."""
        config, concept = self.config, self.concept
        prompts = []
        for _ in range(shape[0] * self.shard.world):
            prompt = concept.template_prompt(self.generator)
            if torch.rand(1, generator=self.generator) < config.echo_context_probability:
                prompt = f"{prompt} {random_choice(config.echo_contexts, self.generator)}"
            prompts.append(prompt)
        prompts = self.shard.take(prompts)
        embeddings = self.text(prompts)  # the token as the teacher's step will read it: not updated before then
        with torch.no_grad():
            c = embeddings.detach()
            x_echo = self._student_x0(self._noise(torch.empty(shape, device=self.student.device)), c)
            images = self.student.decode(x_echo) if any(d.space == "image" for d in self.discriminators) else None
            score = sum(L.realness(d(d.features(x_echo, images, c, self.generator))) for d in self.discriminators)
        keep = max(1, round(config.echo_keep * len(prompts)))
        chosen = score.topk(keep).indices  # most real first
        self.echo_samples += keep
        return EchoSamples(x_echo.index_select(0, chosen), embeddings, chosen, prompts)

    def teacher_step(self, z_real, prompts, eps, mask, echo: "EchoSamples | None" = None) -> dict[str, float]:
        """1. L_T on the real latents (masked); with `echo`, + echo_beta * L_T on the kept echo samples
        (unmasked, with noise and timesteps of their own), in one batch; one update of the teacher's
        adapters and the token."""
        t = self._timesteps(self.config.teacher_timesteps, len(z_real))
        parts, losses = [(z_real, self.text(prompts), eps, t, mask)], {}
        if echo is not None:
            x_echo = echo.latents
            parts.append((x_echo, echo.kept_embeddings(), self._noise(x_echo),
                          self._timesteps(self.config.teacher_timesteps, len(x_echo)), torch.ones_like(x_echo[:, :1])))
            losses["echo_kept"] = float(len(x_echo))
        x0, c, noise, timesteps, masks = parts[0] if len(parts) == 1 else (torch.cat(part) for part in zip(*parts))
        per_sample = L.teacher_diffusion_loss(self.teacher, x0, c, noise, timesteps, masks)
        loss = losses["teacher"] = per_sample[: len(z_real)].mean()
        if echo is not None:
            losses["echo"] = per_sample[len(z_real):].mean()
            loss = loss + self.config.echo_beta * losses["echo"]
        self._optimize("teacher", loss)
        return losses

    def student_sample(self, noise: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """2. x_s = G(noise, sg(c)) in one step, and img(x_s) decoded with gradient when a loss reads it."""
        x_s = self._student_x0(noise, c)
        images_s = self.student.decode(x_s, self.config.vae_decode) if self._reads_images("sample") else None
        return x_s, images_s

    def teacher_target(self, x_s, c, uncond, eps=None) -> tuple[torch.Tensor, torch.Tensor]:
        """3. x_T, the just-updated teacher's guided refinement of sg(x_s) re-noised with `eps` (None: noise
        of its own), and its weight w = abar_t'."""
        t_renoise = self._timesteps(self.config.renoise_timesteps, len(x_s))
        eps = self._noise(x_s) if eps is None else eps
        return L.teacher_target(self.teacher, x_s, c, uncond, eps, t_renoise, self.config.guidance_scale)

    def discriminator_features(self, x_s, images_s, c) -> list[torch.Tensor]:
        """Each discriminator's backbone features of the student's sample, differentiable in it: read by
        the student's adversarial loss (step 4) and, detached, by the discriminators' (step 5)."""
        return [d.features(x_s, images_s, c, self.generator) for d in self.discriminators]

    def _student_x0(self, noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(noise),), self.student.schedule.terminal_timestep, device=noise.device)
        return self.student.predict_x0(noise, t, c)

    def student_step(self, x_s, images_s, x_T, w, c, fake_features) -> dict[str, float]:
        """4. L_G = adversarial + w * (latent + feature + colour) alignment of x_s to x_T; one update of the
        student's adapters."""
        config = self.config
        images_T = None
        if self._reads_images("target"):
            with torch.no_grad():
                images_T = self.student.decode(x_T)
        adversarial = [L.adversarial_generator_loss(d(f)) for d, f in zip(self.discriminators, fake_features)]
        feature = None
        if self.feature_network is not None:
            feature = L.feature_alignment_loss(*self._paired_features(x_s, images_s, x_T, images_T, c))
        latent = L.latent_alignment_loss(x_s, x_T)
        colour_s, colour_T = images_s, images_T
        if self._preview_map is not None:
            colour_s, colour_T = L.latent_preview(x_s, self._preview_map), L.latent_preview(x_T, self._preview_map)
        color = L.color_loss(colour_s, colour_T, self.generator, levels=config.color_levels,
                             projections=config.color_projections, patch=config.color_patch)
        loss = L.student_objective(
            adversarial, w, latent, feature, color, adversarial_weight=config.adversarial_weight,
            latent_weight=config.latent_weight, feature_weight=config.feature_weight, color_weight=config.color_weight,
        )
        self._optimize("student", loss)
        report = {"student": loss, "latent": latent.mean(), "color": color.mean(),
                  "adversarial": sum(adversarial) / len(adversarial)}
        if feature is not None:
            report["feature"] = feature.mean()
        return report

    def _reads_images(self, which: str) -> bool:
        """Whether a loss reads the decoded student sample ("sample") or teacher target ("target"): the
        colour loss in image space, an image feature network, an image discriminator (the sample only).
        Nothing is decoded that nothing reads."""
        if self._preview_map is None:  # the colour loss reads the images (in pixel space, the samples themselves)
            return True
        if self.feature_network is not None and self.feature_network.space == "image":
            return True
        return which == "sample" and any(d.space == "image" for d in self.discriminators)

    def _paired_features(self, x_s, images_s, x_T, images_T, c) -> tuple[torch.Tensor, torch.Tensor]:
        """f(x_s) and sg(f(x_T)), seen through the same random draws (a latent network's noise)."""
        network = self.feature_network
        sample, target = (x_s, x_T) if network.space == "latent" else (images_s, images_T)
        draws = self.generator.get_state()
        with torch.no_grad():
            features_T = network(target, c, self.generator)
        self.generator.set_state(draws)
        return network(sample, c, self.generator), features_T

    def discriminator_step(self, z_real, images_real, c, fake_features) -> torch.Tensor:
        """5. Each head: real concept images against sg(x_s)'s features; one update of the heads."""
        total = torch.zeros((), device=z_real.device)
        for discriminator, fake in zip(self.discriminators, fake_features):
            with torch.no_grad():
                real = discriminator.features(z_real, images_real, c, self.generator)
            real.requires_grad_(self.config.r1_gamma > 0)
            logits_real = discriminator(real)
            loss = L.discriminator_loss(logits_real, discriminator(fake.detach()))
            if self.config.r1_gamma > 0:  # on the head's input: the backbone is frozen
                loss = loss + L.r1_penalty(logits_real, real, self.config.r1_gamma)
            total = total + loss
        self._optimize("discriminators", total)
        return total

    def _optimize(self, name: str, loss: torch.Tensor) -> None:
        if self.config.rollback == "off":  # no snapshot to go back to: stop before the loss reaches a weight
            rollback.check_finite(read_losses({name: loss}), self.step)  # a wait for the device, for each loss
        # Every backward starts from clean gradients: the student's backward also reaches the
        # discriminator heads (through D_k into img(x_s)), and those gradients are not theirs to step with.
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        optimizer = self.optimizers[name]
        loss.backward()
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        average_gradients(parameters)  # several processes: the whole batch's gradient
        torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # gradients take no memory between steps

    # Around the iteration: the run loop and previews (run_loop.py), the step that undoes itself on failure
    # (rollback.py), states and their files (training_state.py).
    def train(self, callback: Callable[[StepReport], None] | None = None,
              should_cancel: Callable[[], bool] | None = None) -> bool:
        """Run until `config.steps`; True when finished, False when `should_cancel` stopped it. A failed step
        leaves the state of the last completed one (run_loop.train)."""
        return run_loop.train(self, callback, should_cancel)

    def guarded_step(self) -> dict[str, float]:
        """One iteration whose failure restores the state before it; its losses as floats (rollback.py)."""
        return rollback.guarded_step(self)

    def preview_prompts(self) -> list[str]:
        return run_loop.preview_prompts(self)

    def preview(self) -> torch.Tensor:
        """The student's one-step images of the preview prompts, side by side: [H, W * prompts, 3] in [0, 1]."""
        return run_loop.preview(self)

    def trainable_state(self) -> dict:
        """What one step changes (shares the tensors): the rollback snapshot, a state's tensors."""
        return training_state.trainable_state(self)

    def state_dict(self) -> dict:
        return training_state.state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        training_state.load_state_dict(self, state)

    def trained_on(self) -> dict:
        return training_state.trained_on(self)

    def save_state(self, path: str | Path) -> Path:
        """A resumable training state, one safetensors file, written atomically."""
        return training_state.save_state(self, path)

    def load_state(self, path: str | Path) -> None:
        """Continue from a state file; a damaged or malformed one is refused naming the file."""
        training_state.load_state(self, path)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn on the CPU (all randomness is, so that a run is the same on every device) on `device`.
    To a GPU through pinned memory, without waiting: a copy from ordinary (pageable) memory first waits
    for everything queued on the GPU, several times an iteration."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _set_checkpointing(unet: nn.Module, on: bool) -> None:
    if on:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()


def training_resolution(config: EchoDistillConfig, student: DiffusionModel) -> int:
    """The image size every stage of a run works at: the config's, or by default the student's native
    size (512 px for SD-Turbo, also with a 768-v SD 2.1 teacher, as in the paper)."""
    return config.resolution or student.image_size()


def _name(network: nn.Module) -> str:
    return getattr(network, "name", type(network).__name__)


def phase(name: str):
    """Names a part of the iteration for torch.profiler (bench/speed.py's breakdown); microseconds when not profiling."""
    return torch.profiler.record_function(f"echodistill/{name}")
