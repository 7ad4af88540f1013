"""The run recipe every face calls (echodistill_core/recipe.py): one set of defaults, the precision rule written
once, a pair that must be a teacher and a one-step student, and a plan that refuses bad input before any model
loads or any step trains. The Train node's plan is compared with the command line's in tests/test_nodes.py."""

import pytest
import torch

from conftest import concept_images, save_png, save_user_models
from echodistill_core import cli, recipe
from echodistill_core.image_networks import RunNetworks, load_dino
from echodistill_core.lab import world
from echodistill_core.memory import MEMORY_PRESETS
from echodistill_core.models import IncompatiblePairError
from echodistill_core.trainer import EchoDistillTrainer


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A teacher, a one-step student, a multi-step model offered as a student, a student of another text
    encoder, and photos."""
    home = tmp_path_factory.mktemp("recipe")
    save_user_models(home)
    (home / "photos").mkdir()
    for index, image in enumerate(concept_images(3)):
        save_png(image, home / "photos" / f"{index}.png")
    return home


@pytest.fixture
def nothing_trains(monkeypatch):
    """Fails the test if a trainer is built or a step runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(EchoDistillTrainer, "__init__", refuse)
    monkeypatch.setattr(EchoDistillTrainer, "train_step", refuse)


# ------------------------------------------------------------------------------------------- defaults


def test_one_set_of_defaults_for_an_artists_gpu():
    assert (recipe.DEFAULT_PRESET, recipe.DEFAULT_MEMORY, recipe.DEFAULT_PRECISION) == ("auto", "12 GB", "auto")
    config, memory = recipe.plan_config()
    assert memory.name == "12 GB" and (config.batch_size, config.gradient_checkpointing) == (2, True)
    assert config.steps == 1000  # auto is the paper's preset for SD-size models
    tiny, tiny_memory = recipe.plan_config(tiny=True, memory="8 GB")
    assert tiny.steps == 300 and tiny_memory.name == "unlimited"  # the bundled tiny models need no saving


def test_the_command_line_starts_from_the_recipes_defaults(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--teacher", "t", "--student", "s", "--images", "i", "--class-word", "dog",
                              "--out", str(tmp_path / "x.safetensors")])
    assert (args.preset, args.memory, args.precision) == (recipe.DEFAULT_PRESET, recipe.DEFAULT_MEMORY,
                                                          recipe.DEFAULT_PRECISION)
    plan = cli.plan_from_arguments(args, images=None)
    assert plan.config == recipe.plan_run(token="<sks>", class_word="dog").config


def test_the_bundled_tiny_models_train_with_their_own_image_network():
    """Unchosen, the image networks are the base teacher's features, and for the bundled tiny models also
    their image network (as SD's runs have DINO), as `make demo` trains: every face gets the same run."""
    assert recipe.plan_run(token="<sks>", class_word="dog").networks == RunNetworks(["teacher"], "teacher")
    tiny = recipe.plan_run(token="<sks>", class_word="dog", tiny=True).networks
    assert tiny.discriminators[0] == "teacher" and tiny.discriminators[1] is tiny.feature
    bundled = load_dino(world.IMAGE_NETWORK_FOLDER).state_dict()
    assert all(torch.equal(value, bundled[key]) for key, value in tiny.feature.state_dict().items())


def test_an_explicit_batch_size_wins_over_the_memory_presets_cap():
    config, _ = recipe.plan_config(memory="8 GB", batch_size=3)
    assert (config.batch_size, config.offload) == (3, True)
    assert recipe.plan_config(memory="8 GB")[0].batch_size == 1


# ------------------------------------------------------------------------------------------- precision


def test_the_precision_rule(monkeypatch):
    assert recipe.frozen_dtype("fp16", "cpu") == torch.float16  # an explicit choice is kept everywhere
    assert recipe.frozen_dtype("auto", "cpu") == torch.float32
    assert recipe.frozen_dtype("auto", "cpu", host_choice={"unet": torch.float16}) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert recipe.frozen_dtype("auto", "cuda:0") == torch.bfloat16
    host = {"unet": torch.float16, "vae": torch.float32, "text_encoder": torch.float16}
    assert recipe.frozen_dtype("auto", "cuda", host_choice=host) == host  # a host's per-part choice
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert recipe.frozen_dtype("auto", "cuda") == torch.float16
    assert MEMORY_PRESETS["12 GB"].weight_dtype("cuda") == torch.float16  # what the presets count on: the same rule
    with pytest.raises(ValueError, match="precision 'fp8' is not one of auto, fp32, fp16, bf16"):
        recipe.frozen_dtype("fp8", "cpu")


# ------------------------------------------------------------------------------------------- the pair


def test_a_pair_loads_checked(home):
    pair = recipe.load_pair(home / "teacher", home / "student", device="cpu")
    assert pair.teacher.dtype == pair.student.dtype == torch.float32 and not pair.tiny
    assert recipe.is_bundled_tiny(recipe.TINY_ASSETS / "teacher") and not recipe.is_bundled_tiny(home / "teacher")


def test_a_multi_step_student_is_refused_before_the_teacher_loads(home, monkeypatch):
    loaded = []
    monkeypatch.setattr(recipe, "load_model", lambda path, **options: loaded.append(path))
    with pytest.raises(ValueError, match="multi-step is a multi-step model .*choose a one-step model such as "
                                         "SD-Turbo as the student, and use multi-step as the teacher"):
        recipe.load_pair(home / "teacher", home / "multi-step")
    assert loaded == []


@pytest.mark.parametrize("teacher, student, message", [
    ("teacher", "teacher", "given as both teacher and student"),
    ("nowhere", "student", "the teacher .*nowhere does not exist; give a diffusers folder or a checkpoint file"),
    ("teacher", "nowhere", "the student .*nowhere does not exist"),
])
def test_a_pair_that_is_not_there_is_refused_before_any_weight_loads(home, monkeypatch, teacher, student, message):
    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(ValueError, match=message):
        recipe.load_pair(home / teacher, home / student)


def test_a_student_of_another_text_encoder_is_refused(home):
    with pytest.raises(IncompatiblePairError, match="pair the student with the teacher it was distilled from"):
        recipe.load_pair(home / "teacher", home / "foreign-student", device="cpu")


def test_the_command_line_refuses_a_multi_step_student_saying_what_to_do(home, tmp_path, capsys, nothing_trains):
    code = cli.main(["train", "--teacher", str(home / "teacher"), "--student", str(home / "multi-step"), "--images",
                     str(home / "photos"), "--class-word", "toy", "--steps", "1", "--out",
                     str(tmp_path / "x.safetensors")])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert "multi-step is a multi-step model" in error and "cannot draw in one step" in error
    assert "choose a one-step model such as SD-Turbo as the student" in error
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------- the plan


def big_networks(gigabytes: float) -> RunNetworks:
    class Big(RunNetworks):
        def weight_bytes(self, bytes_per_weight: int) -> int:
            return int(gigabytes * 2**30)

        def image_networks(self):
            return [torch.nn.Linear(1, 1)]

    return Big(["teacher"], "teacher")


BAD_PLANS = [
    ("no photos", dict(images="nowhere"), "nowhere is not a folder of images"),
    ("no images", dict(images=[]), "no concept images were given"),
    ("a tiny image", dict(images=[torch.rand(3, 4, 4)]), "is 4x4 px; concept images need at least 8 px"),
    ("an image with NaN", dict(images=[torch.full((3, 16, 16), float("nan"))]), "contains NaN"),
    ("token with a space", dict(token="my toy"), "must be one word without spaces"),
    ("empty class word", dict(class_word=" "), "class word is empty"),
    ("no class word", dict(class_word=None), "give the concept's class word"),
    ("class word is the token", dict(class_word="<sks>"), "contains the placeholder token"),
    ("initializer word is the token", dict(initializer_word="<sks> dog"), "initializer word .* contains the "
     "placeholder token"),
    ("captions without the token", dict(captions=["a toy", "a toy", "a toy"]), "does not mention the token"),
    ("captions too few", dict(captions=["a <sks> toy"]), "got 1 captions for 3 images"),
    ("unknown preset", dict(preset="huge"), "preset 'huge' is not one of auto, paper, tiny"),
    ("unknown memory", dict(memory="6 GB"), "memory preset '6 GB' is not one of 8 GB, 12 GB"),
    ("unknown setting", dict(stepz=3), "stepz is not a setting of a run"),
    ("no steps", dict(steps=0), "steps must be at least 1"),
    ("a size the models cannot take", dict(resolution=100), "resolution must be 0 .the student's size. or a multiple "
     "of 8"),
    ("every problem at once", dict(steps=0, teacher_lr=-1.0), "steps must be at least 1.*teacher_lr must be positive"),
    ("networks too large", dict(memory="8 GB", networks=big_networks(1.0)), "more than the 8 GB memory preset "
     "leaves room for"),
]


@pytest.mark.parametrize("case, changes, message", BAD_PLANS, ids=[case[0] for case in BAD_PLANS])
def test_the_plan_refuses_bad_input_before_any_model_loads_or_trains(home, monkeypatch, nothing_trains, case, changes,
                                                                    message):
    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    inputs = dict(images=home / "photos", token="<sks>", class_word="toy", preset="tiny")
    inputs.update(changes)
    if isinstance(inputs["images"], str):
        inputs["images"] = home / inputs["images"]
    with pytest.raises(ValueError, match=message):
        recipe.plan_run(**inputs)


def test_a_plan_builds_the_trainer_of_its_run(home):
    plan = recipe.plan_run(home / "photos", token="<toy>", class_word="toy", preset="tiny", steps=2, memory="8 GB")
    assert plan.preset == "tiny" and plan.memory.name == "8 GB" and len(plan.images) == 3
    pair = recipe.load_pair(home / "teacher", home / "student", device="cpu")
    trainer = plan.trainer(pair)
    assert trainer.config is plan.config and trainer.concept.resolution == 16  # the student's own size
    assert plan.warnings(pair) == []  # on a CPU fp32 is what every preset counts on
    assert (trainer.config.batch_size, trainer.config.vae_decode) == (1, "tiled")


def test_the_photos_are_augmented_as_the_config_says(home):
    """The paper's recipe for SD-size runs; the tiny preset only mirrors, since at 32 px a shrunken paste
    loses a look's detail: every tiny example is a photo or its mirror image, named in `sources`."""
    generator = torch.Generator().manual_seed(0)
    def concept(preset):
        plan = recipe.plan_run(home / "photos", token="<toy>", class_word="toy", preset=preset, resolution=16)
        return plan.dataset(None)

    paper = concept("paper")
    assert paper.augment is True and paper.sample(8, generator).sources == [None] * 8
    tiny = concept("tiny")
    batch = tiny.sample(8, generator)
    assert tiny.augment == "flip" and {flipped for _, flipped in batch.sources} == {True, False}
    for image, (index, flipped) in zip(batch.images, batch.sources):
        assert torch.equal(image, tiny.images[index].flip(-1) if flipped else tiny.images[index])
    with pytest.raises(ValueError, match="augmentation must be custom_diffusion or flip or none"):
        recipe.plan_run(home / "photos", token="<toy>", class_word="toy", augmentation="crop")
    args = cli.build_parser().parse_args(["train", "--teacher", "t", "--student", "s", "--class-word", "toy",
                                          "--augmentation", "none", "--out", "x.safetensors"])
    assert cli.plan_from_arguments(args, images=None).config.augmentation == "none"


def test_a_queue_plans_its_shared_settings_without_photos():
    plan = recipe.plan_run(None, class_word=None, preset="tiny")
    assert plan.images is None and plan.config.steps == 300
    with pytest.raises(ValueError, match="plan each concept with its photos"):
        plan.dataset(None)
