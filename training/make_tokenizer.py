"""Writes `training/tokenizer/tokenizer.json`: the byte vocabulary of Lethe's embedded model.

Ids (vocab_size 260):
  0  <｜begin▁of▁sentence｜>  BOS (same string and id as DeepSeek-OCR)
  1  <｜end▁of▁sentence｜>    EOS (same string and id as DeepSeek-OCR)
  2  <｜▁pad▁｜>              padding (same string and id as DeepSeek-OCR)
  3  <image>                  image placeholder (config.json `image_token_id` = 3)
  4 + b                       the byte b, for b in 0..=255 (UTF-8 bytes of the text)

It is a byte-level BPE with no merges for the `tokenizers` crate: the ByteLevel pre-tokenizer maps
every byte to one printable character (GPT-2's table), each such character is one token, and the
ByteLevel decoder maps the characters back to bytes. So `encode(text)` is exactly the UTF-8 bytes
plus 4, and `decode` is lossless for any valid UTF-8. Run with `--check` to verify that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"]
BYTE_OFFSET = len(SPECIALS)
VOCAB_SIZE = BYTE_OFFSET + 256
OUT = Path(__file__).resolve().parent / "tokenizer" / "tokenizer.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build() -> dict:
    table = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in range(256):
        vocab[table[b]] = BYTE_OFFSET + b
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def encode(text: str) -> list[int]:
    """The ids the tokenizer gives (without special tokens): UTF-8 bytes + 4."""
    return [BYTE_OFFSET + b for b in text.encode("utf-8")]


def decode(ids: list[int]) -> str:
    return bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", "replace")


def check(path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    samples = ["", "Hello, world!", "  two  spaces\tand tab\n", "é中文かな한국어 🙂👩‍💻",
               "https://example.org/a?b=c#d", "fn main() { println!(\"{}\", 0x1F); }",
               "ÿ\x00\x7f"]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert ids == encode(s), (s, ids)
        assert tok.decode(ids, skip_special_tokens=False) == s, (s, tok.decode(ids))
    ids = tok.encode("<image>\nFree OCR.", add_special_tokens=False).ids
    assert ids == [3] + encode("\nFree OCR."), ids
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == i
    print(f"{path}: ok ({VOCAB_SIZE} ids; specials 0-3, bytes 4-259)")


if __name__ == "__main__":
    if "--check" not in sys.argv:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(build(), ensure_ascii=False, indent=1) + "\n")
    check(OUT)
