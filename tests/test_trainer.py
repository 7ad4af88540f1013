"""The EchoDistill loop: isolation of what each step trains, the echo, resume, and safety."""

import copy
import logging

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from conftest import SIZE, concept_images, make_concept, tiny_config
from echodistill_core import trainer as trainer_module
from echodistill_core.backbones import ImageBackbone
from echodistill_core.data import TRAINING_TEMPLATES, ConceptDataset
from echodistill_core.models import IncompatiblePairError
from echodistill_core.sampling import generate_student
from echodistill_core.lab.tiny import tiny_model, tiny_pair, tiny_text
from echodistill_core.trainer import (EchoDistillTrainer, NonFiniteLossError, TrainingOutOfMemoryError,
                                      training_resolution)


def make_trainer(pair, **changes) -> EchoDistillTrainer:
    teacher, student, text = pair
    config = tiny_config(**changes)
    return EchoDistillTrainer(teacher, student, text, make_concept(config), config)


def learned(trainer) -> dict[str, torch.Tensor]:
    """Every trainable tensor of a run, by name, copied."""
    tensors = {f"teacher.{k}": v for k, v in trainer.teacher_adapters.state_dict().items()}
    tensors |= {f"student.{k}": v for k, v in trainer.student_adapters.state_dict().items()}
    tensors |= {f"head.{i}.{k}": v for i, d in enumerate(trainer.discriminators) for k, v in d.head.state_dict().items()}
    tensors["token"] = trainer.token.vector
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def frozen(pair) -> dict[str, torch.Tensor]:
    teacher, student, text = pair
    modules = {"teacher": teacher.unet, "student": student.unet, "text": text.text_encoder}
    return {f"{m}.{k}": v.detach().clone() for m, module in modules.items() for k, v in module.state_dict().items()}


def test_teacher_step_changes_only_its_adapters_and_the_token(pair):
    trainer = make_trainer(pair, echo=False)
    before = learned(trainer)
    z = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    with trainer.applied():
        trainer.teacher_step(z, ["a photo of a <sks> dog"] * 4, torch.randn_like(z), torch.ones(4, 1, SIZE, SIZE))
    touched = changed(before, learned(trainer))
    assert "token" in touched and any(name.startswith("teacher.") for name in touched)
    assert all(name.startswith("teacher.") or name == "token" for name in touched)


def test_student_step_changes_neither_the_token_nor_the_teacher(pair):
    trainer = make_trainer(pair)
    before = learned(trainer)
    with trainer.applied():
        c = trainer.text(["a photo of a <sks> dog"] * 2).detach()
        x_s, _ = trainer.student_sample(torch.randn(2, 3, SIZE, SIZE), c)
        features = [d.features(x_s, x_s, c, trainer.generator) for d in trainer.discriminators]
        trainer.student_step(x_s, x_s, torch.zeros_like(x_s), torch.ones(2), c, features)
    touched = changed(before, learned(trainer))
    assert touched and all(name.startswith("student.") for name in touched)
    assert trainer.token.vector.grad is None
    assert all(p.grad is None for p in trainer.teacher_adapters.parameters())


def test_frozen_weights_stay_frozen_through_a_run(pair):
    before = frozen(pair)
    make_trainer(pair, steps=3, echo_start=0.0).train()
    assert not changed(before, frozen(pair))


def test_base_models_are_restored_after_training(pair):
    teacher, student, text = pair
    prompt = ["a photo of a dog"]
    reference = generate_student(student, text, prompt, [3])
    make_trainer(pair, steps=2).train()
    assert torch.equal(generate_student(student, text, prompt, [3]), reference)


def test_the_echo_feeds_the_teachers_loss_with_ranked_student_samples(pair, monkeypatch):
    trainer = make_trainer(pair, steps=4, echo_start=0.5, batch_size=4, echo_keep=0.5)
    fed, echoed = [], []
    original_loss, original_echo = trainer_module.L.teacher_diffusion_loss, trainer.echo_samples_ranked
    monkeypatch.setattr(trainer_module.L, "teacher_diffusion_loss",
                        lambda teacher, x0, *rest: fed.append(x0) or original_loss(teacher, x0, *rest))
    monkeypatch.setattr(trainer, "echo_samples_ranked", lambda shape: echoed.append(original_echo(shape)) or echoed[-1])
    trainer.train()
    assert len(echoed) == 2  # the echo starts at 50 %: steps 3 and 4 of 4
    assert [len(x0) for x0 in fed] == [4, 4, 4 + 2, 4 + 2]  # the top half of a batch of 4 joins the real 4
    for x_echo, prompts in ((echo.latents, echo.kept_prompts()) for echo in echoed):
        assert any(torch.equal(x0[4:], x_echo) for x0 in fed)  # the teacher trained on exactly these samples
        assert len(x_echo) == 2 and len(prompts) == 2
        assert all(p.startswith(tuple(t.split("{}")[0] for t in TRAINING_TEMPLATES)) for p in prompts)
        assert all("<sks> dog" in p for p in prompts)
    assert trainer.echo_samples == 4
    assert [entry.get("echo_kept", 0) for entry in trainer.history] == [0, 0, 2, 2]


def test_echo_off_trains_the_teacher_on_real_images_only(pair):
    trainer = make_trainer(pair, steps=2, echo=False, echo_start=0.0)
    trainer.train()
    assert trainer.echo_samples == 0 and all("echo" not in entry for entry in trainer.history)


def test_the_echo_changes_the_teachers_update():
    with_echo, without_echo = (make_trainer(tiny_pair("v_prediction", "sample", image_size=SIZE), steps=1,
                                            echo=echo, echo_start=0.0) for echo in (True, False))
    with_echo.train()
    without_echo.train()
    teacher = [name for name in learned(with_echo) if name.startswith("teacher.")]
    assert any(not torch.equal(learned(with_echo)[n], learned(without_echo)[n]) for n in teacher)


def test_resume_continues_exactly(pair, tmp_path):
    straight = make_trainer(pair, steps=6, echo_start=0.5)
    straight.train()
    first = make_trainer(pair, steps=6, echo_start=0.5)
    first.train(should_cancel=lambda: first.step == 3)
    assert first.step == 3
    first.save_state(tmp_path / "state.safetensors")
    second = make_trainer(pair, steps=6, echo_start=0.5)
    second.load_state(tmp_path / "state.safetensors")
    assert second.train() is True
    for name, tensor in learned(straight).items():
        torch.testing.assert_close(learned(second)[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert [e["teacher"] for e in second.history] == pytest.approx([e["teacher"] for e in straight.history])
    assert second.echo_samples == straight.echo_samples


def test_same_seed_same_run_other_seed_other_run(pair):
    runs = [make_trainer(pair, steps=2, seed=seed) for seed in (1, 1, 2)]
    for run in runs:
        run.train()
    assert runs[0].history == runs[1].history
    assert runs[0].history != runs[2].history


def test_overfit_moves_the_students_samples_toward_the_concept():
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    config = tiny_config(steps=60, parameterisation="lora", lora_all_attention=True, lora_rank=8,
                         teacher_lr=1e-2, student_lr=1e-2)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config, augment=False), config)
    concept = torch.tensor([0.9, 0.1, 0.1])

    def distance() -> float:
        with trainer.applied():
            images = generate_student(student, text, ["a photo of a <sks> dog"] * 4, [0, 1, 2, 3])
        return (images - concept).abs().mean().item()

    before = distance()
    trainer.train()
    assert distance() < 0.9 * before


@pytest.mark.parametrize("parameterisation", ["custom_diffusion", "lora"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_every_parameterisation_and_prediction_type_trains(parameterisation, prediction):
    pair = tiny_pair(prediction, prediction, image_size=SIZE)
    trainer = make_trainer(pair, steps=2, parameterisation=parameterisation, echo_start=0.5)
    before = learned(trainer)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(list(entry.values()))).all() for entry in trainer.history)
    assert {"token"} | {n for n in before if n.startswith(("teacher.", "student."))} <= changed(before, learned(trainer))


def test_latent_space_pair_trains():
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    assert teacher.vae is student.vae and teacher.latent_shape() == (4, SIZE // 2, SIZE // 2)
    config = tiny_config(steps=2, echo_start=0.5)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    trainer.train()
    assert trainer.step == 2 and trainer.echo_samples == 2  # step 2 of 2 echoes: half a batch of 4


@pytest.mark.parametrize("resolution", [SIZE // 2 + 8, 2 * SIZE])  # below and above the student's native size
def test_every_stage_runs_at_the_training_resolution_the_echo_included(resolution):
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    config = tiny_config(steps=2, echo_start=0.5, resolution=resolution)
    concept = ConceptDataset(concept_images(), config.token, config.class_word, resolution)
    trainer = EchoDistillTrainer(teacher, student, text, concept, config)
    shapes = []
    original = trainer.teacher_step
    trainer.teacher_step = lambda z, prompts, eps, mask, echo=None: shapes.append(
        (z.shape, None if echo is None else echo.latents.shape)) or original(z, prompts, eps, mask, echo)
    trainer.train()
    latent = (4, resolution // 2, resolution // 2)
    assert shapes == [((4, *latent), None), ((4, *latent), (2, *latent))]


def test_the_default_training_resolution_is_the_students_native_size():
    """The paper trains SD-Turbo (512 px) with the 768 px SD 2.1 teacher at 512 px."""
    student = tiny_model("epsilon", image_size=SIZE, latent=True)
    teacher = tiny_model("v_prediction", image_size=2 * SIZE, latent=True, seed=1, vae=student.vae)
    config = tiny_config()
    assert training_resolution(config, student) == SIZE
    assert training_resolution(config.replace(resolution=24), student) == 24
    with pytest.raises(ValueError, match=f"prepared at {2 * SIZE} px, but this run trains at {SIZE} px"):
        EchoDistillTrainer(teacher, student, tiny_text(), ConceptDataset(concept_images(), config.token,
                                                                     config.class_word, 2 * SIZE), config)


def test_mismatched_pairs_are_refused(pair):
    teacher, student, text = pair
    config = tiny_config()
    latent_student = tiny_model("epsilon", image_size=SIZE, latent=True)
    with pytest.raises(IncompatiblePairError, match="latent space"):
        EchoDistillTrainer(teacher, latent_student, text, make_concept(config), config)
    other_text = tiny_text()
    other_text.text_encoder.config.num_hidden_layers = 3
    with pytest.raises(IncompatiblePairError, match="text encoders differ"):
        EchoDistillTrainer(teacher, student, text, make_concept(config), config, student_text=other_text)
    student.unet.register_to_config(cross_attention_dim=64)
    with pytest.raises(IncompatiblePairError, match="width 64"):
        EchoDistillTrainer(teacher, student, text, make_concept(config), config)


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(pair, monkeypatch):
    trainer = make_trainer(pair, steps=4)
    trainer.train(should_cancel=lambda: trainer.step == 1)
    good = learned(trainer)
    monkeypatch.setattr(trainer_module.L, "color_loss", lambda a, b, *args, **kw: torch.full((len(a),), float("nan")))
    with pytest.raises(NonFiniteLossError, match="student loss became nan at step 2"):
        trainer.train()
    assert trainer.step == 1 and len(trainer.history) == 1
    assert not changed(good, learned(trainer))  # the teacher had stepped in step 2: undone


def test_an_interruption_mid_step_keeps_the_last_completed_step(pair, monkeypatch):
    reference = make_trainer(pair, steps=2)
    reference.train()
    trainer = make_trainer(pair, steps=4)
    original = trainer.student_step

    def interrupted(*args):
        if trainer.step == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(trainer, "student_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.step == 2 and not changed(learned(reference), learned(trainer))


def test_out_of_memory_is_reported_with_advice(pair, monkeypatch):
    trainer = make_trainer(pair, steps=2)
    monkeypatch.setattr(trainer, "student_step", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(TrainingOutOfMemoryError, match="LoRA.*gradient checkpointing"):
        trainer.train()
    assert trainer.step == 0


def test_the_feature_loss_uses_the_teachers_features_by_default_an_image_network_when_given_or_none(pair, caplog):
    trainer = make_trainer(pair, steps=1)
    trainer.train()
    assert trainer.feature_network.space == "latent" and trainer.history[-1]["feature"] >= 0

    teacher, student, text = pair
    config = tiny_config(steps=1)
    with caplog.at_level(logging.INFO, logger="echodistill"):
        trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config, feature_network=None)
        trainer.train()
    assert sum("feature loss off" in r.message for r in caplog.records) == 1
    assert "feature" not in trainer.history[-1]

    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=24))
    backbone = ImageBackbone.from_transformers(vision)
    assert backbone(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 24)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config, feature_network=backbone,
                                 discriminator_backbones=[copy.deepcopy(backbone)])
    trainer.train()
    assert trainer.history[-1]["feature"] > 0 and trainer.discriminators[0].space == "image"


def test_callback_gets_losses_and_previews(pair):
    reports = []
    make_trainer(pair, steps=4, preview_every=2).train(callback=reports.append)
    assert [r.step for r in reports] == [1, 2, 3, 4]
    assert [r.preview is not None for r in reports] == [True, True, False, True]  # step 1 too: seen early
    assert reports[1].preview.shape == (SIZE, SIZE, 3) and 0 <= reports[1].preview.min()
    assert {"teacher", "student", "discriminator", "latent", "color", "adversarial"} <= set(reports[0].losses)


def test_several_preview_prompts_are_drawn_side_by_side_in_their_order(pair):
    prompts = ["a photo of a <sks> dog", "a <sks> dog in the snow", "a red ring"]
    trainer = make_trainer(pair, steps=1, preview_every=1, preview_prompt="\n".join(prompts) + "\n\n")
    assert trainer.preview_prompts() == prompts
    strip = trainer.preview()
    assert strip.shape == (SIZE, 3 * SIZE, 3)
    with trainer.applied():
        alone = generate_student(trainer.student, trainer.text, [prompts[1]], [trainer.config.preview_seed])[0]
    torch.testing.assert_close(strip[:, SIZE:2 * SIZE], alone)
    assert make_trainer(pair, steps=1).preview_prompts() == ["a photo of a <sks> dog"]


def test_one_state_resumes_two_runs_identically(pair):
    first = make_trainer(pair, steps=4)
    first.train(should_cancel=lambda: first.step == 2)
    state = first.state_dict()
    runs = [make_trainer(pair, steps=4) for _ in range(2)]
    for run in runs:
        run.load_state_dict(state)
        run.train()
    assert not changed(learned(runs[0]), learned(runs[1]))  # loading did not share tensors with `state`


def test_a_state_from_other_settings_is_refused(pair):
    state = make_trainer(pair, steps=2).state_dict()
    with pytest.raises(ValueError, match="other settings \\(student_lr\\)"):
        make_trainer(pair, steps=4, student_lr=0.5).load_state_dict(state)


def test_r1_penalty_trains_with_the_discriminators(pair):
    plain, regularised = make_trainer(pair, steps=2), make_trainer(pair, steps=2, r1_gamma=10.0)
    plain.train()
    regularised.train()
    assert regularised.history[0]["discriminator"] > plain.history[0]["discriminator"]


def test_gradient_checkpointing_trains_exactly_like_storing_activations():
    runs = []
    for checkpointing in (False, True):
        trainer = make_trainer(tiny_pair("v_prediction", "sample", image_size=SIZE), steps=2,
                               gradient_checkpointing=checkpointing)
        trainer.train()
        runs.append(learned(trainer))
    for name, tensor in runs[0].items():
        torch.testing.assert_close(runs[1][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_the_summary_names_what_the_run_computes(pair):
    teacher, student, text = pair
    config = tiny_config(steps=8, echo_start=0.5)
    lines = "\n".join(EchoDistillTrainer(teacher, student, text, make_concept(config), config).describe())
    assert "feature x1 on" in lines and "colour (MS-SWD) x0.1" in lines and "guidance 3" in lines
    assert "discriminators: the base teacher's features" in lines and "echo: from step 5 of 8" in lines
    off = EchoDistillTrainer(teacher, student, text, make_concept(config), config.replace(echo=False),
                             feature_network=None).describe()
    assert "no feature loss" in "\n".join(off) and "echo: off" in off
