"""CLIP's tokenizer, built offline from the vendored BPE merges file.

Stable Diffusion's text encoders all use OpenAI CLIP's byte-level BPE (49,408 tokens, BOS 49406,
EOS 49407). The merges ship in `assets/clip/` (MIT, see its NOTICE), so no hub is ever asked.
Keeping only the first `num_merges` merges gives a small tokenizer whose ids agree with full CLIP on
every token it knows, which is what the tiny bundled models use.
"""

from __future__ import annotations

import gzip
import inspect
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizerFast

MERGES_FILE = Path(__file__).parent / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
FULL_NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of the file: 48,894
MIN_REAL_VOCAB = 500  # a folder without tokenizer files loads as a silent 2-token tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map of the 256 bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


@lru_cache(maxsize=1)
def _all_merges() -> tuple[tuple[str, str], ...]:
    with gzip.open(MERGES_FILE, "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")[1 : FULL_NUM_MERGES + 1]
    return tuple(tuple(line.split()) for line in lines)


def build_clip_tokenizer(num_merges: int | None = None, pad_token: str = "<|endoftext|>") -> CLIPTokenizerFast:
    """OpenAI CLIP's tokenizer with its first `num_merges` merges (all of them when None).

    `pad_token` is "<|endoftext|>" for SD 1.x and "!" for the SD 2.x family (OpenCLIP's padding).
    The tokenizers-backed ("fast") class on every transformers version: transformers 5 builds it from the
    vocabulary and merges themselves, transformers 4 only from the two files, written to a temporary folder.
    """
    merges = list(_all_merges()[:num_merges])
    symbols = list(_bytes_to_unicode().values())
    symbols += [symbol + "</w>" for symbol in symbols]
    symbols += ["".join(merge) for merge in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    options = dict(pad_token=pad_token, model_max_length=77)
    if "vocab" in inspect.signature(CLIPTokenizerFast.__init__).parameters:  # transformers 5
        return CLIPTokenizerFast(vocab=vocab, merges=merges, **options)
    with tempfile.TemporaryDirectory(prefix="echodistill-clip-") as folder:  # transformers 4
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return CLIPTokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file), **options)


def check_tokenizer(tokenizer, source: str) -> None:
    """Refuse the degenerate tokenizer that `from_pretrained` returns for a folder without files."""
    if len(tokenizer) < MIN_REAL_VOCAB:
        raise ValueError(
            f"the tokenizer from {source} has only {len(tokenizer)} tokens, so its files are missing or "
            "broken; put CLIP's tokenizer files (vocab.json, merges.txt or tokenizer.json) in its "
            "tokenizer/ folder"
        )


# A tokenizer folder both transformers 4 and 5 read: transformers 5 writes only tokenizer.json, which the slow
# CLIPTokenizer of transformers 4 cannot read (and tokenizers before 0.20 cannot parse its pair-list merges), so
# the folder also carries CLIP's own two files, vocab.json and merges.txt, which every version reads.
SLOW_FILES = ("vocab.json", "merges.txt")


def _vocab_and_merges(tokenizer_json: Path) -> tuple[dict[str, int], list[str]]:
    """The BPE vocabulary and merges ("a b" lines) of a tokenizers-library file, either merges format."""
    model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    return model["vocab"], merges


def write_slow_files(folder: str | Path) -> None:
    """Add vocab.json and merges.txt, from its tokenizer.json, to a tokenizer folder that lacks them."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in SLOW_FILES) or not (folder / "tokenizer.json").is_file():
        return
    vocab, merges = _vocab_and_merges(folder / "tokenizer.json")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges), encoding="utf-8")


def load_clip_tokenizer(folder: str | Path):
    """CLIP's tokenizer from a folder, on transformers 4 and 5 alike: a folder with only tokenizer.json (as
    transformers 5 writes it) is read on transformers 4 through vocab.json and merges.txt made from it."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    options = dict(local_files_only=True)
    if all((folder / name).is_file() for name in SLOW_FILES) or "vocab" in inspect.signature(
            CLIPTokenizerFast.__init__).parameters or not (folder / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(folder, **options)
    with tempfile.TemporaryDirectory(prefix="echodistill-tokenizer-") as copy:  # transformers 4
        for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            if (folder / name).is_file():
                (Path(copy) / name).write_bytes((folder / name).read_bytes())
        write_slow_files(copy)
        return CLIPTokenizer.from_pretrained(copy, **options)
