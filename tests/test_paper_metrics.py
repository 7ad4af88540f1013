"""The paper's figures (CLIP-I, DINO, CLIP-T) from networks saved in the layouts users have them in.

Real CLIP and DINOv2 weights cannot be downloaded here: tiny random models built from configs stand in,
saved as transformers folders (config.json, model.safetensors) and as OpenCLIP files, as users keep them.
"""

import pytest
import torch
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModelWithProjection,
                          Dinov2Config, Dinov2Model)

from echodistill_core import text_networks
from echodistill_core.lab.demo import rendered_concept_images
from echodistill_core.families import CheckpointError
from echodistill_core.image_networks import bundled_config
from echodistill_core.paper_metrics import (DREAMBENCH_LIVE_PROMPTS, DREAMBENCH_PROMPTS, JudgeImageFeatures,
                                            TeacherImageFeatures, dreambench_prompts, evaluate_concept,
                                            image_similarity, load_judges, read_prompts)
from echodistill_core.lab.judge import load_judge
from echodistill_core.personalization import Personalization
from echodistill_core.text_networks import load_clip_text
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.clip_tokenizer import build_clip_tokenizer
from conftest import SIZE, concept_images, tiny_config
from test_image_networks import open_clip_layout, randomised

MERGES = 1000  # a CLIP tokenizer with its first 1000 merges: 1514 tokens, ids as full CLIP's
TEXT = dict(vocab_size=2 * 256 + MERGES + 2, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, projection_dim=24, hidden_act="gelu",
            bos_token_id=2 * 256 + MERGES, eos_token_id=2 * 256 + MERGES + 1, pad_token_id=2 * 256 + MERGES + 1)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
              patch_size=8, hidden_act="gelu")
PINK_HEART, YELLOW_STAR = (dict(shape="heart", color="pink", background="black"),
                           dict(shape="star", color="yellow", background="black"))


@pytest.fixture(scope="module")
def clip():
    return randomised(CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)))


@pytest.fixture(scope="module")
def files(clip, tmp_path_factory):
    """A whole CLIP and a DINOv2 as transformers folders, and the CLIP as one OpenCLIP file."""
    folder = tmp_path_factory.mktemp("networks")
    clip.save_pretrained(folder / "clip")
    randomised(Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=SIZE, patch_size=8))).save_pretrained(folder / "dinov2")
    save_file({**open_clip_layout(vision_tower(clip)), **open_clip_text_layout(clip)},
              folder / "open_clip_model.safetensors")
    return folder


def vision_tower(clip):
    tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=24))
    tower.load_state_dict({key: value for key, value in clip.state_dict().items()
                           if key.startswith(("vision_model.", "visual_projection."))})
    return tower


def open_clip_text_layout(clip):
    """A transformers CLIP text tower's weights under OpenCLIP's names (written here, apart from the loader)."""
    state, tower = clip.state_dict(), "text_model."
    layout = {"token_embedding.weight": state[tower + "embeddings.token_embedding.weight"],
              "positional_embedding": state[tower + "embeddings.position_embedding.weight"],
              "ln_final.weight": state[tower + "final_layer_norm.weight"],
              "ln_final.bias": state[tower + "final_layer_norm.bias"],
              "text_projection": state["text_projection.weight"].T, "logit_scale": state["logit_scale"]}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for index in range(clip.config.text_config.num_hidden_layers):
        block, layer = f"transformer.resblocks.{index}.", f"{tower}encoder.layers.{index}."
        for kind in ("weight", "bias"):
            layout |= {f"{block}{theirs}.{kind}": state[f"{layer}{ours}.{kind}"] for theirs, ours in names.items()}
            layout[f"{block}attn.in_proj_{kind}"] = torch.cat([state[f"{layer}self_attn.{n}_proj.{kind}"] for n in "qkv"])
    return {key: value.contiguous() for key, value in layout.items()}


def text_embeds(clip, prompts):
    tokens = build_clip_tokenizer(MERGES)(prompts, padding="max_length", max_length=16, truncation=True,
                                          return_tensors="pt")
    with torch.no_grad():
        return clip.get_text_features(input_ids=tokens.input_ids)


PROMPTS = ["a dog on the beach", "a red cup"]


@pytest.mark.parametrize("layout", ["clip", "open_clip_model.safetensors"])
def test_the_text_tower_reads_as_the_model_it_was_saved_from(clip, files, layout):
    config = None if layout == "clip" else CLIPTextConfig(**TEXT)  # a folder carries its config
    tower = load_clip_text(files / layout, config=config)
    expected = text_embeds(clip, PROMPTS)
    expected = getattr(expected, "pooler_output", expected)  # transformers 5 returns an output object
    torch.testing.assert_close(tower(PROMPTS), expected, rtol=1e-4, atol=1e-5)


def test_the_shapes_of_a_clip_text_tower_pick_its_bundled_config():
    """OpenAI's ViT-L/14 text tower, as shapes only (expanded tensors take no memory)."""
    config = bundled_config("clip-text-l-14")
    width = config.hidden_size
    shapes = {"text_model.embeddings.token_embedding.weight": (49408, width),
              "text_model.embeddings.position_embedding.weight": (77, width),
              "text_projection.weight": (768, width),
              **{f"text_model.encoder.layers.{index}.layer_norm1.weight": (width,) for index in range(12)}}
    tower = {key: torch.zeros(1).expand(shape) for key, shape in shapes.items()}
    assert text_networks._identity(tower, "clip-l.safetensors") == text_networks._identity_of(config)
    with pytest.raises(CheckpointError, match="no CLIP text tower"):
        text_networks.text_tower({"visual.conv1.weight": torch.zeros(1)}, "clip_vision_h.safetensors")


def test_image_similarity_ranks_a_concepts_own_images_above_another_concepts():
    """Samples (views the photos do not hold) of the pink heart score closer to the heart's photos than to
    the yellow star's, and the star's to the star's, by the trained network the pack has (the tiny world's
    judge): random stand-ins for CLIP and DINO would rank nothing."""
    concepts = {"heart": PINK_HEART, "star": YELLOW_STAR}
    photos = {name: torch.stack(rendered_concept_images(concept, count=5)) * 2 - 1 for name, concept in concepts.items()}
    samples = {name: torch.stack(rendered_concept_images(concept, count=10)[1::2]) * 2 - 1
               for name, concept in concepts.items()}
    network = JudgeImageFeatures(load_judge())
    for own, other in (("heart", "star"), ("star", "heart")):
        assert (image_similarity(network, samples[own], photos[own])
                > image_similarity(network, samples[own], photos[other]) + 0.1), own


def test_a_concept_is_scored_personalized_and_untouched_with_every_figure(files, one_thread):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    personalization = Personalization.create(tiny_config(), teacher, student, text)
    judges = load_judges(files / "clip", files / "dinov2")
    assert judges.notes == []
    scores = evaluate_concept(teacher, student, text, personalization, concept_images(), judges,
                              prompts=DREAMBENCH_PROMPTS[:2], seeds=(0, 1))
    for model in ("personalized", "untouched"):
        assert set(scores.figures[model]) == {"CLIP-I", "DINO", "CLIP-T"}
        assert all(0 <= value <= 1 for value in scores.figures[model].values())
    table = scores.table()
    assert "| CLIP-T |" in table and "| DINO |" in table
    assert "0.783" not in table  # a tiny random CLIP is not the paper's network: no paper figure beside it
    # the photos on a row, then a row per prompt: two seeds, a gap, two seeds; 16 px enlarged to 128 px
    assert scores.grid.shape == (3 * 128, 5 * 128, 3)


def test_without_networks_the_pack_scores_with_its_own_features(one_thread):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    personalization = Personalization.create(tiny_config(), teacher, student, text)
    scores = evaluate_concept(teacher, student, text, personalization, concept_images(), load_judges(),
                              prompts=DREAMBENCH_PROMPTS[:1], seeds=(0,))
    assert set(scores.figures["personalized"]) == {"teacher-I"}
    assert any("no CLIP-I or CLIP-T" in note for note in scores.notes)
    assert any("not a network of the paper" in note for note in scores.notes)
    assert isinstance(TeacherImageFeatures(teacher, text)(torch.zeros(2, 3, SIZE, SIZE)), torch.Tensor)


def test_dreambench_gives_dogs_and_cats_the_live_subjects_prompts():
    assert dreambench_prompts("Dog") == DREAMBENCH_LIVE_PROMPTS and dreambench_prompts("mug") == DREAMBENCH_PROMPTS
    assert len(DREAMBENCH_PROMPTS) == len(DREAMBENCH_LIVE_PROMPTS) == 25
    assert "a {} wearing a santa hat" in DREAMBENCH_LIVE_PROMPTS
    with pytest.raises(ValueError, match="needs one"):
        read_prompts("a photo of a dog")
