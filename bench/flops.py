"""FLOPs of one EchoDistill iteration at the real sizes, counted, not timed: deterministic, seconds.

The trainer's own `train_step` (through `guarded_step`, as a run calls it) runs on the meta device
(shapes without data) with random-weight SD 2.1 (768-v) and SD-Turbo UNets, the SD VAE and the
OpenCLIP-H text encoder built from the bundled family configs (bench/memory.py's `build_models`; with
`--networks paper`, DINO ViT-S/16, DINOv2 ViT-L/14, CLIP ViT-H/14 and IP-Adapter's projection too),
under torch's FlopCounterMode. Nothing is downloaded, nothing is approximated: every pass the code
makes is counted, forward and backward (recomputation included, when a memory preset checkpoints).
FlopCounterMode counts matrix products and convolutions (including attention); elementwise work,
sorts and reductions count as zero, so the colour loss's sort does not show here (bench/speed.py
measures time).

Unit: one teacher-only Custom Diffusion step with the same models and batch: encoding the batch,
the teacher's loss forward and backward and its update (the iteration's "encode" and "1 teacher step"
phases before the echo stage). Reported per phase (the trainer's named phases) and per network, and
against the method's floor: with the default networks, each pass the method makes (the student's
forward and backward, the decoder's three passes, the guided target, the base teacher's features),
counted alone with the same models and batch, added to the teacher's own step.

Where the host must wait for the device is counted too (on a GPU): a value read by Python (`float()`,
`bool()`, `.item()`, `.tolist()`) and copies between host and device. On the meta device those reads
are answered with stand-ins (finite losses, the first indices), which changes no shape.

Usage: python bench/flops.py [--resolution 512] [--batch 2] [--networks teacher|paper]
                             [--vae-decode plain|checkpointed|tiled] [--checkpointing]
The last line of output is one JSON object: {"sd21_turbo_512": {"iteration_vs_teacher_step": ..., ...}}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echodistill_core import trainer as trainer_module  # noqa: E402
from echodistill_core.config import PRESETS, VAE_DECODES  # noqa: E402
from echodistill_core.lab.demo import demo_concept_images  # noqa: E402
from echodistill_core.recipe import Pair, plan_run  # noqa: E402
from echodistill_core.trainer import EchoDistillTrainer  # noqa: E402

aten = torch.ops.aten
# FlopCounterMode's outermost module names -> what they are. Only networks whose input has no other
# consumer are attributed: the module tracker closes a module's backward when its input's gradient is
# complete, so a network reading a shared tensor (a UNet reading x_s) would also be charged for the
# backward of whatever else reads it. The rest is reported as one remainder.
NETWORKS = {"Encoder": "vae encoder", "Decoder": "vae decoder", "CLIPTextModel": "text encoder"}
REST = "UNets, discriminator features, image networks, losses, updates"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HostWaits(TorchDispatchMode):
    """Counts what makes a host wait for a device, and answers it with stand-ins on the meta device:
    a value read by Python (aten._local_scalar_dense: float(), bool(), item()), a copy from the device to
    the host (tolist(), .cpu()) and a copy from the host to the device (a tensor made on the CPU)."""

    def __init__(self):
        super().__init__()
        self.reads = self.to_host = self.to_device = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type != "cpu":
            self.reads += 1
            if args[0].device.type == "meta":
                return True if args[0].dtype == torch.bool else 0
        if func is aten.equal.default and args[0].device.type == "meta":
            self.reads += 1
            return False  # meta tensors hold no values: two of them are never known equal
        if func is aten._to_copy.default:
            source, target = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            if source.type == "meta" and target.type == "cpu":
                self.to_host += 1
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            if source.type == "cpu" and target.type != "cpu":
                self.to_device += 1
        if func is aten.copy_.default and args[0].device != args[1].device:
            if args[1].device.type == "cpu":
                self.to_device += 1
            else:
                self.to_host += 1
        return func(*args, **kwargs)


class PhaseFlops:
    """FLOPs of the trainer's named phases (trainer.phase), read off one FlopCounterMode."""

    def __init__(self, counter: FlopCounterMode):
        self.counter, self.flops, self.nested, self._open = counter, {}, set(), []

    @contextmanager
    def phase(self, name: str):
        if self._open:
            self.nested.add(name)
        self._open.append(name)
        start = self.counter.get_total_flops()
        try:
            yield
        finally:
            self._open.pop()
            spent = self.counter.get_total_flops() - start
            self.flops[name] = self.flops.get(name, 0) + spent


def count_iteration(trainer: EchoDistillTrainer) -> dict:
    """One `guarded_step` under the counters: total FLOPs, per phase, per network, and host waits."""
    counter = FlopCounterMode(display=False)
    phases = PhaseFlops(counter)
    waits = HostWaits()
    original = trainer_module.phase
    trainer_module.phase = phases.phase
    try:
        with counter, waits:
            trainer.guarded_step()
    finally:
        trainer_module.phase = original
    total = counter.get_total_flops()
    counts = counter.get_flop_counts()
    networks: dict[str, int] = {}
    for module, by_op in counts.items():
        if module in NETWORKS:
            networks[NETWORKS[module]] = networks.get(NETWORKS[module], 0) + sum(by_op.values())
    networks[REST] = total - sum(networks.values())
    phases.flops["outside the phases"] = total - sum(v for k, v in phases.flops.items() if k not in phases.nested)
    return {"total": total, "phases": phases.flops, "networks": networks,
            "host_waits": {"values_read": waits.reads, "copies_to_host": waits.to_host,
                           "copies_to_device": waits.to_device}}


def build_trainer(resolution: int, batch: int, networks_choice: str, vae_decode: str, checkpointing: bool,
                  **changes) -> EchoDistillTrainer:
    memory_bench = _bench_module("memory")
    with torch.device("meta"):
        teacher, student, text = memory_bench.build_models(resolution, torch.float32)
        networks = memory_bench.build_networks(networks_choice, torch.float32, tiny=False)
    # The run recipe's paper run, its memory settings the ones counted here (the unlimited preset changes none).
    plan = plan_run(demo_concept_images(resolution), class_word="toy", preset="paper", memory="unlimited",
                    networks=networks, steps=1000, preview_every=0, batch_size=batch, vae_decode=vae_decode,
                    gradient_checkpointing=checkpointing, **changes)
    with HostWaits():  # checks of the models' values meet stand-ins
        return plan.trainer(Pair(teacher, student, text))


def measure(trainer: EchoDistillTrainer) -> dict:
    """Before the echo stage and in it, each after one uncounted iteration (the cached empty prompt and
    AdamW's moments exist from then on, as in a run)."""
    results = {}
    with trainer.applied():
        for stage, step in (("before_echo", 0), ("echo", trainer.config.echo_start_step)):
            trainer.step = step
            with HostWaits():  # the stand-ins, uncounted
                trainer.guarded_step()
            results[stage] = count_iteration(trainer)
        results["method_passes"] = method_passes(trainer)
    return results


def method_passes(trainer: EchoDistillTrainer) -> dict[str, int] | None:
    """The network passes an iteration before the echo must make, each counted alone with the same models
    and batch: the method's floor to hold the iteration against. For the default networks (the base
    teacher's features for the discriminator and the feature loss) and the colour loss on decoded images;
    None for others. Call inside `trainer.applied()` (the student's K/V copies then take its gradient)."""
    from echodistill_core.backbones import TeacherUNetFeatures

    features = trainer.feature_network
    if (trainer.config.color_space != "image" or not isinstance(features, TeacherUNetFeatures)
            or len(trainer.discriminators) != 1 or not isinstance(trainer.discriminators[0].backbone, TeacherUNetFeatures)):
        return None
    teacher, student, batch = trainer.teacher, trainer.student, trainer.config.batch_size
    size, device = trainer.concept.resolution, teacher.device
    images = torch.zeros((batch, 3, size, size), device=device)
    with torch.no_grad(), HostWaits():
        latents = teacher.encode(images)
        c = trainer.text([""] * batch)
    t = torch.zeros(batch, dtype=torch.long, device=device)

    def counted(function, backward: bool = False, input_gradient: bool = True) -> int:
        counter = FlopCounterMode(display=False)
        x = latents.clone().requires_grad_(backward and input_gradient)
        with counter, HostWaits(), torch.set_grad_enabled(backward):
            output = function(x)
            if backward:
                output.float().sum().backward()
        for optimizer in trainer.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    generator = torch.Generator().manual_seed(0)
    feature = counted(lambda x: features(x, c, generator))
    feature_backward = counted(lambda x: features(x, c, generator), backward=True)
    return {
        "student forward, backward to its K/V": counted(lambda x: student.unet(x, t, c).sample, True, False),
        "decoder forward, backward (the sample)": counted(lambda x: student.decode(x), backward=True),
        "decoder forward (the target)": counted(lambda x: student.decode(x)),
        "teacher guided forward (batch x2)": counted(lambda x: teacher.unet(torch.cat([x, x]), torch.cat([t, t]),
                                                                             torch.cat([c, c])).sample),
        "teacher features: the discriminator's and the feature loss's on the sample, forward, backward":
            2 * feature_backward,
        "teacher features: the feature loss's on the target, the discriminator's on the real images": 2 * feature,
    }


def teacher_step_flops(before_echo: dict) -> int:
    return before_echo["phases"]["encode"] + before_echo["phases"]["1 teacher step"]


def summarise(results: dict, cheap: dict | None) -> dict:
    unit = teacher_step_flops(results["before_echo"])
    before, echo = results["before_echo"], results["echo"]
    echo_fraction = 1 - PRESETS["paper"].echo_start

    def shares(flops: dict) -> dict:
        return {name: round(value / unit, 3) for name, value in flops.items()}

    figures = {
        "iteration_vs_teacher_step": round(before["total"] / unit, 3),
        "echo_iteration_vs_teacher_step": round(echo["total"] / unit, 3),
        "whole_run_iteration_vs_teacher_step": round(((1 - echo_fraction) * before["total"]
                                                      + echo_fraction * echo["total"]) / unit, 3),
        "teacher_step_tflops": round(unit / 1e12, 3),
        "iteration_tflops": round(before["total"] / 1e12, 3),
        "phases_vs_teacher_step": shares(before["phases"]),
        "echo_phases_vs_teacher_step": shares(echo["phases"]),
        "networks_vs_teacher_step": shares(before["networks"]),
        "network_shares": {name: round(value / before["total"], 3) for name, value in before["networks"].items()},
        "vae_share": round(sum(v for k, v in before["networks"].items() if k.startswith("vae")) / before["total"], 3),
        "host_waits_per_iteration": before["host_waits"],
        "echo_host_waits_per_iteration": echo["host_waits"],
    }
    if results.get("method_passes") is not None:  # the floor: the teacher's own step and the passes the method adds
        figures["method_passes_vs_teacher_step"] = shares(results["method_passes"])
        figures["method_floor_vs_teacher_step"] = round((unit + sum(results["method_passes"].values())) / unit, 3)
    if cheap is not None:
        figures["cheap_colour_iteration_vs_teacher_step"] = round(cheap["before_echo"]["total"] / unit, 3)
        figures["cheap_colour_echo_iteration_vs_teacher_step"] = round(cheap["echo"]["total"] / unit, 3)
        figures["cheap_colour_networks_vs_teacher_step"] = shares(cheap["before_echo"]["networks"])
    return figures


def cheap_colour_changes() -> dict | None:
    """The config of the cheaper colour loss, when this version of the trainer has one."""
    fields = PRESETS["paper"].to_dict()
    return {"color_space": "latent_preview"} if "color_space" in fields else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--networks", default="teacher", choices=("teacher", "paper"),
                        help="discriminators' backbones and feature network: the base teacher's features, or the "
                             "paper's image networks (DINO, DINOv2, CLIP-H with IP-Adapter's projection)")
    parser.add_argument("--vae-decode", default="plain", choices=VAE_DECODES,
                        help="decoding with gradient (checkpointed and tiled recompute in the backward pass)")
    parser.add_argument("--checkpointing", action="store_true", help="UNet gradient checkpointing (recomputes)")
    args = parser.parse_args()
    torch.manual_seed(0)
    setup = dict(resolution=args.resolution, batch=args.batch, networks_choice=args.networks,
                 vae_decode=args.vae_decode, checkpointing=args.checkpointing)
    results = measure(build_trainer(**setup))
    changes = cheap_colour_changes()
    cheap = measure(build_trainer(**setup, **changes)) if changes else None
    figures = summarise(results, cheap)
    figures["setup"] = {"models": "SD 2.1 (768-v) teacher, SD-Turbo student, SD VAE, OpenCLIP-H, random, meta device",
                        **{key: value for key, value in setup.items()}, "cheap_colour": changes}
    name = f"sd21_turbo_{args.resolution}"

    print(f"SD 2.1 + SD-Turbo at {args.resolution} px, batch {args.batch}, {args.networks} networks, "
          f"VAE decoding {args.vae_decode}{', UNet checkpointing' if args.checkpointing else ''}")
    print(f"one teacher-only Custom Diffusion step: {figures['teacher_step_tflops']:.2f} TFLOPs")
    print(f"iteration before the echo: {figures['iteration_tflops']:.2f} TFLOPs = "
          f"{figures['iteration_vs_teacher_step']} teacher steps; in the echo stage "
          f"{figures['echo_iteration_vs_teacher_step']}; whole run {figures['whole_run_iteration_vs_teacher_step']}")
    if cheap is not None:
        print(f"with the cheaper colour loss ({changes}): {figures['cheap_colour_iteration_vs_teacher_step']} "
              f"(echo stage {figures['cheap_colour_echo_iteration_vs_teacher_step']})")
    print("per phase, in teacher steps (before echo / echo stage):")
    for phase in figures["echo_phases_vs_teacher_step"]:
        print(f"  {phase:28} {figures['phases_vs_teacher_step'].get(phase, 0):6.2f} "
              f"{figures['echo_phases_vs_teacher_step'][phase]:6.2f}")
    if "method_floor_vs_teacher_step" in figures:
        print("the passes the method makes, each counted alone, in teacher steps:")
        for part, value in figures["method_passes_vs_teacher_step"].items():
            print(f"  {value:6.2f}  {part}")
        print(f"  with the teacher's own step (1.00): {figures['method_floor_vs_teacher_step']}, against the "
              f"iteration's {figures['iteration_vs_teacher_step']} (the rest: text encoder, losses, updates)")
    print("per network, in teacher steps (share of the iteration), before the echo:")
    for network, value in figures["networks_vs_teacher_step"].items():
        print(f"  {network:28} {value:6.2f}  ({figures['network_shares'][network]:.0%})")
    waits = figures["host_waits_per_iteration"]
    print(f"host waits per iteration: {waits['values_read']} values read, {waits['copies_to_host']} copies to "
          f"the host, {waits['copies_to_device']} copies to the device")
    print(json.dumps({name: figures}))


if __name__ == "__main__":
    main()
