"""Concept images of any kind, and the Custom Diffusion augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from echodistill_core.data import ConceptDataset, ConceptImageError, augment, read_images, to_tensor


@pytest.mark.parametrize("image", [
    Image.new("RGB", (30, 20), (255, 0, 0)),
    Image.new("L", (20, 30), 255),
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)),  # fully transparent: white
    torch.ones(20, 24, 3),  # ComfyUI IMAGE layout
    torch.full((3, 20, 20), 255, dtype=torch.uint8),
    np.ones((20, 20), dtype=np.float32),
])
def test_images_of_any_mode_become_rgb_in_minus_one_to_one(image):
    tensor = to_tensor(image)
    assert tensor.shape[0] == 3 and tensor.min() >= -1 and tensor.max() <= 1
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        assert torch.allclose(tensor, torch.ones_like(tensor))


@pytest.mark.parametrize("image, message", [
    (torch.ones(3, 4, 4), "at least 8 px"),
    (torch.full((3, 16, 16), float("nan")), "NaN"),
    (torch.ones(2, 16, 16, 5), "expected"),
    ("photo.png", "give PIL images or tensors"),
])
def test_odd_images_are_refused_by_index(image, message):
    with pytest.raises(ConceptImageError, match=message):
        to_tensor(image, index=3)


def test_an_empty_concept_is_refused():
    with pytest.raises(ConceptImageError, match="no concept images"):
        ConceptDataset([], "<v>", "dog", 16)


def test_captions_must_mention_the_token():
    with pytest.raises(ConceptImageError, match="does not mention"):
        ConceptDataset([torch.ones(3, 16, 16)], "<v>", "dog", 16, captions=["a dog"])
    dataset = ConceptDataset([torch.ones(3, 16, 16)], "<v>", "dog", 16, captions=["<v> dog asleep"])
    assert dataset.sample(2, torch.Generator()).prompts == ["<v> dog asleep"] * 2


def test_a_caption_with_alternatives_gives_each_in_turn_and_each_must_mention_the_token():
    captions = ["a <v> dog on grass | a big <v> dog on grass|<v> dog", "a <v> dog asleep"]
    dataset = ConceptDataset([torch.ones(3, 16, 16), torch.zeros(3, 16, 16)], "<v>", "dog", 16, captions=captions,
                             augment=False)
    generator, seen = torch.Generator().manual_seed(0), {0: set(), 1: set()}
    for _ in range(40):
        batch = dataset.sample(4, generator)
        for image, prompt in zip(batch.images, batch.prompts):
            seen[int(image.mean() < 0)].add(prompt)  # the first photo is 1 (white), the second 0 (black): -1
    assert seen == {0: {"a <v> dog on grass", "a big <v> dog on grass", "<v> dog"}, 1: {"a <v> dog asleep"}}
    assert dataset.caption_prompts() == ["a <v> dog on grass", "a big <v> dog on grass", "<v> dog", "a <v> dog asleep"]
    with pytest.raises(ConceptImageError, match=r"caption 0 \('a big dog'\) does not mention the token <v>"):
        ConceptDataset([torch.ones(3, 16, 16)], "<v>", "dog", 16, captions=["a <v> dog | a big dog"])
    with pytest.raises(ConceptImageError, match="has an empty alternative"):
        ConceptDataset([torch.ones(3, 16, 16)], "<v>", "dog", 16, captions=["a <v> dog | "])


def test_augmentation_masks_the_pasted_region_and_edits_the_prompt():
    image = torch.ones(3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        augmented, mask, edit = augment(image, 32, generator)
        assert augmented.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
        # content exactly where the mask is 1; blank canvas (0) elsewhere
        assert torch.equal(augmented[0] != 0, mask[0] == 1)
        coverage = mask.mean().item()
        if coverage == 1.0:
            assert edit in ("zoomed in ", "close up ", "")
        elif coverage < 0.36:
            assert edit in ("far away ", "very small ")
        seen.add(edit)
    assert {"zoomed in ", "close up ", "far away ", "very small "} <= seen


def test_prompts_fill_templates_with_the_subject():
    dataset = ConceptDataset([torch.ones(3, 16, 16)] * 3, "<v>", "mug", 16)
    batch = dataset.sample(8, torch.Generator().manual_seed(1))
    assert batch.images.shape == (8, 3, 16, 16) and batch.masks.shape == (8, 1, 16, 16)
    assert all("<v> mug" in prompt for prompt in batch.prompts)


def test_photos_arrive_upright_in_every_mode_or_are_refused_by_file_name(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    tall = Image.new("RGB", (20, 40), (255, 0, 0))
    tall.paste((0, 0, 255), (0, 0, 20, 10))  # blue on top
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show it rotated 90 degrees clockwise
    tall.save(folder / "a_rotated.jpg", exif=exif, quality=95)
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(folder / "b_grey16.png")  # mid grey, 16 bit
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "c_cmyk.jpg", quality=95)  # red in print colours
    Image.new("P", (16, 16), 0).save(folder / "d_palette.png", transparency=0)  # fully transparent: white
    rotated, grey, cmyk, palette = (to_tensor(image) for image in read_images(folder))
    assert rotated.shape == (3, 20, 40) and rotated[2, :, -5:].mean() > 0.8  # upright: blue now on the right
    assert grey.mean().item() == pytest.approx(0.0, abs=0.01)  # 32768 / 65535, in [-1, 1]
    assert cmyk[0].mean() > 0.8 and cmyk[1:].mean() < -0.8
    assert palette.min().item() == pytest.approx(1.0)

    Image.new("1", (9000, 8000)).save(folder / "e_huge.png")  # 72 MP, small on disk
    with pytest.raises(ConceptImageError, match="e_huge.png is 9000x8000 px, more than 64 MP; resize it"):
        read_images(folder)
    (folder / "e_huge.png").unlink()
    Image.new("RGB", (4, 4)).save(folder / "f_tiny.png")
    with pytest.raises(ConceptImageError, match="f_tiny.png is 4x4 px; concept images need at least 8 px"):
        [to_tensor(image) for image in read_images(folder)]
