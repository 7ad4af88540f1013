"""Nested dicts of tensors and plain values <-> one safetensors file, written atomically.

Tensors become safetensors entries named by their path in the tree; everything else (numbers,
strings, lists, dicts with int or str keys) goes to a JSON skeleton in the file's metadata. Nothing is
ever unpickled. A write goes to a temporary file beside the target and is renamed into place, so no
partial file ever carries the final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

TREE_KEY = "echodistill.tree"
CHECKSUM_KEY = "echodistill.sha256"  # of the skeleton and every tensor's bytes: damage is detected on load


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
    """Call `write(temporary_path)`, then rename it to `path`; on failure leave `path` untouched.

    The file gets the permissions the user's umask gives new files. Temporary files that a killed
    process left beside `path` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        temporary.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or error
        raise OSError(getattr(error, "errno", None) or errno.EIO, f"could not write {path} ({reason}); free some "
                      "disk space or choose another folder. Nothing was overwritten") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _remove_abandoned_partials(path: Path) -> None:
    """Delete `.<name>.<pid>.partial` files beside `path` whose writing process no longer runs."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name.removeprefix(f".{path.name}.").removesuffix(".partial")
        if pid.isdigit() and not _running(int(pid)):
            partial.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tree(path: str | Path, tree: dict, metadata: dict[str, str] | None = None) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(tree, "", tensors)
    text = json.dumps(skeleton)
    header = {TREE_KEY: text, CHECKSUM_KEY: _checksum(text, tensors), **(metadata or {})}
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=header))


def _checksum(skeleton: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(skeleton.encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    if CHECKSUM_KEY in metadata and metadata[CHECKSUM_KEY] != _checksum(metadata[TREE_KEY], tensors):
        raise ResultFileError(f"{path} is damaged (its contents no longer match the checksum written with it); "
                              "use another copy or start fresh")
    return _unflatten(json.loads(metadata[TREE_KEY]), tensors)
