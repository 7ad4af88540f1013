"""Every setting of an EchoDistill run in one typed config. Defaults are the paper's (method.md);
presets are data."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

PARAMETERISATIONS = ("custom_diffusion", "lora")  # what trains in each UNet: the paper's K/V copies, or LoRA
# What a concept photo becomes before each use (data.py): the paper's Custom Diffusion recipe (flips, shrunken
# pastes and enlarged crops), mirror images only, or the photo as it is.
AUGMENTATIONS = ("custom_diffusion", "flip", "none")
PAPER_GUIDANCE = 7.5  # the paper's CFG scale: the teacher's target, and its samples
TINY_TEACHER_GUIDANCE = 3.0  # the CFG scale the bundled tiny teacher follows prompts best with (tools/evaluate_tiny.py)
TEACHER_SAMPLE_STEPS = 25  # DDIM steps of a teacher's sample (the paper's evaluation of its teacher)
VAE_DECODES = ("plain", "checkpointed", "tiled")
ROLLBACKS = ("device", "host", "off")
# Settings a saved state may be resumed with changed: the run's length, feedback, and memory (after an
# out-of-memory error the advice is a smaller memory preset, which may lower the batch size).
RESUMABLE_CHANGES = ("steps", "preview_every", "preview_prompt", "batch_size", "gradient_checkpointing", "vae_decode",
                     "offload", "rollback", "compile_unets")

NEW_CONTEXTS = (
    "on the beach", "in the snow", "in red", "on a wooden table", "in the jungle", "at night",
    "on a green background", "in a city street", "under water", "on top of a mountain",
)


@dataclass(frozen=True)
class EchoDistillConfig:
    # The concept.
    token: str = "<sks>"
    class_word: str = "object"
    initializer_word: str = ""  # empty: the class word

    # The run.
    steps: int = 1000
    batch_size: int = 2
    resolution: int = 0  # 0: the student's native image size (512 for SD-Turbo, the paper's)
    seed: int = 42
    augmentation: str = AUGMENTATIONS[0]  # one of AUGMENTATIONS

    # What trains in each UNet.
    parameterisation: str = PARAMETERISATIONS[0]  # one of PARAMETERISATIONS
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_all_attention: bool = False

    # Optimisers: AdamW, constant learning rates.
    teacher_lr: float = 1e-5
    token_lr: float = 0.0  # 0: the teacher's
    student_lr: float = 2e-5
    discriminator_lr: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0

    # Noise and timesteps (inclusive ranges).
    shared_noise: bool = True  # one eps reused in steps 1, 2 and 3
    teacher_timesteps: tuple[int, int] = (0, 999)
    renoise_timesteps: tuple[int, int] = (0, 999)
    discriminator_timesteps: tuple[int, int] = (0, 200)
    guidance_scale: float = PAPER_GUIDANCE

    # The student objective.
    adversarial_weight: float = 1.0
    latent_weight: float = 1.0
    feature_weight: float = 1.0
    color_weight: float = 0.1
    color_levels: int = 5
    color_projections: int = 128
    color_patch: int = 11
    color_space: str = "image"  # "image": the decoded images (the paper's); "latent_preview": no decoding (losses.py)
    r1_gamma: float = 0.0  # method.md suggests 1e-5 when the discriminators are unstable

    # The echo: the teacher also learns from the student's best samples late in the run.
    echo: bool = True
    echo_start: float = 0.75  # fraction of the steps
    echo_beta: float = 0.5
    echo_keep: float = 0.5  # the fraction of each echo batch the discriminators rank most real
    echo_context_probability: float = 0.5  # an echo prompt gets one of the new contexts
    echo_contexts: tuple[str, ...] = NEW_CONTEXTS

    # Feedback.
    preview_every: int = 50
    preview_prompt: str = ""  # one prompt a line; empty: "a photo of a <token> <class word>"
    preview_seed: int = 0

    # Memory: how an iteration runs, not what it computes (memory.py's presets set these and batch_size).
    gradient_checkpointing: bool = False  # both UNets recompute activations in the backward pass
    vae_decode: str = "plain"  # decoding with gradient: plain, checkpointed or tiled (DiffusionModel.decode)
    offload: bool = False  # the frozen text encoder and VAE wait on the CPU between uses
    rollback: str = "device"  # where the snapshot that undoes a failed step lives: device, host or off
    compile_unets: bool = False  # opt-in: torch.compile both UNets while training (the first steps compile)

    def __post_init__(self) -> None:
        """Refuse a setting outside its meaning, naming it, before anything is loaded or trained."""
        problems = [f"{name} must be {meaning}, not {getattr(self, name)!r}"
                    for name, meaning, valid in self._ranges() if not valid(getattr(self, name))]
        for name in ("teacher_timesteps", "renoise_timesteps", "discriminator_timesteps"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                problems.append(f"{name} must be an inclusive range 0 <= low <= high, not {(low, high)}")
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def _ranges():
        """(field, what it must be, test) for every number and choice of the config."""
        positive, non_negative = (lambda v: math.isfinite(v) and v > 0), (lambda v: math.isfinite(v) and v >= 0)
        fraction = lambda v: 0 <= v <= 1
        seed = lambda v: isinstance(v, int) and 0 <= v < 2**63
        return [
            ("seed", "a whole number from 0 to 2**63 - 1", seed),
            ("preview_seed", "a whole number from 0 to 2**63 - 1", seed),
            ("steps", "at least 1", lambda v: v >= 1),
            ("batch_size", "at least 1", lambda v: v >= 1),
            ("resolution", "0 (the student's size) or a multiple of 8 from 8 px", lambda v: v == 0 or (v >= 8 and v % 8 == 0)),
            ("parameterisation", " or ".join(PARAMETERISATIONS), lambda v: v in PARAMETERISATIONS),
            ("augmentation", " or ".join(AUGMENTATIONS), lambda v: v in AUGMENTATIONS),
            ("lora_rank", "at least 1", lambda v: v >= 1),
            ("lora_alpha", "positive", positive),
            ("teacher_lr", "positive", positive),
            ("token_lr", "positive, or 0 for the teacher's", non_negative),
            ("student_lr", "positive", positive),
            ("discriminator_lr", "positive", positive),
            ("adam_betas", "two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
            ("weight_decay", "0 or more", non_negative),
            ("grad_clip", "positive", positive),
            ("guidance_scale", "0 or more", non_negative),
            ("adversarial_weight", "0 or more", non_negative),
            ("latent_weight", "0 or more", non_negative),
            ("feature_weight", "0 or more", non_negative),
            ("color_weight", "0 or more", non_negative),
            ("color_levels", "at least 1", lambda v: v >= 1),
            ("color_projections", "at least 1", lambda v: v >= 1),
            ("color_patch", "an odd number from 1", lambda v: v >= 1 and v % 2 == 1),
            ("r1_gamma", "0 or more", non_negative),
            ("echo_start", "a fraction of the steps in [0, 1]", fraction),
            ("echo_beta", "0 or more", non_negative),
            ("echo_keep", "a fraction in (0, 1]", lambda v: 0 < v <= 1),
            ("echo_context_probability", "a probability in [0, 1]", fraction),
            ("echo_contexts", "at least one context", lambda v: len(v) >= 1),
            ("preview_every", "0 (never) or more", non_negative),
            ("vae_decode", f"one of {VAE_DECODES}", lambda v: v in VAE_DECODES),
            ("rollback", f"one of {ROLLBACKS}", lambda v: v in ROLLBACKS),
        ]

    @property
    def echo_start_step(self) -> int:
        return round(self.echo_start * self.steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "EchoDistillConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; they may come from a newer EchoDistill")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    def replace(self, **changes) -> "EchoDistillConfig":
        return replace(self, **changes)


# Presets. "paper": method.md's settings for SD 2.1 + SD-Turbo. "tiny": the bundled 2.7M-parameter
# models at 32 px, where the paper's learning rates would move nothing in a few hundred steps. The
# teacher's rate is 2e-4: at 1e-3 the teacher over-fits the concept (bench/quality.py: its prompt
# fidelity 0.17, plain prompts right 64 % instead of 98 %) and the student learns less of it. The
# student's is 3e-4: at 1e-3 its K/V copies drift for every prompt (five runs: plain prompts right
# 84 % instead of 98 %, prompt fidelity 0.51); at 3e-4 (six runs) 95 % and 0.80, and concept fidelity
# rises too (0.82 against 0.80).
# Its photos are only mirrored: at 32 px the recipe's shrunken pastes (down to 11 px) lose a look's inner
# detail, and its template words ("far away", "zoomed in") are not the world's. With captions in the world's
# own words, mirror images taught a teacher that knows looks "my circle" with a blue band (red above and
# below) in 7 of 16 samples at 300 steps: 0 with the recipe and templates, 1 with the recipe and those
# captions, 1 with mirror images and templates.
# Its adversarial terms weigh 0.1, not the paper's 1: the tiny heads (at their rate of 1e-3) tell the
# student's samples from the photos at once, and at weight 1 the student's adversarial loss (5 to 18 for
# each head) outweighs its alignment to the teacher's target many times. bench/quality.py, my circle: on
# the pixel pair 0.1 lifts the one-step student (three seeds: calibrated fidelity 0.39 against 0.28,
# recognition 0.35 against 0.22); on the latent pair, whose image discriminator pulls through the
# decoder, weight 1 broke the student into blots on one seed of six (the demo's: 0.07 against 0.43) and
# the two weights are alike on the other five.
PRESETS: dict[str, EchoDistillConfig] = {
    "paper": EchoDistillConfig(),
    "tiny": EchoDistillConfig(
        steps=300, batch_size=4, teacher_lr=2e-4, token_lr=5e-3, student_lr=3e-4, discriminator_lr=1e-3,
        adversarial_weight=0.1, guidance_scale=TINY_TEACHER_GUIDANCE, preview_every=25, augmentation="flip",
    ),
}
