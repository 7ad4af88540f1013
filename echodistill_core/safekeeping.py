"""Keeping a run's work: the output checked before any work, states and results written wherever
they can be, and a second Ctrl-C that cannot break a save.

`check_output` runs before models load: the folder must be writable and the name free (an
EchoDistill file there is replaced only when asked; any other file never). `keep` writes a file with
a save function; when the chosen place fails (a full disk, a file-size limit, lost rights) it writes
to the first rescue folder that works and returns where the file went.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from safetensors import SafetensorError, safe_open

from .serialization import TREE_KEY

RESCUE_FOLDERS = (Path.home() / ".cache" / "echodistill" / "rescued", Path(tempfile.gettempdir()) / "echodistill-rescued")


def is_echodistill_file(path: Path) -> bool:
    """A safetensors file that EchoDistill wrote (a result or a training state)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return TREE_KEY in (file.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    """A PNG image (what `sample` writes)."""
    try:
        with open(path, "rb") as file:
            return file.read(8) == PNG_SIGNATURE
    except OSError:
        return False


OUTPUT_KINDS = {".safetensors": ("an EchoDistill file", is_echodistill_file), ".png": ("a PNG image", is_png)}


def check_output(path: Path, *, replace_own: bool, suffix: str = ".safetensors") -> None:
    """Before any work: `path` is a `suffix` name in a writable folder, and free, or (with `replace_own`)
    holds a file of that kind (an EchoDistill file for .safetensors, an image for .png). Raises
    ValueError saying what to choose instead."""
    kind, is_own = OUTPUT_KINDS[suffix]
    if path.suffix.lower() != suffix:
        raise ValueError(f"{path} must end in {suffix} (this command writes {kind})")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name such as {path / ('result' + suffix)}")
    if path.exists():
        if not is_own(path):
            raise ValueError(f"{path} exists and is not {kind}; choose another name (EchoDistill never "
                             "replaces other files)")
        if not replace_own:
            raise ValueError(f"{path} exists; choose another name, or add --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".echodistill-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write in {path.parent} ({error.strerror or error}); choose a folder you can "
                         "write to") from error


def keep(save: Callable[[Path], Path], path: Path, *, stop_on_interrupt: bool = False) -> Path:
    """Write with `save(path)`, Ctrl-C held back until the file is complete; if `path` cannot be
    written, write to the first rescue folder that can be. Returns where the file is. With
    `stop_on_interrupt`, a Ctrl-C pressed during the save is raised once the file is written."""
    with _interrupts_held() as pressed:
        try:
            written = save(path)
        except OSError as first_error:
            written = _rescue(save, path, first_error)
    if pressed and stop_on_interrupt:
        raise KeyboardInterrupt
    return written


def _rescue(save: Callable[[Path], Path], path: Path, first_error: OSError) -> Path:
    for folder in RESCUE_FOLDERS:
        try:
            return save(folder / path.name)
        except OSError:
            continue
    raise first_error


@contextmanager
def _interrupts_held() -> Iterator[list]:
    """Ctrl-C (SIGINT) noted, not raised, for the block; the list holds what was pressed."""
    pressed: list = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
