"""Every setting of an EchoDistill run in one typed config. Defaults are the paper's (method.md);
presets are data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

VAE_DECODES = ("plain", "checkpointed", "tiled")
ROLLBACKS = ("device", "host", "off")
# Settings a saved state may be resumed with changed: the run's length, feedback, and memory (after an
# out-of-memory error the advice is a smaller memory preset, which may lower the batch size).
RESUMABLE_CHANGES = ("steps", "preview_every", "batch_size", "gradient_checkpointing", "vae_decode", "offload",
                     "rollback")

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

    # What trains in each UNet.
    parameterisation: str = "custom_diffusion"  # or "lora"
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
    guidance_scale: float = 7.5

    # The student objective.
    adversarial_weight: float = 1.0
    latent_weight: float = 1.0
    feature_weight: float = 1.0
    color_weight: float = 0.1
    color_levels: int = 5
    color_projections: int = 128
    color_patch: int = 11
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
    preview_prompt: str = ""  # empty: "a photo of a <token> <class word>"
    preview_seed: int = 0

    # Memory: how an iteration runs, not what it computes (memory.py's presets set these and batch_size).
    gradient_checkpointing: bool = False  # both UNets recompute activations in the backward pass
    vae_decode: str = "plain"  # decoding with gradient: plain, checkpointed or tiled (DiffusionModel.decode)
    offload: bool = False  # the frozen text encoder and VAE wait on the CPU between uses
    rollback: str = "device"  # where the snapshot that undoes a failed step lives: device, host or off

    def __post_init__(self) -> None:
        if self.parameterisation not in ("custom_diffusion", "lora"):
            raise ValueError(f"parameterisation must be custom_diffusion or lora, not {self.parameterisation!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.vae_decode not in VAE_DECODES:
            raise ValueError(f"vae_decode must be one of {VAE_DECODES}, not {self.vae_decode!r}")
        if self.rollback not in ROLLBACKS:
            raise ValueError(f"rollback must be one of {ROLLBACKS}, not {self.rollback!r}")
        if not 0.0 <= self.echo_start <= 1.0 or not 0.0 < self.echo_keep <= 1.0:
            raise ValueError("echo_start must be in [0, 1] and echo_keep in (0, 1]")
        for name in ("teacher_timesteps", "renoise_timesteps", "discriminator_timesteps"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be an inclusive range low <= high, got {(low, high)}")

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
PRESETS: dict[str, EchoDistillConfig] = {
    "paper": EchoDistillConfig(),
    "tiny": EchoDistillConfig(
        steps=300, batch_size=4, teacher_lr=2e-4, token_lr=5e-3, student_lr=3e-4, discriminator_lr=1e-3,
        guidance_scale=3.0, preview_every=25,
    ),
}
