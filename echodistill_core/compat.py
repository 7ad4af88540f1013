"""Differences between the library versions requirements.txt allows, kept in one place.

transformers 4.56 renamed `from_pretrained`'s `torch_dtype` to `dtype`: older versions hand an unknown `dtype`
to the model's constructor (a TypeError) or ignore it, newer ones warn about `torch_dtype`.
"""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version

_DTYPE_ARGUMENT = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


def transformers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s keyword for the weights' dtype on the installed transformers, e.g. `**transformers_dtype(d)`."""
    return {_DTYPE_ARGUMENT: dtype}
