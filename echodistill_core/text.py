"""Prompts to text embeddings with the one shared text encoder."""

from __future__ import annotations

import torch


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """[B, tokens, width] hidden states of `prompts`, padded to the tokenizer's model_max_length.

    This is the conditioning every UNet of a pair receives (`encoder_hidden_states`).
    """
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]
