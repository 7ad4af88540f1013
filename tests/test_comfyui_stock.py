"""Stock sockets in and out, in a real ComfyUI: a checkpoint loaded once by the stock loader becomes our
teacher and student, and the personalized student goes back out as a stock MODEL with CONDITIONING
that knows the token, which stock KSampler draws in one step as our own one-step sampler does.

ComfyUI builds SD 2's text encoder at its one full size whatever the file holds, so these tests use
random full-size SD-Turbo weights (2.6 GB) and are slow."""

import json
import os
import subprocess
import sys

import pytest
from test_comfyui import COMFYUI_DIR, ROOT, sd_turbo_checkpoint, server  # noqa: F401 (server is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(COMFYUI_DIR is None, reason="needs COMFYUI_DIR")]

PROMPT = "a photo of a <turbo-dog> dog"


PERSONALIZE_RANDOMLY = """
import sys
import torch
from echodistill_core.checkpoints import load_single_file
from echodistill_core.config import PRESETS
from echodistill_core.personalization import Personalization

checkpoint, result = sys.argv[1:]
student, text, _ = load_single_file(checkpoint, role="student", dtype=torch.bfloat16)
config = PRESETS["paper"].replace(token="<turbo-dog>", class_word="dog")
personalization = Personalization.create(config, student, student, text)
torch.manual_seed(0)
with torch.no_grad():
    for parameter in personalization.student_adapters.parameters():
        parameter.mul_(1 + 0.5 * torch.randn_like(parameter))
    personalization.token.vector.add_(torch.randn_like(personalization.token.vector))
personalization.save(result)
"""


def personalize_randomly(checkpoint, result) -> None:
    """A result for the checkpoint's student whose learned layers and token moved as training moves them:
    the same file format, without hours of CPU training. In its own process, which returns its memory."""
    subprocess.run([sys.executable, "-c", PERSONALIZE_RANDOMLY, str(checkpoint), str(result)], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_stock_checkpoint_goes_in_and_the_personalized_student_comes_out_as_a_stock_model(server):  # noqa: F811
    import numpy as np
    from PIL import Image

    checkpoint = server.root / "models" / "checkpoints" / "sd_turbo_random.safetensors"
    if not checkpoint.exists():
        sd_turbo_checkpoint(checkpoint)
    (server.root / "models" / "echodistill").mkdir(parents=True, exist_ok=True)
    personalize_randomly(checkpoint, server.root / "models" / "echodistill" / "turbo_dog.safetensors")

    def ksampler(model: list, positive: list, prefix: str) -> dict:
        return {
            f"{prefix}1": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            f"{prefix}2": {"class_type": "KSampler", "inputs": {
                "model": model, "positive": positive, "negative": ["4", 0], "latent_image": [f"{prefix}1", 0],
                "seed": 5, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "sgm_uniform",
                "denoise": 1.0}},
            f"{prefix}3": {"class_type": "VAEDecode", "inputs": {"samples": [f"{prefix}2", 0], "vae": ["1", 2]}},
            f"{prefix}4": {"class_type": "SaveImage", "inputs": {"images": [f"{prefix}3", 0], "filename_prefix": prefix}},
        }

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint.name}},
        "2": {"class_type": "EchoDistillTeacherFromCheckpoint", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "family": "SD 2.x 512 (epsilon)",
            "precision": "bf16"}},  # only to load the result onto
        "3": {"class_type": "EchoDistillStudentFromCheckpoint", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "family": "auto-detect", "precision": "fp32"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "EchoDistillLoadPersonalized", "inputs": {
            "teacher": ["2", 0], "student": ["3", 0], "result": "turbo_dog.safetensors"}},
        "6": {"class_type": "EchoDistillPersonalizedModel", "inputs": {
            "one_step_model": ["5", 0], "model": ["1", 0], "strength": 1.0}},
        "7": {"class_type": "EchoDistillEncodePrompt", "inputs": {"one_step_model": ["5", 0], "text": PROMPT}},
        "8": {"class_type": "EchoDistillOneStepSample", "inputs": {
            "model": ["5", 0], "prompt": PROMPT, "seed": 5, "batch_size": 1, "steps": 1}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ours"}},
        **ksampler(["6", 0], ["7", 0], "stock"),  # the personalized MODEL, as stock nodes draw it
        **ksampler(["1", 0], ["7", 0], "plain"),  # the student without its learned layers
    }
    entry = server.wait(server.queue(prompt), cpu_budget=7200)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]

    def image(prefix: str):
        files = sorted((server.root / "output").glob(f"{prefix}_*.png"))
        return np.asarray(Image.open(files[-1]).convert("RGB"), dtype=np.float64) / 255

    ours, stock, plain = image("ours"), image("stock"), image("plain")  # 512 px, SD-Turbo's own size
    assert ours.shape == stock.shape == plain.shape == (512, 512, 3)
    assert ours.std() > 0.02  # an image, not a flat field
    effect = np.abs(plain - ours).mean()  # what the learned layers change
    gap = np.abs(stock - ours).mean()  # stock sampling against ours: precision and the VAE's implementation
    assert effect > 0.02, effect
    assert gap < 0.05 * effect, (gap, effect)  # measured: 3e-7 against 0.03, a pixel off by one level at most
    assert np.abs(stock - ours).max() <= 2 / 255
