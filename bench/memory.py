"""Peak memory of an EchoDistill iteration with SD 2.1 + SD-Turbo at full size, per memory preset.

Each preset runs in its own process: random-weight SD 2.1 (768-v) and SD-Turbo UNets, the SD VAE and
the OpenCLIP-H text encoder with the full CLIP tokenizer, built from the bundled family configs, then
`--iterations` EchoDistill iterations at `--resolution` px on the CPU, one thread. The iterations are
in the echo stage (the teacher's batch then also holds the student's best samples: the largest step).
No warm-up iteration: AdamW's moments are created before measuring, as after a first step, so the
first measured iteration holds everything a later one does.

`--networks` picks the discriminators' backbones and the feature network: `teacher` (the default: the
frozen base teacher's features, no extra weights) or `paper`: random DINO ViT-S/16 at 224 px, DINOv2
ViT-L/14 at 518 px and CLIP ViT-H/14 at 224 px from the bundled configs, the CLIP tower also feeding
IP-Adapter SD 1.5's projection (1024 -> 4 x 768) as f. Their weights count as frozen weights;
`setup.image_networks_gb` gives them apart, in the GPU dtype. The preset's room for image networks
(`MemoryPreset.check_image_networks`) is not checked: the benchmark measures what a set needs.
`--tiny` swaps in the bundled tiny pair and one-layer image networks seeing 2 x 2 patches: a check
that the benchmark runs, in seconds, whose figures say nothing of a GPU.

What is measured: the process's peak resident memory (VmHWM; reset per phase through
/proc/self/clear_refs) above its baseline after imports, before any model is built, so the weights
count, as they occupy the GPU too. Phases: the teacher step (encoding the images, the echo samples,
the teacher's loss and update), the student step (the one-step sample, its decoding, the teacher's
guided target, the discriminators' view of the sample, the student's loss and update) and the
discriminators' step. Large allocations are returned to the system at once (MALLOC_MMAP_THRESHOLD_),
so a phase's peak is not inflated by memory an earlier phase freed.

From CPU figures to a GPU: where the CPU's bf16 arithmetic is slow (bf16 convolutions ran 7-250x
slower than fp32 where README's UNet-only figures were measured), the iterations run in fp32, the
default, and the preset's bf16 is accounted for: frozen weights at their bf16 size, and memory
allocated during a phase (activations, nearly all in the frozen weights' dtype) at half. Weights the
preset keeps on the CPU during a phase (offloaded text encoder or VAE, a rollback snapshot in host
memory) are not counted. `--dtype preset` runs in the preset's own dtype instead (no accounting), on a
CPU with bf16 arithmetic (AVX512-BF16 or AMX), where it is also faster than fp32 and takes half the
memory. At 64 px, where bf16 was merely slow (19 minutes an iteration), the 12 GB preset peaked at
5.49 GB in bf16 against 5.47 GB estimated from fp32, each phase within 0.07 GB. `peak_gb` is the
largest phase estimate; `rss_peak_gb` is the raw figure. GB are 2^30 bytes, as GPU memory is
counted. README, "Memory", relates both to a GPU's.

`--estimate` measures nothing: it runs the same iteration on the meta device (shapes without data) in the
preset's own dtype and counts every live device storage (LiveStorages), per phase; attention is taken
with memory linear in the tokens, as a GPU's flash or memory-efficient kernels and PyTorch's CPU kernel
compute it. Seconds per preset instead of a quarter hour; no allocator fragmentation, no CUDA context.

A preset whose process grows past `--max-rss-gb` (default: the memory available at the start less
2 GB) is stopped and reported as such, so that the benchmark never takes the machine's memory.

Usage: python bench/memory.py [--presets "8 GB,12 GB,24 GB"] [--resolution 512] [--iterations 1]
                              [--networks teacher|paper] [--tiny] [--estimate]
The last line of output is one JSON object: {"presets": {name: {"peak_gb": x, "seconds_per_iteration": y,
..., "setup": {..., "networks": {"choice": ..., "discriminators": [...], "feature": ...}}}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3
PHASES = ("teacher", "student", "discriminators")
NETWORKS = ("teacher", "paper")  # --networks: the discriminators' backbones and f, as choose_networks names them
PAPER_NETWORKS = {"dino": "dino-vits16", "dinov2": "dinov2-vitl14", "clip_vision": "clip-vit-h-14"}  # file -> config


# Memory of this process, from Linux.

def _status_kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def resident_bytes(pid: int | str = "self") -> int:
    return _status_kb("VmRSS", pid) * 1024


def peak_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def reset_peak() -> None:
    """Make the peak resident memory (VmHWM) the current one (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def module_bytes(*modules) -> int:
    """The modules' parameters and buffers, each tensor once (a CLIP tower may serve two networks)."""
    tensors = {id(t): t for module in modules for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def tree_bytes(tree) -> int:
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tree_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tree_bytes(value) for value in tree)
    return 0


# One preset, in a process of its own.

def build_models(resolution: int, dtype):
    """Random-weight SD 2.1 (v-prediction) teacher, SD-Turbo student, shared SD VAE and OpenCLIP-H text
    encoder, from the bundled family configs; the UNets' native size set to `resolution`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from echodistill_core.families import FAMILIES
    from echodistill_core.models import DiffusionModel, TextConditioner
    from echodistill_core.schedule import NoiseSchedule
    from echodistill_core.clip_tokenizer import build_clip_tokenizer

    def read(family: str, part: str, name: str = "config.json") -> dict:
        return json.loads((FAMILIES[family].config / part / name).read_text())

    def frozen(module):
        return module.to(dtype).eval().requires_grad_(False)

    torch.manual_seed(0)
    vae = frozen(AutoencoderKL.from_config(read("sd2-768-v", "vae")))
    text_encoder = frozen(CLIPTextModel(CLIPTextConfig(**read("sd2-768-v", "text_encoder"))))
    models = []
    for family, role in (("sd2-768-v", "teacher"), ("sd-turbo", "student")):
        unet = frozen(UNet2DConditionModel.from_config(read(family, "unet"), sample_size=resolution // 8))
        schedule = NoiseSchedule.from_scheduler_config(read(family, "scheduler", "scheduler_config.json"))
        models.append(DiffusionModel(unet=unet, schedule=schedule, vae=vae, name=f"random {family}", family=family))
    text = TextConditioner(build_clip_tokenizer(pad_token=FAMILIES["sd2-768-v"].pad_token), text_encoder)
    return models[0], models[1], text


def build_tiny_models(resolution: int, dtype):
    """The bundled tiny random pair (a VAE halving the size, a million parameters) in place of SD 2.1 and SD-Turbo."""
    from echodistill_core.lab.tiny import tiny_pair

    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=resolution, latent=True)
    for module in (teacher.unet, student.unet, teacher.vae, text.text_encoder):
        module.to(dtype)
    return teacher, student, text


def build_image_network(name: str, dtype, tiny: bool):
    """A random, frozen image network from a bundled config (image_networks.ARCHITECTURES) at its own input
    size; `tiny` keeps one layer and 2 x 2 patches."""
    from echodistill_core.backbones import ImageBackbone
    from echodistill_core.image_networks import ARCHITECTURES, MODELS, bundled_config

    config = bundled_config(name)
    if tiny:
        config.update({"num_hidden_layers": 1, "image_size": 2 * config.patch_size})
    model_class, options = MODELS[config.model_type]
    network = model_class(config, **options).to(dtype)
    return ImageBackbone.from_transformers(network, label=ARCHITECTURES[name], source="random weights")


def build_networks(choice: str, dtype, tiny: bool):
    """The discriminators' backbones and the feature network f (image_networks.RunNetworks) of `--networks`."""
    import torch

    from echodistill_core.image_networks import IPAdapterProjection, ImageNetworkFiles, choose_networks

    if choice == "teacher":
        return choose_networks()
    torch.manual_seed(1)
    backbones = {field: build_image_network(name, dtype, tiny) for field, name in PAPER_NETWORKS.items()}
    # IP-Adapter SD 1.5's projection; in fp32, as load_ip_adapter_projection gives it (it reads fp32 embeddings).
    projection = IPAdapterProjection(1024, 4, 768, name="random IP-Adapter").requires_grad_(False).eval()
    return choose_networks("paper", "ip-adapter", ImageNetworkFiles(ip_adapter=projection, **backbones))


def describe_networks(choice: str, networks) -> dict:
    return {"choice": choice, **networks.describe()}


def echo_stage_trainer(teacher, student, text, preset, networks, resolution: int):
    """A paper-preset trainer under `preset`, at the first step of its echo stage with every optimizer's moments
    made: the state whose iteration holds the run's peak."""
    from echodistill_core.lab.demo import demo_concept_images
    from echodistill_core.recipe import Pair, plan_run

    # The run recipe's paper run under `preset`; image networks beyond the preset's room are measured, not refused.
    plan = plan_run(demo_concept_images(resolution), class_word="toy", preset="paper", memory=preset.name,
                    networks=networks, check_room=False, steps=10**6, preview_every=0)
    config = plan.config
    trainer = plan.trainer(Pair(teacher, student, text))
    prime_optimizers(trainer)
    trainer.step = config.echo_start_step
    return trainer


def prime_optimizers(trainer) -> None:
    """Create every optimizer's moments, as a first step would, so one iteration shows the steady state."""
    import torch

    for optimizer in trainer.optimizers.values():
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class PhaseMeter:
    """Peak memory, time and the offloaded modules left on the host, per phase of the trainer's steps."""

    def __init__(self, trainer):
        self.trainer, self.records, self.used = trainer, [], set()
        for phase, method in zip(PHASES, ("teacher_step", "student_step", "discriminator_step")):
            setattr(trainer, method, self._closing(phase, getattr(trainer, method)))
        using = trainer.offload.using

        def recorded(*modules):
            self.used.update(id(module) for module in modules)
            return using(*modules)

        trainer.offload.using = recorded

    def start(self) -> None:
        reset_peak()
        self.used.clear()
        self.started = time.perf_counter()

    def _closing(self, phase, method):
        def measured(*args, **kwargs):
            result = method(*args, **kwargs)
            offload = self.trainer.offload
            on_host = [m for m in offload.modules if id(m) not in self.used] if offload.enabled else []
            self.records.append({"phase": phase, "peak": peak_bytes(), "seconds": time.perf_counter() - self.started,
                                 "offloaded": sum(module_bytes(m) for m in on_host)})
            self.start()
            return result
        return measured


def run_preset(name: str, resolution: int, iterations: int, run_dtype: str, networks_choice: str,
               tiny: bool) -> dict:
    import torch

    from echodistill_core.memory import MEMORY_PRESETS

    torch.set_num_threads(1)
    baseline = resident_bytes()
    preset = MEMORY_PRESETS[name]
    target = preset.frozen_dtype or torch.float32
    dtype = target if run_dtype == "preset" else getattr(torch, run_dtype)
    scale = torch.finfo(target).bits / torch.finfo(dtype).bits  # bytes on the GPU per byte measured here

    started = time.perf_counter()
    teacher, student, text = (build_tiny_models if tiny else build_models)(resolution, dtype)
    networks = build_networks(networks_choice, dtype, tiny)
    build_seconds = time.perf_counter() - started
    image_networks = module_bytes(*networks.image_networks())
    frozen = module_bytes(teacher.unet, student.unet, teacher.vae, text.text_encoder) + image_networks

    trainer = echo_stage_trainer(teacher, student, text, preset, networks, resolution)
    config = trainer.config
    snapshot = tree_bytes(trainer.trainable_state()) if config.rollback != "off" else 0
    meter = PhaseMeter(trainer)

    seconds = []
    with trainer.applied(), trainer.offload.parked():
        resident = resident_bytes() - baseline
        for _ in range(iterations):
            meter.start()
            began = time.perf_counter()
            trainer.history.append({"step": trainer.step + 1, **trainer.guarded_step()})
            trainer.step += 1
            seconds.append(time.perf_counter() - began)

    phases = {}
    for phase in PHASES:
        record = max((r for r in meter.records if r["phase"] == phase), key=lambda r: r["peak"])
        rss = record["peak"] - baseline
        transient = rss - resident - snapshot
        parts = {
            "frozen weights": scale * (frozen - record["offloaded"]),
            "trainable and other": resident - frozen,
            "rollback snapshot": snapshot if config.rollback == "device" else 0,
            "transient": scale * transient,
        }
        phases[phase] = {"peak_gb": sum(parts.values()) / GB, "rss_gb": rss / GB, "seconds": record["seconds"],
                         "parts_gb": {key: value / GB for key, value in parts.items()}}
    return {
        "peak_gb": max(p["peak_gb"] for p in phases.values()),
        "seconds_per_iteration": sum(seconds) / len(seconds),
        "rss_peak_gb": max(p["rss_gb"] for p in phases.values()),
        "phases": phases,
        "setup": {"resolution": resolution, "batch_size": config.batch_size, "iterations": iterations,
                  "teacher_batch": config.batch_size + max(1, round(config.echo_keep * config.batch_size)),
                  "run_dtype": str(dtype).removeprefix("torch."), "gpu_dtype": str(target).removeprefix("torch."),
                  "frozen_gb": frozen / GB, "resident_gb": resident / GB, "snapshot_gb": snapshot / GB,
                  "image_networks_gb": scale * image_networks / GB,
                  "networks": describe_networks(networks_choice, networks), "tiny": tiny,
                  "build_seconds": build_seconds, "threads": torch.get_num_threads(),
                  "losses": trainer.history[-1]},
    }


# The estimate: the same iteration on the meta device, every live device storage counted.

class LiveStorages:
    """A dispatch mode counting the bytes of every meta-device storage alive, and their peak.

    Storages are seen as the operations that make them run (model construction included, when it runs
    inside the mode) and forgotten when their last tensor dies, so the count is what a GPU's allocator
    would hold, without its fragmentation: weights, optimizer moments, the snapshot, activations kept
    for backward and transients. Values the host reads and copies to the host meet stand-ins
    (bench/flops.py's HostWaits), which the meta device cannot give."""

    def __init__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode

        flops = _bench_module("flops")
        counter = self
        self.live, self.now, self.peak = {}, 0, 0
        self._finalize = weakref.finalize

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                out = func(*args, **(kwargs or {}))
                for tensor in torch.utils._pytree.tree_leaves(out):
                    if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
                        counter.track(tensor)
                return out

        self.modes = (Mode(), flops.HostWaits())

    def track(self, tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.now += self.live[key]
        self.peak = max(self.peak, self.now)
        self._finalize(storage, self._free, key)

    def _free(self, key) -> None:
        self.now -= self.live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.now

    def __enter__(self):
        import torch.nn.functional as F

        self._attention, F.scaled_dot_product_attention = F.scaled_dot_product_attention, flash_attention
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F

        for mode in reversed(self.modes):
            mode.__exit__(*exc)
        F.scaled_dot_product_attention = self._attention


def flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **options):
    """Attention as a GPU (flash or memory-efficient) and PyTorch's CPU flash kernel compute it, memory
    linear in the tokens: the meta device would otherwise take the math path and its full score matrix."""
    import torch

    if attn_mask is not None or options:  # CLIP's causal mask: small; the math path is fine
        return _math_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, **options)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                      scale=scale)[0]


def _math_attention(*args, **kwargs):
    import torch

    return torch._C._nn.scaled_dot_product_attention(*args, **kwargs)


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def estimate_preset(name: str, resolution: int, networks_choice: str, tiny: bool = False) -> dict:
    """One echo-stage iteration of `name` on the meta device in the preset's own GPU dtype, its live
    device memory counted per phase (LiveStorages): no data, no arithmetic, seconds per preset."""
    import gc

    import torch

    from echodistill_core.memory import MEMORY_PRESETS

    started = time.perf_counter()
    preset = MEMORY_PRESETS[name]
    dtype = preset.frozen_dtype or torch.float32
    gc.collect()
    with LiveStorages() as counter:
        with torch.device("meta"):
            teacher, student, text = (build_tiny_models if tiny else build_models)(resolution, dtype)
            networks = build_networks(networks_choice, dtype, tiny)
        gc.collect()
        frozen = counter.now
        trainer = echo_stage_trainer(teacher, student, text, preset, networks, resolution)
        config = trainer.config
        records = {}
        phase_started = [0]

        def closing(phase, method):
            def measured(*args, **kwargs):
                result = method(*args, **kwargs)
                records[phase] = max(records.get(phase, 0), counter.peak)
                counter.reset_peak()
                return result
            return measured

        for phase, method in zip(PHASES, ("teacher_step", "student_step", "discriminator_step")):
            setattr(trainer, method, closing(phase, getattr(trainer, method)))
        with trainer.applied(), trainer.offload.parked():
            gc.collect()
            resident = counter.now
            counter.reset_peak()
            trainer.guarded_step()
        del phase_started
    phases = {phase: {"peak_gb": records[phase] / GB} for phase in PHASES}
    return {
        "peak_gb": max(record["peak_gb"] for record in phases.values()),
        "phases": phases,
        "setup": {"resolution": resolution, "batch_size": config.batch_size, "dtype": str(dtype).removeprefix("torch."),
                  "frozen_gb": frozen / GB, "resident_gb": resident / GB,
                  "networks": describe_networks(networks_choice, networks), "tiny": tiny,
                  "seconds": time.perf_counter() - started},
    }


# The driver: one process per preset, watched so that none takes the machine's memory.

def run_in_subprocess(name: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--resolution", str(args.resolution),
               "--iterations", str(args.iterations), "--dtype", args.dtype, "--networks", args.networks,
               *(["--tiny"] if args.tiny else [])]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=str(ROOT))
    limit = args.max_rss_gb * GB
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
        largest = 0
        while process.poll() is None:
            try:
                largest = max(largest, resident_bytes(process.pid))
            except (FileNotFoundError, RuntimeError):
                break
            if largest > limit:
                process.kill()
                process.wait()
                return {"error": f"stopped: resident memory passed --max-rss-gb {args.max_rss_gb}"}
            time.sleep(0.2)
        output = process.stdout.read().strip().splitlines()
    if process.returncode != 0 or not output:
        return {"error": f"the worker failed (exit code {process.returncode}); see its output above"}
    return json.loads(output[-1])


def print_table(results: dict) -> None:
    print(f"{'preset':<8} {'phase':<15} {'GPU est. GB':>11} {'CPU RSS GB':>10} {'seconds':>8}   largest parts (GB)")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:<8} {result['error']}")
            continue
        for phase, figures in result["phases"].items():
            parts = sorted(figures["parts_gb"].items(), key=lambda item: -item[1])
            described = ", ".join(f"{key} {value:.2f}" for key, value in parts if value > 0.005)
            print(f"{name:<8} {phase:<15} {figures['peak_gb']:>11.2f} {figures['rss_gb']:>10.2f} "
                  f"{figures['seconds']:>8.1f}   {described}")
        setup = result["setup"]
        networks = f"{setup['networks']['choice']} networks ({setup['image_networks_gb']:.2f} GB of image networks)"
        print(f"{name:<8} {'iteration':<15} {result['peak_gb']:>11.2f} {result['rss_peak_gb']:>10.2f} "
              f"{result['seconds_per_iteration']:>8.1f}   batch {setup['batch_size']} "
              f"(teacher {setup['teacher_batch']} in the echo stage), {setup['run_dtype']} measured for {setup['gpu_dtype']}, models built in "
              f"{setup['build_seconds']:.0f} s, {networks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="8 GB,12 GB,24 GB", help="comma-separated memory preset names")
    parser.add_argument("--resolution", type=int, default=512, help="image size in px (a multiple of 64)")
    parser.add_argument("--iterations", type=int, default=1, help="measured iterations per preset")
    parser.add_argument("--dtype", default="float32", choices=("float32", "preset"),
                        help="dtype the iterations run in: float32 (accounted as the preset's), or the preset's own")
    available = _status_meminfo_gb("MemAvailable")
    parser.add_argument("--max-rss-gb", type=float, default=max(1.0, available - 2.0),
                        help="stop a preset whose process grows past this (default: available memory - 2 GB)")
    parser.add_argument("--networks", default="teacher", choices=NETWORKS,
                        help="discriminators' backbones and feature network: the base teacher's features, or the "
                             "paper's image networks (DINO, DINOv2, CLIP-H with IP-Adapter's projection), random")
    parser.add_argument("--tiny", action="store_true",
                        help="the bundled tiny pair and one-layer image networks: checks that the benchmark runs")
    parser.add_argument("--estimate", action="store_true",
                        help="no measurement: count the live device memory of the iteration on the meta device "
                             "(seconds per preset, the preset's own dtype, no allocator fragmentation)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resolution % 64:
        parser.error("--resolution must be a multiple of 64 (the VAE's 8x and the UNet's 8x downsampling)")
    if args.worker:
        print(json.dumps(run_preset(args.worker, args.resolution, args.iterations, args.dtype, args.networks,
                                    args.tiny)))
        return

    from echodistill_core.memory import MEMORY_PRESETS

    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in names if name not in MEMORY_PRESETS]
    if unknown:
        parser.error(f"unknown presets {unknown}; choose from {list(MEMORY_PRESETS)}")
    if args.estimate:
        estimates = {name: estimate_preset(name, args.resolution, args.networks, args.tiny) for name in names}
        print(f"{'preset':<10} " + " ".join(f"{phase:>15}" for phase in PHASES) + f" {'peak GB':>9}   (meta-device estimate)")
        for name, result in estimates.items():
            print(f"{name:<10} " + " ".join(f"{result['phases'][phase]['peak_gb']:>15.2f}" for phase in PHASES)
                  + f" {result['peak_gb']:>9.2f}   {result['setup']['seconds']:.1f} s")
        print(json.dumps({"presets": estimates, "estimate": True}))
        return
    results = {}
    for name in names:
        print(f"measuring {name} at {args.resolution} px with the {args.networks} networks ...", flush=True)
        results[name] = result = run_in_subprocess(name, args)
        if "error" not in result:
            print(f"  {result['peak_gb']:.2f} GB on a GPU (estimate), {result['rss_peak_gb']:.2f} GB measured, "
                  f"{result['seconds_per_iteration']:.0f} s per iteration", flush=True)
    print_table(results)
    print(json.dumps({"presets": results}))


def _status_meminfo_gb(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
