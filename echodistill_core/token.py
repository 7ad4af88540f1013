"""The placeholder token: a new word whose embedding is the only trainable part of the text encoder.

Its row lives in its own parameter, spliced into the frozen token table while `applied`, so no
gradient and no weight decay can reach any other row, by construction.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .models import TextConditioner


class PlaceholderToken(nn.Module):
    def __init__(self, token: str, token_id: int, vector: torch.Tensor):
        super().__init__()
        self.token, self.token_id = token, token_id
        self.vector = nn.Parameter(vector.detach().float().clone())

    @classmethod
    def create(cls, text: TextConditioner, token: str, initializer_word: str) -> "PlaceholderToken":
        """Add `token` to the tokenizer, its vector the mean of `initializer_word`'s embeddings."""
        tokenizer = text.tokenizer
        token = token.strip()
        if not token or " " in token:
            raise ValueError(f"placeholder token {token!r} must be one word without spaces, e.g. <sks>")
        if token not in tokenizer.get_added_vocab():
            if len(tokenizer.tokenize(token)) == 1:
                raise ValueError(
                    f"placeholder token {token!r} is already a word the text encoder knows; choose a new "
                    "one such as <my-dog>"
                )
            tokenizer.add_tokens([token])
        token_id = tokenizer.convert_tokens_to_ids(token)
        pieces = tokenizer(initializer_word, add_special_tokens=False).input_ids
        if not initializer_word.strip() or not pieces:
            raise ValueError("the initializer word is empty; give a word close to the concept, e.g. dog")
        table = text.text_encoder.get_input_embeddings()
        table = table.base if isinstance(table, PlaceholderEmbedding) else table
        if max(pieces) >= table.num_embeddings:
            raise ValueError(
                f"the initializer word {initializer_word!r} contains a placeholder token; give a plain word "
                "close to the concept, e.g. dog"
            )
        vector = table.weight[torch.tensor(pieces, device=table.weight.device)].float().mean(0)
        return cls(token, token_id, vector)

    @contextmanager
    def applied(self, text: TextConditioner) -> Iterator[None]:
        """Encode prompts with this token's trainable vector; restore the frozen table afterwards."""
        encoder = text.text_encoder
        base = encoder.get_input_embeddings()
        if isinstance(base, PlaceholderEmbedding):
            raise RuntimeError("a placeholder token is already applied to this text encoder")
        encoder.set_input_embeddings(PlaceholderEmbedding(base, self))
        try:
            yield
        finally:
            encoder.set_input_embeddings(base)


class PlaceholderEmbedding(nn.Module):
    """The frozen token table, with the placeholder's id looked up in its own vector."""

    def __init__(self, base: nn.Embedding, token: PlaceholderToken):
        super().__init__()
        self.base = base
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
