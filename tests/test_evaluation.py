"""The personalization metrics on samplers whose answers are known: a perfect one, and one that ignores prompts."""

import pytest
import torch

from echodistill_core import world
from echodistill_core.evaluation import CONCEPT_PROMPTS, EvaluationSet, evaluate, plain_samples, silhouette_similarity
from echodistill_core.judge import load_judge

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
    evaluation = EvaluationSet(SUBJECT, seeds_per_prompt=2, plain_count=16)
    references = torch.stack([world.render(dict(CONCEPT, size=size, x=x, y=16))
                              for size, x in (("big", 14), ("small", 20), ("big", 18))])
    perfect = perfect_sampler(evaluation)
    return evaluation, references, perfect, plain_samples(perfect, evaluation), load_judge()


def test_a_perfect_model_scores_full_marks(setup):
    evaluation, references, perfect, untouched, judge = setup
    scores = evaluate(perfect, references, evaluation, judge, untouched)
    assert scores["prompt_fidelity"] == 1.0 and scores["kept_accuracy"] == 1.0
    assert scores["concept_silhouette"] > 0.95 and scores["concept_fidelity"] > 0.8
    assert scores["kept_fd"] == pytest.approx(0.0, abs=1e-6)


def test_a_model_that_ignores_prompts_is_caught(setup):
    evaluation, references, _, untouched, judge = setup
    scores = evaluate(careless_sampler, references, evaluation, judge, untouched)
    assert scores["concept_silhouette"] > 0.95  # it does draw the concept...
    assert scores["prompt_fidelity"] < 0.2  # ...but never in the asked context (black + big fits 1 in 6)
    assert scores["kept_accuracy"] < 0.6 and scores["kept_fd"] > 1.0  # and it forgot everything else


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
    from echodistill_core.evaluation import read_prompt_file

    prompts = read_prompt_file("# my concept\na {} on teal | background=teal\n\na big {} | size=big\na {} at night\n")
    assert prompts == (("a {} on teal", {"background": "teal"}), ("a big {}", {"size": "big"}), ("a {} at night", {}))
    with pytest.raises(ValueError, match="no {} where the subject goes"):
        read_prompt_file("a dog on teal")
    with pytest.raises(ValueError, match="only background, color and size"):
        read_prompt_file("a {} | shape=star")
