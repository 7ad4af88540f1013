"""Exported files reproduce the personalized student when applied the way ComfyUI's LoraLoader does
(W + up @ down * alpha / rank, by kohya module name) and when diffusers' own loaders read them."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import SIZE, make_concept, tiny_config
from echodistill_core.export import kohya_name, low_rank_factors, save_embedding, save_student_lora
from echodistill_core.personalization import Personalization
from echodistill_core.sampling import generate_student
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer


def patch_like_comfyui(unet, lora: dict[str, torch.Tensor]) -> None:
    """Apply a kohya-named file to a UNet's weights, as stock ComfyUI would."""
    names = {kohya_name(path): module for path, module in unet.named_modules() if isinstance(module, torch.nn.Linear)}
    stems = {key.split(".")[0] for key in lora}
    assert stems <= set(names), f"keys no layer matches: {sorted(stems - set(names))}"  # no unloaded keys
    assert {key.split(".", 1)[1] for key in lora} == {"lora_up.weight", "lora_down.weight", "alpha"}
    for stem in stems:
        up, down = lora[f"{stem}.lora_up.weight"].float(), lora[f"{stem}.lora_down.weight"].float()
        names[stem].weight.data += up @ down * (lora[f"{stem}.alpha"].float() / down.shape[0])


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


@pytest.mark.parametrize("parameterisation", ["custom_diffusion", "lora"])
def test_diffusers_loads_the_exported_files_into_a_pipeline_as_our_personalized_student(tmp_path, parameterisation):
    """A real diffusers StableDiffusionPipeline (tiny latent models built from config) takes the LoRA file with
    `load_lora_weights` and the embedding with `load_textual_inversion`; its text encoder and UNet then give our
    personalized student's prediction, which differs from the base model's."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE, latent=True)
    config = tiny_config(parameterisation=parameterisation, lora_all_attention=parameterisation == "lora")
    personalization = Personalization.create(config, teacher, student, text)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking result: every adapter and the token moved
        for parameter in personalization.student_adapters.parameters():
            parameter += 0.05 * torch.randn(parameter.shape, generator=generator)
        personalization.token.vector += 0.5 * torch.randn(personalization.token.vector.shape, generator=generator)
    save_student_lora(tmp_path / "student.safetensors", personalization, student.unet, "dog")
    save_embedding(tmp_path / "dog.safetensors", personalization)

    prompt = f"a photo of a {config.token} dog"
    z = torch.randn(1, *student.latent_shape(), generator=generator)
    t = torch.tensor([999])
    with torch.no_grad():
        base = student.unet(z, t, encoder_hidden_states=text([prompt.replace(config.token, "dog")])).sample
        with personalization.applied(text, student=student):
            expected = student.unet(z, t, encoder_hidden_states=text([prompt])).sample

    _, fresh_student, fresh_text = tiny_pair("v_prediction", "sample", image_size=SIZE, latent=True)
    pipe = StableDiffusionPipeline(
        vae=fresh_student.vae, text_encoder=fresh_text.text_encoder, tokenizer=fresh_text.tokenizer,
        unet=fresh_student.unet, scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path), weight_name="student.safetensors")
    pipe.load_textual_inversion(str(tmp_path / "dog.safetensors"), token=config.token)
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=False)
        got = pipe.unet(z, t, encoder_hidden_states=cond).sample
    assert (expected - base).abs().max() > 0.05  # the personalization changes the prediction
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # the file holds fp16 weights


def test_a_custom_diffusion_change_is_factored_at_the_rank_it_has():
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(40, 3, generator=generator) @ torch.randn(3, 64, generator=generator)
    up, down = low_rank_factors(delta)
    assert up.shape == (40, 3) and down.shape == (3, 64)
    torch.testing.assert_close(up @ down, delta, atol=1e-4, rtol=0)
    full = torch.randn(40, 64, generator=generator)
    up, down = low_rank_factors(full)
    assert up.shape == (40, 40)
    torch.testing.assert_close(up @ down, full, atol=1e-4, rtol=0)
