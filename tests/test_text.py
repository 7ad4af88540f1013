"""The offline CLIP tokenizer and the placeholder token."""

import pytest
import torch

from echodistill_core.lab.tiny import tiny_text
from echodistill_core.placeholder_token import PlaceholderToken
from echodistill_core.clip_tokenizer import build_clip_tokenizer, check_tokenizer

# Ids from OpenAI CLIP's tokenizer (the tokenizer of SD 1.x and, with "!" padding, SD 2.x).
CLIP_REFERENCE = {
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
}


def test_full_tokenizer_matches_clip():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    for prompt, ids in CLIP_REFERENCE.items():
        assert tokenizer(prompt).input_ids == ids


@pytest.mark.parametrize("pad_token, pad_id", [("<|endoftext|>", 49407), ("!", 0)])
def test_padding_follows_the_family(pad_token, pad_id):
    """SD 1.x pads with the end token, SD 2.x (OpenCLIP) with "!", id 0, to CLIP's 77 positions."""
    ids = build_clip_tokenizer(pad_token=pad_token)("a photo of a dog", padding="max_length").input_ids
    assert len(ids) == 77 and ids[:7] == CLIP_REFERENCE["a photo of a dog"]
    assert set(ids[7:]) == {pad_id}


def test_small_tokenizer_agrees_with_clip_on_the_words_it_knows():
    small, full = build_clip_tokenizer(1000), build_clip_tokenizer()
    assert len(small) == 1514
    assert small("a photo of").input_ids[1:-1] == full("a photo of").input_ids[1:-1]


def test_degenerate_tokenizer_is_refused():
    tokenizer = build_clip_tokenizer(1000)
    tokenizer_stub = type("Stub", (), {"__len__": lambda self: 2})()
    check_tokenizer(tokenizer, "ok")
    with pytest.raises(ValueError, match="only 2 tokens"):
        check_tokenizer(tokenizer_stub, "models/broken")


def test_placeholder_starts_at_the_mean_of_the_initializer_pieces():
    text = tiny_text()
    pieces = text.tokenizer("hotdog", add_special_tokens=False).input_ids
    assert len(pieces) > 1
    token = PlaceholderToken.create(text, "<v>", "hotdog")
    table = text.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(token.vector.data, table[pieces].mean(0))


def test_only_the_placeholder_row_differs_and_trains():
    text = tiny_text()
    token = PlaceholderToken.create(text, "<v>", "dog")
    table = text.text_encoder.get_input_embeddings().weight
    with token.applied(text):
        with_token = text(["a photo of a <v>"])
        plain = text(["a photo of a dog"])
        (with_token.sum() + plain.sum()).backward()
    assert token.vector.grad is not None and token.vector.grad.abs().sum() > 0
    assert table.grad is None and not table.requires_grad


def test_existing_words_and_bad_tokens_are_refused():
    text = tiny_text()
    with pytest.raises(ValueError, match="already a word"):
        PlaceholderToken.create(text, "photo", "dog")
    with pytest.raises(ValueError, match="without spaces"):
        PlaceholderToken.create(text, "my dog", "dog")
    with pytest.raises(ValueError, match="initializer word is empty"):
        PlaceholderToken.create(text, "<v>", " ")
    with pytest.raises(ValueError, match="class word '<v>' contains the placeholder token"):
        PlaceholderToken.create(text, "<v>", "<v>", "class word")
