"""The placeholder token: a new word whose embedding is the only trainable part of the text encoder.

Its row lives in its own parameter, spliced into the frozen token table while `applied`, so no
gradient and no weight decay can reach any other row, by construction. The word itself lives in the
token's own copy of the tokenizer, swapped in while `applied`: the shared tokenizer and text encoder
are never changed, so a token tried, a run failed or a run cancelled leaves them as they were.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .models import TextConditioner


def check_words(token: str, word: str, word_name: str = "class word") -> None:
    """What can be said of the token and the class (or initializer) word before any model loads."""
    token = token.strip()
    if not token or any(character.isspace() for character in token):
        raise ValueError(f"placeholder token {token!r} must be one word without spaces, e.g. <sks>")
    if not word.strip():
        raise ValueError(f"the {word_name} is empty; give a word close to the concept, e.g. dog")
    if token in word.split():
        raise ValueError(f"the {word_name} {word!r} contains the placeholder token {token}; give a plain word "
                         "for what the concept is, e.g. dog, and a new token such as <my-dog>")


class PlaceholderToken(nn.Module):
    def __init__(self, token: str, token_id: int, vector: torch.Tensor, tokenizer):
        super().__init__()
        self.token, self.token_id = token, token_id
        self.tokenizer = tokenizer  # the shared tokenizer's copy that knows the token
        self.vector = nn.Parameter(vector.detach().float().clone())

    @classmethod
    def create(cls, text: TextConditioner, token: str, initializer_word: str,
               word_name: str = "initializer word") -> "PlaceholderToken":
        """A new word `token` (in a copy of the tokenizer), its vector the mean of `initializer_word`'s embeddings."""
        check_words(token, initializer_word, word_name)
        table, base = _shared(text)
        token = token.strip()
        pieces = base(initializer_word, add_special_tokens=False).input_ids
        if not pieces:
            raise ValueError(f"the {word_name} {initializer_word!r} has no word in it; give a word close to the "
                             "concept, e.g. dog")
        if max(pieces) >= table.num_embeddings:
            raise ValueError(
                f"the {word_name} {initializer_word!r} contains the placeholder token or another new word; "
                f"give a plain word for what the concept is, e.g. dog, and a new token such as <my-dog>"
            )
        if token in base.get_added_vocab():
            tokenizer = base
        elif len(base.tokenize(token)) == 1:
            raise ValueError(
                f"placeholder token {token!r} is already a word the text encoder knows; choose a new "
                "one such as <my-dog>"
            )
        else:
            tokenizer = copy.deepcopy(base)
            tokenizer.add_tokens([token])
        vector = table.weight[torch.tensor(pieces, device=table.weight.device)].float().mean(0)
        return cls(token, tokenizer.convert_tokens_to_ids(token), vector, tokenizer)

    def check_within_window(self, prompt: str) -> None:
        """Refuse a prompt in which this token comes after the text encoder's window, so would be cut off."""
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        window = self.tokenizer.model_max_length
        if self.token_id in ids and ids.index(self.token_id) >= window - 2:  # between the start and end tokens
            raise ValueError(f"in the prompt {prompt!r} the token {self.token} comes after the text encoder's "
                             f"{window}-token window and would be cut off; shorten the prompt or put the token "
                             "earlier")

    @contextmanager
    def applied(self, text: TextConditioner) -> Iterator[None]:
        """Tokenize and encode prompts with this token; put the shared tokenizer and frozen table back afterwards."""
        encoder = text.text_encoder
        base, tokenizer = encoder.get_input_embeddings(), text.tokenizer
        if isinstance(base, PlaceholderEmbedding):
            raise RuntimeError("a placeholder token is already applied to this text encoder")
        encoder.set_input_embeddings(PlaceholderEmbedding(base, self, tokenizer))
        text.tokenizer = self.tokenizer
        try:
            yield
        finally:
            encoder.set_input_embeddings(base)
            text.tokenizer = tokenizer


def _shared(text: TextConditioner) -> tuple[nn.Embedding, object]:
    """The frozen token table and the shared tokenizer, beneath any token applied now."""
    embeddings = text.text_encoder.get_input_embeddings()
    if isinstance(embeddings, PlaceholderEmbedding):
        return embeddings.base, embeddings.base_tokenizer
    return embeddings, text.tokenizer


class PlaceholderEmbedding(nn.Module):
    """The frozen token table, with the placeholder's id looked up in its own vector."""

    def __init__(self, base: nn.Embedding, token: PlaceholderToken, tokenizer=None):
        super().__init__()
        self.base = base
        self.base_tokenizer = tokenizer  # the shared one, while the token's copy is in use
        self._token = [token]  # not a submodule: the token's parameter belongs to its owner

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        token = self._token[0]
        is_token = input_ids == token.token_id
        in_table = input_ids.clamp(max=self.base.num_embeddings - 1).masked_fill(is_token, 0)
        embeddings = self.base(in_table)
        return torch.where(is_token[..., None], token.vector.to(embeddings.dtype), embeddings)
