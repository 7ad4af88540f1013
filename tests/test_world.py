"""The tiny world, its judge and metrics."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from echodistill_core.lab import world
from echodistill_core.lab.demo import DEMO_CONCEPT
from echodistill_core.lab.judge import attribute_accuracy, concept_fidelity, frechet_distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rendered():
    return world.sample_batch(96, torch.Generator().manual_seed(7))


def test_sampling_is_seeded_and_in_range():
    image, caption, attributes = world.sample(torch.Generator().manual_seed(3))
    again, _, _ = world.sample(torch.Generator().manual_seed(3))
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert torch.equal(image, again)
    assert caption == world.caption(attributes)
    assert all(attributes[name] in caption for name in world.ATTRIBUTES)


def test_captions_fit_the_tiny_tokenizer():
    from echodistill_core.lab.tiny import tiny_text

    tokenizer = tiny_text().tokenizer
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        text = world.random_caption(world.sample_attributes(generator), tokenizer, generator)
        assert len(tokenizer.tokenize(text)) + 2 <= tokenizer.model_max_length


def test_the_concepts_caption_alternatives_name_each_views_own_size_and_fit_the_tokenizer():
    from echodistill_core.data import caption_alternatives
    from echodistill_core.lab.demo import rendered_concept_captions, rendered_concept_images
    from echodistill_core.lab.tiny import tiny_text

    tokenizer = tiny_text().tokenizer
    views = rendered_concept_images(DEMO_CONCEPT, count=4)
    captions = rendered_concept_captions(DEMO_CONCEPT, "<mine> circle", 4, alternatives=True)
    assert rendered_concept_captions(DEMO_CONCEPT, "<mine> circle", 4) == ["a <mine> circle on black"] * 4
    for view, caption in zip(views, captions):
        alternatives = caption_alternatives(caption)
        assert alternatives[0] == "a <mine> circle on black" and len(alternatives) == 4
        size = world.measure(view[None] * 2 - 1)[0]["size"]  # the size the view is drawn at
        assert f"a {size} <mine> circle on black" in alternatives
        assert all(len(tokenizer.tokenize(text)) + 2 <= tokenizer.model_max_length for text in alternatives)


def test_two_coloured_objects_are_named_in_captions_that_fit_and_drawn_as_named():
    """A share of two-coloured objects for training a world that knows looks: every one named (second colour and
    look word) in a caption that fits, drawn so that its look is read back from the pixels."""
    from echodistill_core.lab.tiny import tiny_text

    tokenizer = tiny_text().tokenizer
    generator = torch.Generator().manual_seed(4)
    attributes = [world.sample_attributes(generator, looks=0.5) for _ in range(200)]
    two_coloured = [item for item in attributes if item.get("look")]
    assert 70 <= len(two_coloured) <= 130
    assert {item["look"] for item in two_coloured} == set(world.LOOKS)
    for item in two_coloured:
        assert item["color2"] != item["color"]
        text = world.random_caption(item, tokenizer, generator)
        assert len(tokenizer.tokenize(text)) + 2 <= tokenizer.model_max_length
        assert f"{item['color']} {item['shape']} " in text and f" {item['color2']} {world.LOOK_WORDS[item['look']]} " in text
    drawn = [world.recognise_concept(world.render(item)[None], item)[0] for item in two_coloured[:30]]
    assert sum(result["look"] for result in drawn) >= 27


def test_a_world_without_looks_draws_as_before():
    """looks=0 consumes no extra randomness: evaluation sets and the bundled models' training data stay the same."""
    first, second = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert [world.sample_attributes(first) for _ in range(20)] == [world.sample_attributes(second, looks=0.0) for _ in range(20)]
    assert not any(world.sample_attributes(first).get("look") for _ in range(50))


def test_novel_shapes_stay_out_of_the_prompts_but_the_judge_knows_them(judge):
    """The models are never asked for a novel shape; the yardstick names them."""
    assert not set(world.NOVEL_SHAPES) & set(world.SHAPES)
    assert set(judge.classes["shape"]) == set(world.ALL_SHAPES)
    generator = torch.Generator().manual_seed(0)
    assert all(world.sample_attributes(generator)["shape"] in world.SHAPES for _ in range(200))
    for shape in world.NOVEL_SHAPES:
        image = world.render(dict(shape=shape, color="red", size="big", background="black"))
        measured = world.measure(image[None])[0]
        assert {key: measured[key] for key in ("background", "color", "size")} == dict(
            background="black", color="red", size="big")
        assert measured["shape"] not in world.NOVEL_SHAPES  # prompt following names training shapes only
        assert world.match_shape(world.object_coverage(image[None])[0], world.ALL_SHAPES) == shape
        assert judge.predict(image[None])[0]["shape"] == shape
        assert judge.predict(image[None], shapes=world.SHAPES)[0]["shape"] in world.SHAPES


def test_the_judge_tells_every_shape_apart(judge):
    """Shape accuracy of the judge and of `recognise` (judge and pixel template agreeing) on noisy renders
    of every shape, novel ones included: a heart is no circle."""
    from echodistill_core.lab.judge import recognise

    images, attributes = world.sample_batch(280, torch.Generator().manual_seed(21), world.ALL_SHAPES)
    images = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    judged = [item["shape"] for item in judge.predict(images)]
    recognised = [item["shape"] for item in recognise(images, judge)]
    truth = [item["shape"] for item in attributes]
    assert sum(a == b for a, b in zip(judged, truth)) / len(truth) >= 0.93
    assert sum(a == b for a, b in zip(recognised, truth)) / len(truth) >= 0.9
    assert not any(a == "heart" and b == "circle" or a == "circle" and b == "heart" for a, b in zip(recognised, truth))


def test_a_blob_is_no_shape():
    """An ellipse is what an undertrained model draws for every shape: it must not score as one."""
    centre = torch.arange(32) + 0.5
    v, u = torch.meshgrid((centre - 16) / 9, (centre - 14) / 5, indexing="ij")
    alpha = (u**2 + v**2 <= 1).float()
    red, black = torch.tensor(world.COLORS["red"]).view(3, 1, 1), torch.tensor(world.BACKGROUNDS["black"]).view(3, 1, 1)
    blob = (black * (1 - alpha) + red * alpha) * 2 - 1
    assert world.measure(blob[None])[0]["shape"] == "unclear"


def test_measurement_is_exact_on_rendered_images(rendered, judge):
    images, attributes = rendered
    accuracy = attribute_accuracy(images, attributes, judge)
    assert accuracy["color"] == accuracy["size"] == accuracy["background"] == 1.0
    assert accuracy["shape"] >= 0.95
    noisy = images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    assert [item["shape"] for item in world.measure(noisy)] == [item["shape"] for item in attributes]


def test_a_wrong_background_is_a_miss(rendered, judge):
    _, attributes = rendered
    wrong = [dict(item, background="gray" if item["background"] != "gray" else "teal") for item in attributes]
    images = torch.stack([world.render(item) for item in wrong])
    accuracy = attribute_accuracy(images, attributes, judge)
    assert accuracy["background"] == 0.0
    assert accuracy["color"] == accuracy["size"] == 1.0


def test_fidelity_and_frechet_distance_on_known_inputs(rendered, judge):
    images, _ = rendered
    assert concept_fidelity(judge, images[:1], images[:1]) == pytest.approx(1.0, abs=1e-5)
    star = world.render(dict(shape="star", color="yellow", size="big", background="teal"))[None]
    circle = world.render(dict(shape="circle", color="yellow", size="big", background="teal"))[None]
    assert concept_fidelity(judge, star, circle) < concept_fidelity(judge, star, star)
    same = frechet_distance(judge, images, images)
    other, _ = world.sample_batch(96, torch.Generator().manual_seed(8))
    noise = torch.rand_like(images) * 2 - 1
    assert same == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(judge, images, other) < frechet_distance(judge, images, noise)


# Concepts of a known kind with their own look: "my circle", the demo's, is red with a blue band across it.
MY_CIRCLE = dict(shape="circle", color="red", color2="blue", look="band", background="black")
OTHER_CIRCLES = {  # the same kind, other looks: none of them is my circle
    "plain red": dict(shape="circle", color="red", background="black"),
    "plain blue": dict(shape="circle", color="blue", background="black"),
    "the colours the other way round": dict(MY_CIRCLE, color="blue", color2="red"),
    "red with a blue dot": dict(MY_CIRCLE, look="dot"),
    "red with a blue lower half": dict(MY_CIRCLE, look="halves"),
    "a square with my circle's band": dict(MY_CIRCLE, shape="square"),
}


def test_my_circle_is_the_demos_concept():
    assert MY_CIRCLE == DEMO_CONCEPT


def views(concept: dict, seed: int, count: int = 24) -> torch.Tensor:
    """Noisy renders of a concept at random places, sizes and backgrounds, as generated samples are."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.stack([world.render(dict(world.sample_attributes(generator), **dict(concept, background=background)))
                          for background in world.BACKGROUNDS for _ in range(count // len(world.BACKGROUNDS))])
    return (images + 0.1 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def test_a_look_puts_the_second_colour_where_it_says():
    red, blue, white = (torch.tensor(world.COLORS[name]) * 2 - 1 for name in ("red", "blue", "white"))
    halves = world.render(dict(MY_CIRCLE, look="halves", size="big"))
    assert torch.allclose(halves[:, 10, 16], red) and torch.allclose(halves[:, 22, 16], blue)
    dot = world.render(dict(MY_CIRCLE, look="dot", color2="white", size="big"))
    assert torch.allclose(dot[:, 16, 16], white) and torch.allclose(dot[:, 16, 9], red)
    band = world.render(dict(MY_CIRCLE, look="band", color2="white", size="big"))
    assert torch.allclose(band[:, 16, 9], white) and torch.allclose(band[:, 9, 16], red)
    # Every look is symmetric left-right: the training augmentation's flip keeps the concept.
    for look in world.LOOKS:
        image = world.render(dict(MY_CIRCLE, look=look, size="big"))
        assert torch.allclose(image, image.flip(-1), atol=1e-6), look
    with pytest.raises(ValueError, match="unknown look"):
        world.render(dict(MY_CIRCLE, look="spots", size="big"))


def test_a_concepts_own_renders_are_recognised_and_other_looks_of_its_kind_are_not():
    """From the pixels alone: the shape at any place and size, and each colour where the look puts it."""
    def rate(images, concept):
        return sum(item["look"] for item in world.recognise_concept(images, concept)) / len(images)

    mine = views(MY_CIRCLE, seed=0)
    assert rate(mine, MY_CIRCLE) >= 0.8
    assert [item["shape"] for item in world.recognise_concept(mine, MY_CIRCLE)].count("circle") >= 0.8 * len(mine)
    for name, other in OTHER_CIRCLES.items():
        assert rate(views(other, seed=1), MY_CIRCLE) <= 0.05, name
    # The other looks are concepts too, each recognised as itself.
    for name, other in OTHER_CIRCLES.items():
        assert rate(views(other, seed=2), other) >= 0.75, name
    # The size and background of a two-coloured object are still read from its pixels.
    measured = world.measure(world.render(dict(MY_CIRCLE, size="small", background="teal"))[None])[0]
    assert (measured["size"], measured["background"]) == ("small", "teal")
