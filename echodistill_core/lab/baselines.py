"""The obvious alternatives to EchoDistill, for bench/quality.py: personalize ONE model with the diffusion loss.

- "textual_inversion": only the token's embedding trains, on the one-step student;
- "student_custom_diffusion": Custom Diffusion (the token and the K/V copies) on the student itself;
- "teacher_only": Custom Diffusion on the teacher; the plain student then uses the learned token.

Each is method.md's teacher step (step 1) alone, applied to the chosen model, under the same config
(steps, batch, learning rates, seed) as an EchoDistill run, and returns the same `Personalization`,
so that one sampler and one set of metrics judge every method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import losses as L
from ..config import EchoDistillConfig
from ..data import ConceptDataset
from ..models import DiffusionModel, TextConditioner
from ..personalization import Personalization

BASELINES = ("textual_inversion", "student_custom_diffusion", "teacher_only")


def personalize_one_model(method: str, teacher: DiffusionModel, student: DiffusionModel, text: TextConditioner,
                          concept: ConceptDataset, config: EchoDistillConfig) -> Personalization:
    """Train `method`'s parameters for `config.steps` steps of the diffusion loss; returns the result."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        personalization = Personalization.create(config, teacher, student, text)
    on_teacher = method == "teacher_only"
    model = teacher if on_teacher else student
    adapters = personalization.teacher_adapters if on_teacher else personalization.student_adapters
    groups = [{"params": [personalization.token.vector], "lr": config.token_lr or config.teacher_lr}]
    if method != "textual_inversion":
        groups.append({"params": list(adapters.parameters()), "lr": config.teacher_lr if on_teacher else config.student_lr})
    optimizer = torch.optim.AdamW(groups, betas=config.adam_betas, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    models = {"teacher": teacher} if on_teacher else {"student": student}
    with personalization.applied(text, **models):
        for step in range(1, config.steps + 1):
            batch = concept.sample(config.batch_size, generator)
            with torch.no_grad():
                z = model.encode(batch.images.to(model.device))
            mask = F.interpolate(batch.masks.to(model.device), size=z.shape[-2:], mode="area")
            eps = torch.randn(z.shape, generator=generator).to(z)
            low, high = config.teacher_timesteps
            t = torch.randint(low, high + 1, (len(z),), generator=generator).to(z.device)
            loss = L.teacher_diffusion_loss(model, z, text(batch.prompts), eps, t, mask).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for group in groups for p in group["params"]], config.grad_clip)
            optimizer.step()
            personalization.history.append({"step": step, "diffusion": loss.item()})
    return personalization
