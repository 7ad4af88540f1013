"""The EchoDistill loop. One iteration is method.md's five steps, in order:

    1. teacher step      the teacher (K/V adapters + token row) learns the concept from real images,
                         and in the echo stage also from the student's most convincing samples
    2. student sample    x_s = G(eps, sg(c)) in one step
    3. teacher target    the just-updated teacher refines the re-noised x_s with CFG: x_T, w = abar_t'
    4. student step      adversarial + w * (latent + feature + colour) alignment to x_T
    5. discriminators    each head learns real concept images from sg(x_s)

All randomness comes from one generator, so a run is reproducible and resumes exactly. The config's
memory settings (memory.py's presets) decide gradient checkpointing, how the VAE decodes with
gradient, whether the text encoder and VAE wait on the CPU between uses, and where the snapshot that
undoes a failed step lives.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .backbones import TEACHER_FEATURES, TeacherUNetFeatures
from .config import RESUMABLE_CHANGES, EchoDistillConfig
from .data import LARGE_EDITS, SMALL_EDITS, ConceptDataset, random_choice
from .discriminators import Discriminator
from .memory import Offload
from .models import DiffusionModel, TextConditioner, check_pair
from .parallel import Shard, average, average_gradients
from .personalization import Personalization
from .sampling import generate_student
from .serialization import ResultFileError, load_tree, save_tree
from .placeholder_token import PlaceholderEmbedding

log = logging.getLogger("echodistill")
STATE_FORMAT = "echodistill-state/1"
FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch.optim.AdamW(fused=True) runs
PREVIEWED = " of the latents' colour preview"  # the cheaper colour loss, as describe() names it
COMPILE_BACKEND = "inductor"  # torch.compile's backend for config.compile_unets
OUT_OF_MEMORY_ADVICE = (
    "out of memory during EchoDistill step {step}; try, in this order: the LoRA parameterisation, "
    "gradient checkpointing, a batch size of 1, a lower resolution, or a smaller memory preset. "
    "The run is back at the state after step {step_done}"
)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the trainer keeps the state of the last good step."""


class TrainingOutOfMemoryError(MemoryError):
    """The device ran out of memory; the message says what to lower."""


@dataclass
class StepReport:
    step: int
    total: int
    losses: dict[str, float]
    preview: torch.Tensor | None  # [H, W * prompts, 3] in [0, 1]: at step 1, every `preview_every` steps, the last


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
            prompts = list(concept.captions)
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
        """Method.md's five steps, the echo included; returns the losses. Call inside `applied()`."""
        config, teacher, student = self.config, self.teacher, self.student
        batch = self.concept.sample(config.batch_size, self.generator)  # the whole batch; this process's slice
        images, prompts = self.shard.take(batch.images).to(teacher.device), self.shard.take(batch.prompts)
        with self.offload.using(self.text.text_encoder, teacher.vae):
            with torch.no_grad(), phase("encode"):
                z_real = self._real_latents(images, self.shard.take(batch.sources) if batch.sources else None)
                uncond = self._uncond_embedding()
            mask = F.interpolate(self.shard.take(batch.masks).to(teacher.device), size=z_real.shape[-2:], mode="area")
            eps = self._noise(z_real)
            echo = None
            if self.in_echo_stage:  # the echo: the student's most real-looking samples join the teacher's batch
                with phase("echo samples"):
                    echo = self._echo_samples(z_real.shape)
            with phase("1 teacher step"):
                losses = self._teacher_step(z_real, prompts, eps, mask, echo)
            with torch.no_grad():
                c = self.text(prompts)  # sg(c), with the token as just updated

        with self.offload.using(student.vae):
            with phase("2 student sample"):
                x_s = self._student_x0(eps if config.shared_noise else self._noise(z_real), c)
                images_s = student.decode(x_s, config.vae_decode) if self._reads_images("sample") else None

            with phase("3 teacher target"):
                t_renoise = self._timesteps(config.renoise_timesteps, len(x_s))
                eps_renoise = eps if config.shared_noise else self._noise(z_real)
                x_T, w = L.teacher_target(teacher, x_s, c, uncond, eps_renoise, t_renoise, config.guidance_scale)

            with phase("4 student step"):
                fake_features = [d.features(x_s, images_s, c, self.generator) for d in self.discriminators]
                losses |= self._student_step(x_s, images_s, x_T, w, c, fake_features)
        with phase("5 discriminators"):
            losses["discriminator"] = self._discriminator_step(z_real, images, c, fake_features)
        return losses

    def _teacher_step(self, z_real, prompts, eps, mask, echo=None) -> dict[str, float]:
        """L_T on the real latents; in the echo stage + beta * L_T on the echoed student samples."""
        t = self._timesteps(self.config.teacher_timesteps, len(z_real))
        x0, report = z_real, {}
        c = self.text(prompts)
        if echo is not None:
            x_echo = echo.latents
            x0, c = torch.cat([z_real, x_echo]), torch.cat([c, echo.kept_embeddings()])
            eps = torch.cat([eps, self._noise(x_echo)])
            t = torch.cat([t, self._timesteps(self.config.teacher_timesteps, len(x_echo))])
            mask = torch.cat([mask, torch.ones_like(x_echo[:, :1])])
            report["echo_kept"] = float(len(x_echo))
        per_sample = L.teacher_diffusion_loss(self.teacher, x0, c, eps, t, mask)
        loss = report["teacher"] = per_sample[: len(z_real)].mean()
        if echo is not None:
            report["echo"] = per_sample[len(z_real):].mean()
            loss = loss + self.config.echo_beta * report["echo"]
        self._optimize("teacher", loss)
        return report

    def _student_x0(self, noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(noise),), self.student.schedule.terminal_timestep, device=noise.device)
        return self.student.predict_x0(noise, t, c)

    def _student_step(self, x_s, images_s, x_T, w, c, fake_features) -> dict[str, float]:
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

    def _discriminator_step(self, z_real, images_real, c, fake_features) -> torch.Tensor:
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

    def _echo_samples(self, shape: torch.Size) -> "EchoSamples":
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

    def _optimize(self, name: str, loss: torch.Tensor) -> None:
        if self.config.rollback == "off":  # no snapshot to go back to: stop before the loss reaches a weight
            self._check_finite(read_losses({name: loss}))  # a wait for the device, for each loss
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

    # The run.
    def train(self, callback: Callable[[StepReport], None] | None = None,
              should_cancel: Callable[[], bool] | None = None) -> bool:
        """Run until `config.steps`; True when finished, False when `should_cancel` stopped it.

        Any error inside a step (a non-finite loss, out of memory, an interruption) restores the state
        of the last completed step before it propagates, so `state_dict()` is always resumable (unless
        the config's rollback is off).
        """
        with self.applied(), self.offload.parked():
            while self.step < self.config.steps:
                if should_cancel is not None and should_cancel():
                    return False
                losses = self._guarded_step()
                self.step += 1
                self.history.append({"step": self.step, **losses})
                if callback is not None:
                    preview = self.preview() if self._preview_due() else None
                    callback(StepReport(self.step, self.config.steps, losses, preview))
        return True

    def _guarded_step(self) -> dict[str, float]:
        snapshot = None
        if self.config.rollback != "off":
            snapshot = _cloned(self._trainable_state(), "cpu" if self.config.rollback == "host" else None)
        try:
            losses = read_losses(self.train_step())  # the step's one wait for the device
            self._check_finite(losses)  # the snapshot undoes whatever a non-finite loss reached
        except BaseException as error:
            if snapshot is not None:
                self._load_trainable_state(snapshot)
            else:
                log.warning("rollback is off (memory preset), so the trainable state may hold part of step %d",
                            self.step + 1)
            if _is_out_of_memory(error):
                raise TrainingOutOfMemoryError(
                    OUT_OF_MEMORY_ADVICE.format(step=self.step + 1, step_done=self.step)) from error
            raise
        return losses

    def _check_finite(self, losses: dict[str, float]) -> None:
        """Refuse the first loss of the step, in the step's order, that is not a finite number; the losses
        are averaged over the processes (read_losses), so every process stops at once."""
        for name, value in losses.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"the {name} loss became {value} at step {self.step + 1}; the run is back at the state "
                    f"after step {self.step}. Lower the learning rates or use fp32 / bf16 instead of fp16")

    def _preview_due(self) -> bool:
        every = self.config.preview_every  # the first step too: something to see early
        return every > 0 and (self.step == 1 or self.step % every == 0 or self.step == self.config.steps)

    def preview_prompts(self) -> list[str]:
        """The config's preview prompts, one a line; none given: "a photo of a <token> <class word>"."""
        lines = [line.strip() for line in self.config.preview_prompt.splitlines() if line.strip()]
        return lines or [f"a photo of a {self.concept.subject}"]

    def preview(self) -> torch.Tensor:
        """The student's one-step images of the preview prompts with the preview seed, side by side in prompt
        order: [H, W * prompts, 3] in [0, 1]."""
        applied = isinstance(self.text.text_encoder.get_input_embeddings(), PlaceholderEmbedding)
        on_device = self.offload.using(self.text.text_encoder, self.student.vae)
        prompts = self.preview_prompts()
        with nullcontext() if applied else self.applied(), on_device:
            images = generate_student(self.student, self.text, prompts, [self.config.preview_seed] * len(prompts))
        return torch.cat(list(images), dim=1)

    # State: everything needed to continue exactly.
    def _trainable_state(self) -> dict:
        """What one step changes: the rollback snapshot, and the tensors of a saved state."""
        return {
            "step": self.step,
            "echo_samples": self.echo_samples,
            "history_length": len(self.history),
            "generator": self.generator.get_state(),
            "token": self.token.vector,
            "teacher_adapters": self.teacher_adapters.state_dict(),
            "student_adapters": self.student_adapters.state_dict(),
            "discriminators": [d.head.state_dict() for d in self.discriminators],
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
        }

    def _load_trainable_state(self, state: dict) -> None:
        """Restore `state`, which must not be shared: optimizers keep its tensors."""
        self.step, self.echo_samples = int(state["step"]), int(state["echo_samples"])
        del self.history[int(state["history_length"]):]
        self.generator.set_state(state["generator"])
        self.token.vector.data.copy_(state["token"])
        self.teacher_adapters.load_state_dict(state["teacher_adapters"])
        self.student_adapters.load_state_dict(state["student_adapters"])
        for discriminator, head in zip(self.discriminators, state["discriminators"], strict=True):
            discriminator.head.load_state_dict(head)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "config": self.config.to_dict(), "trained_on": self.trained_on(),
                "history": [dict(entry) for entry in self.history], **_cloned(self._trainable_state())}

    def trained_on(self) -> dict:
        """What a state is only valid with: the concept images (a digest of them as prepared) and each
        base model (its adapted layers' mean absolute weights, which survive a change of precision)."""
        images = hashlib.sha256()
        for image in self.concept.images:
            images.update(image.float().contiguous().numpy().tobytes())
        return {"concept_images": images.hexdigest(), "teacher": _weight_signature(self.teacher, self.teacher_adapters),
                "student": _weight_signature(self.student, self.student_adapters)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ResultFileError(f"not an EchoDistill training state ({state.get('format')!r})")
        saved, mine = EchoDistillConfig.from_dict(state["config"]).to_dict(), self.config.to_dict()
        changed = [key for key in saved if saved[key] != mine[key] and key not in RESUMABLE_CHANGES]
        if changed:
            raise ValueError(f"the saved state was trained with other settings ({', '.join(changed)}); "
                             f"resume with the same settings (only {', '.join(RESUMABLE_CHANGES)} may change)")
        self._check_trained_on(state.get("trained_on"))
        self.history[:] = [dict(entry) for entry in state["history"]]
        self._load_trainable_state(_cloned(state))

    def _check_trained_on(self, saved: dict | None) -> None:
        if saved is None:
            log.warning("this state does not record what it was trained on; resuming without checking the images and models")
            return
        mine = self.trained_on()
        if saved["concept_images"] != mine["concept_images"]:
            raise ValueError("the saved state was trained on other concept images; resume with the same photos "
                             "(same files, same order, same resolution), or start fresh")
        for role in ("teacher", "student"):
            if not torch.allclose(torch.tensor(saved[role]), torch.tensor(mine[role]), rtol=1e-2, atol=1e-6):
                raise ValueError(f"the saved state was trained with another {role} model; resume with the same "
                                 f"{role} (any precision), or start fresh")

    def save_state(self, path: str | Path) -> Path:
        """A resumable training state, one safetensors file, written atomically."""
        return save_tree(path, self.state_dict())

    def load_state(self, path: str | Path) -> None:
        """Continue from a state file; a damaged or malformed one is refused naming the file."""
        state = load_tree(path)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as error:
            raise ResultFileError(f"{path} is an EchoDistill state with malformed contents ({type(error).__name__}: "
                                  f"{error}); it cannot be resumed: start fresh or use another state") from error


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn on the CPU (all randomness is, so that a run is the same on every device) on `device`.
    To a GPU through pinned memory, without waiting: a copy from ordinary (pageable) memory first waits
    for everything queued on the GPU, several times an iteration."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def read_losses(losses: dict) -> dict[str, float]:
    """The losses as Python floats, read from the device at once: one wait for a GPU, not one per loss."""
    tensors = {name: value.detach().float().reshape(()) for name, value in losses.items() if torch.is_tensor(value)}
    values = dict(zip(tensors, average(torch.stack(list(tensors.values()))).tolist())) if tensors else {}
    return {name: values[name] if name in values else float(value) for name, value in losses.items()}


def _weight_signature(model: DiffusionModel, adapters) -> list[float]:
    """The mean absolute frozen weight of each adapted layer: tells models apart, survives bf16 / fp16."""
    signature = []
    for path in adapters.paths():
        layer = model.unet.get_submodule(path)
        weight = getattr(layer, "base", layer).weight
        signature.append(float(weight.detach().abs().float().mean()))
    return signature


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


def _cloned(tree, device: str | None = None):
    """A copy of every tensor in `tree`, on `device` (None: where each one is)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device, copy=True)
    if isinstance(tree, dict):
        return {key: _cloned(value, device) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_cloned(value, device) for value in tree]
    return tree


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
