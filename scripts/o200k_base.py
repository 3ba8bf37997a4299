# Builds assets/tokenizers/o200k_base.json: a `tokenizers` tokenizer equivalent to tiktoken's
# o200k_base (OpenAI's GPT-4o / 4.1 / 5 family), from the ranks that the js-tiktoken npm package
# (MIT) ships in dist/ranks/o200k_base.js. Every merge is recovered by running tiktoken's own BPE
# on each token's bytes with the ranks below it.
#
#   npm pack js-tiktoken@1.0.21 && tar xzf js-tiktoken-1.0.21.tgz
#   python scripts/o200k_base.py package/dist/ranks/o200k_base.js assets/tokenizers/o200k_base.json
import base64, json, re, sys
src = open(sys.argv[1]).read()
obj = json.loads(src[src.index("{"):src.rindex("}") + 1])
ranks = {}
for line in obj["bpe_ranks"].split("\n"):
    if not line:
        continue
    parts = line.split(" ")
    off = int(parts[1])
    for i, t in enumerate(parts[2:]):
        ranks[base64.b64decode(t)] = off + i
print("ranks", len(ranks))

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))
b2u = bytes_to_unicode()
enc = lambda b: "".join(b2u[x] for x in b)

def bpe_parts(token, max_rank):
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]

vocab = {}
merges = []
for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    vocab[enc(token)] = rank
    if len(token) == 1:
        continue
    parts = bpe_parts(token, rank)
    assert len(parts) == 2, (token, parts)
    merges.append(enc(parts[0]) + " " + enc(parts[1]))
added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True} for t, i in obj["special_tokens"].items()]
tok = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": added,
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": obj["pat_str"]}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
              "vocab": vocab, "merges": merges},
}
json.dump(tok, open(sys.argv[2], "w"), ensure_ascii=False, separators=(",", ":"))
print("wrote", sys.argv[2], len(vocab), "tokens", len(merges), "merges")
