"""Trains the embedded model's BPE vocabulary with `tokenizers` on the generator's text.

A byte-level BPE: the 256 byte symbols are the base alphabet, so every UTF-8 text encodes (bytes are
the fallback) and decodes losslessly. Ids 0-3 are the specials of the byte vocabulary
(`make_tokenizer.py`): BOS and EOS as in DeepSeek-OCR, padding, and `<image>` (config.json
`image_token_id` = 3). Training text is `gen_text.py` dialogue from the TRAIN seeds only, written the
way pages show it (`Speaker: text`), so held-out pages stay unseen.

  python training/make_bpe.py --vocab 4096 --out training/tokenizer-bpe/tokenizer.json
  python training/make_bpe.py --check training/tokenizer-bpe/tokenizer.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_text import TRAIN_SEED, transcript  # noqa: E402
from make_tokenizer import SPECIALS  # noqa: E402


def corpus(transcripts: int, turns: int, first_seed: int = TRAIN_SEED):
    for i in range(transcripts):
        for t in transcript(first_seed + i, turns):
            yield f"{t['role'].capitalize()}: {t['content']}"


def train(vocab: int, transcripts: int, turns: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(transcripts, turns), trainer=trainer)
    return tok


def check(path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    samples = ["", "Hello, world!", "  two  spaces\tand tab\n", "é中文かな한국어 🙂👩‍💻",
               "https://example.org/a?b=c#d", "fn main() { println!(\"{}\", 0x1F); }", "ÿ\x00\x7f"]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == s, (s, tok.decode(ids))
    ids = tok.encode("<image>\nFree OCR.", add_special_tokens=False).ids
    assert ids[0] == 3 and 3 not in ids[1:], ids
    text = "\n".join(corpus(20, 40, first_seed=9_000_000))  # held-out stream
    n = len(tok.encode(text, add_special_tokens=False).ids)
    print(f"{path}: ok ({tok.get_vocab_size()} ids; {len(text.encode()) / n:.2f} bytes per token "
          f"on held-out text)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--transcripts", type=int, default=400)
    ap.add_argument("--turns", type=int, default=60)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--check", type=Path)
    a = ap.parse_args()
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        train(a.vocab, a.transcripts, a.turns).save(str(a.out))
        check(a.out)
    if a.check:
        check(a.check)


if __name__ == "__main__":
    main()
