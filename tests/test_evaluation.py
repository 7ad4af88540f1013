"""The personalization metrics on samplers whose answers are known: a perfect one, one that ignores prompts,
rendered concepts standing in for trained ones, and the untouched bundled student."""

import pytest
import torch

from echodistill_core.config import TINY_TEACHER_GUIDANCE
from echodistill_core.lab import world
from echodistill_core.lab.demo import DEMO_CONCEPT, default_models, rendered_concept_images
from echodistill_core.lab.evaluation import (
    CONCEPT_PROMPTS, EvaluationSet, Untouched, concept_score, cross_concept_matrix, evaluate, held_out_images,
    matrix_table, own_score, plain_samples, samplers, silhouette_similarity, untouched_samples,
)
from echodistill_core.lab.judge import load_judge, recognise, recognition_rate

pytestmark = pytest.mark.usefixtures("one_thread")

SUBJECT = "<heart> toy"
CONCEPT = dict(shape="heart", color="pink", background="black", size="big")


def perfect_sampler(evaluation):
    """Draws exactly what each prompt asks for: the concept where the subject is named, else the world's image."""
    plain_prompts, plain_attributes, _ = evaluation.plain()
    plain = dict(zip(plain_prompts, plain_attributes))
    concept = {template.format(SUBJECT): dict(CONCEPT, **named) for template, named in CONCEPT_PROMPTS}

    def sample(prompts, seeds):
        images = [world.render(plain[prompt] if prompt in plain else concept[prompt]) for prompt in prompts]
        return (torch.stack(images).permute(0, 2, 3, 1) + 1) / 2
    return sample


def careless_sampler(prompts, seeds):
    """The same concept image whatever the prompt says."""
    image = (world.render(CONCEPT).permute(1, 2, 0) + 1) / 2
    return image.expand(len(prompts), -1, -1, -1)


@pytest.fixture(scope="module")
def setup():
    evaluation = EvaluationSet(SUBJECT, seeds_per_prompt=2, plain_count=16, drawn=DRAWN)
    references = torch.stack([world.render(dict(CONCEPT, size=size, x=x, y=16))
                              for size, x in (("big", 14), ("small", 20), ("big", 18))])
    perfect = perfect_sampler(evaluation)
    return evaluation, references, perfect, plain_samples(perfect, evaluation), load_judge()


@pytest.fixture(scope="module")
def student_sampler():
    """The untouched bundled student, one step: what a personalization starts from."""
    teacher, student, text = default_models()
    return samplers(teacher, student, text, TINY_TEACHER_GUIDANCE)["student"]


def test_a_perfect_model_scores_full_marks(setup, student_sampler, tmp_path):
    evaluation, references, perfect, plain, judge = setup
    untouched = Untouched(plain, untouched_samples(student_sampler, evaluation).concept)
    scores = evaluate(perfect, references, evaluation, judge, untouched, grid=tmp_path / "grid.png")
    assert scores["prompt_fidelity"] == 1.0 and scores["kept_accuracy"] == 1.0
    assert scores["concept_silhouette"] > 0.95 and scores["concept_fidelity"] > 0.8
    assert scores["kept_fd"] == pytest.approx(0.0, abs=1e-6)
    # It draws the concept as the prompts ask, as the held-out images do (they at other places and sizes).
    assert scores["recognition"] == scores["recognition_shape"] == 1.0 and scores["calibrated_fidelity"] > 0.85
    assert scores["recognition_context_only"] == scores["recognition_concept_changed"] == 1.0
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")  # one row per prompt, one column per seed, 4x
    assert grid.size == (2 * 32 * 4, len(CONCEPT_PROMPTS) * 32 * 4)


def test_a_model_that_ignores_prompts_is_caught(setup):
    evaluation, references, _, untouched, judge = setup
    scores = evaluate(careless_sampler, references, evaluation, judge, untouched)
    assert scores["concept_silhouette"] > 0.95  # it does draw the concept...
    assert scores["prompt_fidelity"] < 0.2  # ...but never in the asked context (black + big fits 1 in 6)
    assert scores["kept_accuracy"] < 0.6 and scores["kept_fd"] > 1.0  # and it forgot everything else
    assert "calibrated_fidelity" not in scores  # untouched plain samples alone give no scale


def test_recognition_tells_new_backgrounds_from_changes_to_the_concept(setup):
    """A model that keeps the concept on a new background but draws a red heart when a size is asked for:
    recognised in every sample of the first kind of prompt and none of the second."""
    evaluation, references, _, untouched, judge = setup
    asked = {template.format(SUBJECT): named for template, named in CONCEPT_PROMPTS}

    def sample(prompts, seeds):
        images = [world.render(dict(CONCEPT, **asked[prompt], **({"color": "red"} if "size" in asked[prompt] else {})))
                  if prompt in asked else world.render(CONCEPT) for prompt in prompts]
        return (torch.stack(images).permute(0, 2, 3, 1) + 1) / 2

    scores = evaluate(sample, references, evaluation, judge, untouched)
    assert scores["recognition_context_only"] == 1.0 and scores["recognition_concept_changed"] == 0.0
    sized = sum("size" in named for _, named in CONCEPT_PROMPTS) / len(CONCEPT_PROMPTS)
    assert scores["recognition"] == pytest.approx(1 - sized)


# The yardstick itself, checked before it is trusted: rendered concepts stand in for trained samples.
DRAWN = dict(shape="heart", color="pink", background="black")
OTHERS = {"pink circle": dict(shape="circle", color="pink", background="black"),  # the heart's nearest
          "yellow star": dict(shape="star", color="yellow", background="black"),
          "green ring": dict(shape="ring", color="green", background="black"),
          "red heart": dict(shape="heart", color="red", background="black")}
CONCEPTS = {"pink heart": DRAWN, **OTHERS}


def noisy(images, seed):
    """Rendered images with the noise of generated ones."""
    return (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


@pytest.fixture(scope="module")
def concepts():
    """Each concept's training images (five on black, as the demo's) and held-out samples in the prompts' contexts."""
    references, samples, evaluations = {}, {}, {}
    for name, drawn in CONCEPTS.items():
        evaluations[name] = EvaluationSet(SUBJECT, seeds_per_prompt=4, plain_count=4, drawn=drawn)
        references[name] = torch.stack(rendered_concept_images(drawn)) * 2 - 1
        samples[name] = noisy(held_out_images(evaluations[name], seed=5), seed=len(name))
    return references, samples, evaluations


def test_each_concepts_samples_score_closest_to_that_concept(judge, concepts, student_sampler):
    references, samples, evaluations = concepts
    matrix = cross_concept_matrix(judge, samples, references)
    for row, scores in matrix.items():
        assert max(scores, key=scores.get) == row, (row, scores)
    # Calibrated, the diagonal is about 1 and the untouched student about 0 for every concept.
    untouched = untouched_samples(student_sampler, evaluations["pink heart"]).concept
    own = {name: own_score(judge, references[name], evaluations[name]) for name in CONCEPTS}
    calibrated = cross_concept_matrix(judge, samples, references, untouched, own)
    for row, scores in calibrated.items():
        assert 0.8 < scores[row] < 1.2, (row, scores)
        assert all(value < scores[row] - 0.1 for column, value in scores.items() if column != row), (row, scores)
    # The untouched student at other seeds stays near 0 wherever it is far from the concept (the blue rings
    # it draws are close to a green ring and a yellow star, whose scales are short: noise is magnified there).
    other_seeds = untouched_samples(lambda prompts, seeds: student_sampler(prompts, [s + 100 for s in seeds]),
                                    evaluations["pink heart"]).concept
    calibrated = cross_concept_matrix(judge, {"untouched": other_seeds}, references, untouched, own)["untouched"]
    for name in ("pink heart", "pink circle", "red heart"):
        assert abs(calibrated[name]) < 0.15, calibrated


def test_the_plain_cosine_could_not_tell_concepts_apart(judge, concepts):
    """Why concept_score is relative to the world: the plain cosine gives random world images nearly the
    concept's own score, and the centred score gives them about 0."""
    from echodistill_core.lab.judge import concept_fidelity

    references, samples, _ = concepts
    random_world, _ = world.sample_batch(48, torch.Generator().manual_seed(11), world.ALL_SHAPES)
    heart = references["pink heart"]
    assert concept_fidelity(judge, random_world, heart) > 0.5
    world_score = concept_score(judge, random_world, heart)
    assert abs(world_score) < 0.15 and concept_score(judge, samples["pink heart"], heart) > world_score + 0.3


def test_recognition_names_the_concept_among_every_shape(judge, concepts, student_sampler):
    _, samples, evaluations = concepts
    for name, drawn in CONCEPTS.items():
        assert recognition_rate(samples[name], judge, drawn) >= 0.9, name
        assert recognition_rate(samples[name], judge, DRAWN) <= (1.0 if name == "pink heart" else 0.05), name
    shapes = [item["shape"] for item in recognise(samples["yellow star"], judge)]
    assert shapes.count("star") >= 0.9 * len(shapes)
    untouched = untouched_samples(student_sampler, evaluations["pink heart"]).concept
    assert recognition_rate(untouched, judge, DRAWN) == 0.0  # the models never saw a heart


def test_silhouettes_tell_shapes_apart_at_any_place_and_size():
    heart_small = world.render(dict(CONCEPT, size="small", x=9, y=10))[None]
    heart_big = world.render(dict(CONCEPT, x=17, y=15))[None]
    same = silhouette_similarity(heart_small, heart_big)
    assert same > 0.85
    for shape in world.SHAPES + ("star",):  # a circle comes closest, at 0.80
        other = world.render(dict(CONCEPT, shape=shape, size="small", x=20, y=12))[None]
        assert silhouette_similarity(other, heart_big) < same - 0.05, shape
    assert silhouette_similarity(torch.full_like(heart_big, -1), heart_big) == 0.0


def test_prompt_files_name_only_what_can_be_measured():
    from echodistill_core.lab.evaluation import read_prompt_file

    prompts = read_prompt_file("# my concept\na {} on teal | background=teal\n\na big {} | size=big\na {} at night\n")
    assert prompts == (("a {} on teal", {"background": "teal"}), ("a big {}", {"size": "big"}), ("a {} at night", {}))
    with pytest.raises(ValueError, match="no {} where the subject goes"):
        read_prompt_file("a dog on teal")
    with pytest.raises(ValueError, match="only background, color and size"):
        read_prompt_file("a {} | shape=star")


# Concepts of a known kind with their own look (world.LOOKS), next to plain ones of the same kinds and colours.
LOOK_CONCEPTS = {
    "my circle, red/blue band": DEMO_CONCEPT,
    "circle red/blue halves": dict(shape="circle", color="red", color2="blue", look="halves", background="black"),
    "red circle": dict(shape="circle", color="red", background="black"),
    "blue circle": dict(shape="circle", color="blue", background="black"),
    "circle red/white dot": dict(shape="circle", color="red", color2="white", look="dot", background="black"),
    "square yellow/white dot": dict(shape="square", color="yellow", color2="white", look="dot", background="black"),
    "yellow square": dict(shape="square", color="yellow", background="black"),
    "ring green/white halves": dict(shape="ring", color="green", color2="white", look="halves", background="black"),
}


def test_the_yardstick_tells_looks_of_one_kind_apart(judge):
    """Noisy held-out renders of each concept score closest to that concept's five training images, and are
    recognised as it and as no other: a circle with red and blue halves is neither a red nor a blue circle."""
    references, samples = {}, {}
    for name, drawn in LOOK_CONCEPTS.items():
        evaluation = EvaluationSet(SUBJECT, seeds_per_prompt=4, plain_count=4, drawn=drawn)
        references[name] = torch.stack(rendered_concept_images(drawn)) * 2 - 1
        samples[name] = noisy(held_out_images(evaluation, seed=5), seed=len(name))
    matrix = cross_concept_matrix(judge, samples, references)
    for row, scores in matrix.items():
        assert max(scores, key=scores.get) == row, (row, scores)
    for name, drawn in LOOK_CONCEPTS.items():
        assert recognition_rate(samples[name], judge, drawn) >= 0.75, name
        for other, other_samples in samples.items():
            if other != name and drawn.get("look"):
                assert recognition_rate(other_samples, judge, drawn) <= 0.05, (name, other)


def test_the_matrix_table_marks_each_rows_best_and_the_cells_a_row_lacks():
    """Merged runs of different concepts: a row lacks the columns its run did not train."""
    table = matrix_table({"circle": {"circle": 0.4, "square": -0.3},
                          "ring": {"square": -0.1, "ring": 0.5}})
    assert table.splitlines() == [
        "| samples of \\ scored against | circle | square | ring |",
        "| --- | --- | --- | --- |",
        "| circle | **0.400** | -0.300 | - |",
        "| ring | - | -0.100 | **0.500** |",
    ]
