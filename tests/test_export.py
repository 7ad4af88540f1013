"""Exported files reproduce the personalized student when applied the way ComfyUI's LoraLoader does:
W + diff for Custom Diffusion, W + up @ down * alpha / rank for LoRA, by kohya module name."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import SIZE, make_concept, tiny_config
from echodistill_core.export import kohya_name, save_embedding, save_student_lora
from echodistill_core.sampling import generate_student
from echodistill_core.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer


def patch_like_comfyui(unet, lora: dict[str, torch.Tensor]) -> None:
    """Apply a kohya-named file to a UNet's weights, as stock ComfyUI would."""
    names = {kohya_name(path): module for path, module in unet.named_modules() if isinstance(module, torch.nn.Linear)}
    stems = {key.split(".")[0] for key in lora}
    assert stems <= set(names), f"keys no layer matches: {sorted(stems - set(names))}"  # no unloaded keys
    for stem in stems:
        weight = names[stem].weight
        if f"{stem}.diff" in lora:
            weight.data += lora[f"{stem}.diff"].float()
        else:
            up, down = lora[f"{stem}.lora_up.weight"].float(), lora[f"{stem}.lora_down.weight"].float()
            weight.data += up @ down * (lora[f"{stem}.alpha"].float() / down.shape[0])


@pytest.mark.parametrize("parameterisation", ["custom_diffusion", "lora"])
def test_the_exported_lora_and_embedding_reproduce_the_student(tmp_path, parameterisation):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    config = tiny_config(steps=2, parameterisation=parameterisation, lora_all_attention=parameterisation == "lora")
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    trainer.train()
    prompt = [f"a photo of a {config.token} dog"]
    with trainer.applied():
        expected = generate_student(student, text, prompt, [0])
    lora_path = save_student_lora(tmp_path / "lora.safetensors", trainer.personalization, student.unet, "dog")
    embedding_path = save_embedding(tmp_path / "dog.safetensors", trainer.personalization)

    _, fresh_student, fresh_text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    patch_like_comfyui(fresh_student.unet, load_file(str(lora_path)))
    vector = load_file(str(embedding_path))["emb_params"]
    assert vector.shape == (1, text.width)
    table = fresh_text.text_encoder.get_input_embeddings()
    fresh_text.text_encoder.resize_token_embeddings(table.num_embeddings + 1)  # a textual-inversion slot
    fresh_text.text_encoder.get_input_embeddings().weight.data[-1] = vector[0]
    fresh_text.tokenizer.add_tokens([config.token])
    got = generate_student(fresh_student, fresh_text, prompt, [0])
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # the file holds fp16 weights
