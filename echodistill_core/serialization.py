"""Nested dicts of tensors and plain values <-> one safetensors file, written atomically.

Tensors become safetensors entries named by their path in the tree; everything else (numbers,
strings, lists, dicts with int or str keys) goes to a JSON skeleton in the file's metadata. Nothing is
ever unpickled. A write goes to a temporary file beside the target and is renamed into place, so no
partial file ever carries the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

TREE_KEY = "echodistill.tree"


class ResultFileError(ValueError):
    """A file that is not a readable EchoDistill file."""


def _flatten(value, path: str, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {"__dict__": [[key, _flatten(item, f"{path}.{key}" if path else str(key), tensors)]
                             for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(item, f"{path}.{index}", tensors) for index, item in enumerate(value)]
    return value


def _unflatten(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict):
        return {key: _unflatten(item, tensors) for key, item in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(item, tensors) for item in value]
    return value


def write_atomically(path: str | Path, write) -> Path:
    """Call `write(temporary_path)`, then rename it to `path`; on failure leave `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, f"could not write {path} ({error.strerror or error}); free some disk "
                                   "space or choose another folder. Nothing was overwritten") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def save_tree(path: str | Path, tree: dict, metadata: dict[str, str] | None = None) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(tree, "", tensors)
    header = {TREE_KEY: json.dumps(skeleton), **(metadata or {})}
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=header))


def load_tree(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path} does not exist")
    if path.suffix != ".safetensors":
        raise ResultFileError(f"{path} is not a .safetensors file; EchoDistill only reads safetensors files")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ResultFileError(f"{path} is corrupt or truncated ({error}); save it again") from error
    if TREE_KEY not in metadata:
        raise ResultFileError(f"{path} is a safetensors file but not one EchoDistill wrote")
    return _unflatten(json.loads(metadata[TREE_KEY]), tensors)
