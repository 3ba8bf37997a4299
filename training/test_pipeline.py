"""Checks of the training pipeline around the model: tokenizer, text generator, sequences,
resumable training (bit-exact on CPU), export and the part split/join used to carry weights back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export  # noqa: E402
import train  # noqa: E402
from data import BOS, EOS, IGNORE, IMAGE, StandInPages, batch, example  # noqa: E402
from gen_text import HELDOUT_SEED, Gen, transcript  # noqa: E402
from lethe_model import LetheConfig, LetheOCR, decoder_positions  # noqa: E402
from make_tokenizer import OUT as TOKENIZER, VOCAB_SIZE, check, decode, encode  # noqa: E402

torch.set_num_threads(1)
CPU_CFG = HERE / "configs" / "lethe-cpu-test.json"
SMALL_CFG = HERE / "configs" / "lethe-small.json"


def test_tokenizer_file_matches_byte_scheme():
    check(TOKENIZER)  # the `tokenizers` library gives exactly bytes + 4, and decodes losslessly
    s = "Ünïcode 中文 🙂\n\tx"
    assert decode(encode(s)) == s


def test_configs_load_and_fit_the_budget():
    small = LetheConfig.from_json(SMALL_CFG)
    m = LetheOCR(small)
    nbytes = sum(p.numel() for p in m.parameters()) * 4
    assert nbytes <= 40_000_000, nbytes
    for cfg in (small, LetheConfig.from_json(CPU_CFG)):
        assert cfg.vocab_size == VOCAB_SIZE
        assert cfg.image_token_id == IMAGE and cfg.bos_token_id == BOS and cfg.eos_token_id == EOS


def test_gen_text_is_seeded_and_varied():
    a = transcript(5, 40)
    assert a == transcript(5, 40)
    assert a != transcript(HELDOUT_SEED + 5, 40)
    text = "\n".join(t["content"] for t in a)
    assert any("\u4e00" <= c <= "\u9fff" for c in text)  # some CJK
    assert "://" in text and any(c.isdigit() for c in text)
    assert Gen(1).page_text(500) == Gen(1).page_text(500)


def test_gen_text_streams_stay_put_and_everyday_is_its_own_mix():
    """New mixes must not move the older streams: the held-out pages in BENCHMARKS.md are these
    transcripts (hashes of the first held-out transcript, taken before `everyday` existed)."""
    import hashlib

    def digest(kinds: str) -> str:
        return hashlib.sha256(json.dumps(transcript(HELDOUT_SEED, 40, kinds)).encode()).hexdigest()

    assert digest("all").startswith("93c1b418087188db")
    assert digest("ordinary").startswith("0023f54319880306")
    assert digest("no_prior").startswith("b42b68814375869d")
    assert digest("everyday").startswith("1f57a871428b1655")  # taken before `agent` existed
    assert digest("agent").startswith("071eef275779")  # the held-out agent pages of BENCHMARKS.md
    everyday = "\n".join(t["content"] for t in transcript(HELDOUT_SEED, 40, "everyday"))
    assert everyday == "\n".join(t["content"] for t in transcript(HELDOUT_SEED, 40, "everyday"))
    for mark in ("'", '"', "'s ", "≈"):
        assert mark in everyday, mark
    ordinary = "\n".join(t["content"] for t in transcript(HELDOUT_SEED, 40, "ordinary"))
    assert everyday.count("'") > 10 * max(1, ordinary.count("'"))


def test_gen_text_agent_mix_has_the_shapes_of_a_coding_session():
    """`agent` is what the sample transcript looks like and no other mix has: shell commands with
    output, ISO-timestamped log lines with key=value fields, config lines, indented source and
    numbered steps, and numbers and identifiers inside sentences."""
    import re

    agent = "\n".join(t["content"] for t in transcript(HELDOUT_SEED, 60, "agent"))
    assert agent == "\n".join(t["content"] for t in transcript(HELDOUT_SEED, 60, "agent"))
    assert re.search(r"^\$ \S+", agent, re.M), "a shell command"
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO |WARN |ERROR|DEBUG) ", agent, re.M)
    assert re.search(r"\w=\d+", agent), "key=value fields"
    assert re.search(r"^ {8}\S", agent, re.M), "indented source two levels deep"
    assert re.search(r"^2\. \S", agent, re.M), "numbered steps"
    ordinary = "\n".join(t["content"] for t in transcript(HELDOUT_SEED, 60, "ordinary"))
    assert len(re.findall(r"^\d{4}-\d\d-\d\dT", ordinary, re.M)) == 0


def test_gen_text_repeats_mix_puts_the_same_line_at_several_places():
    """`repeats` is the agent mix with what real sessions repeat (the sample transcript's retry
    logs): lines printed again, exactly or with a number changed, and whole turns shown again; the
    agent mix itself stays as it was (its hash is checked above)."""
    import re

    turns = transcript(HELDOUT_SEED, 60, "repeats")
    assert turns == transcript(HELDOUT_SEED, 60, "repeats")
    lines = [ln for t in turns for ln in t["content"].split("\n") if len(ln) > 20]
    exact = len(lines) - len(set(lines))
    assert exact > 30, f"only {exact} lines repeat exactly"
    shapes = [re.sub(r"\d+", "#", ln) for ln in lines]
    varied = (len(shapes) - len(set(shapes))) - exact
    assert varied > 10, f"only {varied} lines repeat with a number changed"
    agent = [ln for t in transcript(HELDOUT_SEED, 60, "agent") for ln in t["content"].split("\n")
             if len(ln) > 20]
    assert len(agent) - len(set(agent)) < exact // 4, "the agent mix hardly repeats; repeats does"
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", "\n".join(lines), re.M)


def test_gen_text_tables_mix_draws_rules_as_long_as_their_columns():
    """`tables` prints tables as tools and assistants do: psql's (a `-+-` rule whose segments
    are their columns' widths plus two, then `(N rows)`), Markdown's, and columns aligned by
    spaces under a rule of one repeated character; every psql rule fits its header exactly. The
    repeats and agent streams are untouched (their hashes and shapes are checked above)."""
    import re

    turns = transcript(HELDOUT_SEED, 80, "tables")
    assert turns == transcript(HELDOUT_SEED, 80, "tables")
    lines = [ln for t in turns for ln in t["content"].split("\n")]
    psql = [i for i, ln in enumerate(lines) if re.fullmatch(r"-+(\+-+)+", ln)]
    assert len(psql) > 5, f"only {len(psql)} psql rules"
    for i in psql:
        header = lines[i - 1]
        assert [len(seg) for seg in lines[i].split("+")][:-1] == [len(seg) for seg in header.split("|")][:-1]
    assert sum(bool(re.fullmatch(r"\(\d+ rows?\)", ln)) for ln in lines) == len(psql)
    assert any(re.fullmatch(r"\|(-+\|)+", ln) for ln in lines), "a Markdown rule"
    runs = [ln for ln in lines if re.fullmatch(r" *([-=])\1{9,}", ln)]
    assert len(runs) > 5 and len({len(r.strip()) for r in runs}) > 3, "rules of many lengths"
    assert any(re.search(r"\S {3,}\S", ln) for ln in lines), "columns padded by spaces"
    assert all(ln == ln.rstrip() for ln in lines), "no invisible trailing spaces"


def test_gen_text_corpus_is_real_text_from_the_standard_library():
    """`corpus` passages are consecutive lines of a standard-library module, word for word, and
    bring words the generator's word list does not have."""
    from gen_text import WORDS, corpus_files, corpus_lines

    g = Gen(HELDOUT_SEED, "corpus")
    passages = [g.corpus() for _ in range(40)]
    again = Gen(HELDOUT_SEED, "corpus")
    assert passages == [again.corpus() for _ in range(40)]
    sources = {f: "\n".join(corpus_lines(f)) for f in corpus_files()}
    for p in passages[:10]:
        first = p.split("\n")[0]
        assert any(first in text for text in sources.values()), first
    words = {w.strip(".,:()'\"").lower() for p in passages for w in p.split()}
    assert len({w for w in words if w.isalpha()} - set(WORDS)) > 200

def test_example_sequence_layout():
    src = StandInPages(3, ["tiny"], (48, 56), max_chars=60)
    page = src.page(0)
    pix, ids, labels = example(page, 4096)
    s = decoder_positions("tiny")
    assert pix.shape == (3, 512, 512)
    assert ids[0] == BOS and ids[1:1 + s] == [IMAGE] * s
    assert decode(ids[1 + s:1 + s + 10]) == "\nFree OCR."
    assert ids[-1] == EOS and decode(ids[1 + s + 10:-1]) == page.text
    for t, y in enumerate(labels):
        if y != IGNORE:
            assert y == ids[t + 1]
    assert sum(y != IGNORE for y in labels) == len(encode(page.text)) + 1


def run_train(out: Path, steps: int, resume: bool) -> None:
    train.main(["--config", str(CPU_CFG), "--out", str(out), "--data", "standin", "--modes", "tiny",
                "--steps", str(steps), "--batch", "1", "--lr", "1e-3", "--warmup", "2",
                "--log-every", "1", "--eval-every", "1000", "--ckpt-every", "2",
                "--standin-font-px", "48,56", "--standin-max-chars", "40"]
               + (["--resume"] if resume else []))


def test_resume_is_bit_exact(tmp_path: Path):
    run_train(tmp_path / "a", 4, False)
    run_train(tmp_path / "b", 2, False)
    run_train(tmp_path / "b", 4, True)
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "log.jsonl").read_text().split("\n") if x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "log.jsonl").read_text().split("\n") if x]
    assert la == lb

    # Export: strict names, the config and tokenizer beside the weights, the check case reproducible.
    out = tmp_path / "model"
    export.main(["--run", str(tmp_path / "a"), "--out", str(out), "--split", "1"])
    for name in ("model.safetensors", "config.json", "tokenizer.json", "TRAINING.md",
                 "check.safetensors", "check.global.png", "SHA256SUMS"):
        assert (out / name).is_file(), name
    cfg = LetheConfig.from_json(out / "config.json")
    m = LetheOCR(cfg)
    m.load_safetensors(out / "model.safetensors", strict=True)
    with safe_open(str(out / "check.safetensors"), "pt") as f:
        ids = f.get_tensor("input_ids").unsqueeze(0)
        ref = f.get_tensor("logits")
    from PIL import Image
    from lethe_model import to_tensor
    pix = to_tensor(Image.open(out / "check.global.png")).unsqueeze(0)
    with torch.no_grad():
        logits = m(ids, pixels=pix)[0]
    assert torch.allclose(logits, ref, atol=1e-5)
    md = (out / "TRAINING.md").read_text()
    assert "steps: 4" in md and "--seed 1" in md and "gen_text.py" in md

    joined = tmp_path / "joined"
    joined.mkdir()
    for p in out.glob("model.safetensors.part-*"):
        (joined / p.name).write_bytes(p.read_bytes())
    (joined / "SHA256SUMS").write_text((out / "SHA256SUMS").read_text())
    export.join(joined)
    assert (joined / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_weights_only_resume(tmp_path: Path):
    """A run carried as resume-lite.pt alone (no optimiser state) continues from its step."""
    import carry

    run_train(tmp_path / "a", 2, False)
    lite = tmp_path / "a" / "resume-lite.pt"
    assert lite.stat().st_size < (tmp_path / "a" / "ckpt.pt").stat().st_size
    parts = carry.split(lite, tmp_path / "carried", 1)
    assert parts
    (tmp_path / "b").mkdir()
    joined = carry.join(tmp_path / "carried", "resume-lite.pt")
    (tmp_path / "b" / "resume-lite.pt").write_bytes(joined.read_bytes())
    run_train(tmp_path / "b", 4, True)
    ck = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert ck["step"] == 4
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "log.jsonl").read_text().split("\n") if x]
    assert steps == [3, 4]


def test_training_fits_a_fixed_batch():
    """The whole graph learns: 30 steps on one batch cut its loss by more than half."""
    torch.manual_seed(0)
    cfg = LetheConfig.from_json(CPU_CFG)
    m = LetheOCR(cfg)
    m.init_weights(0)
    m.train()
    b = batch(StandInPages(11, ["tiny"], (48, 56), max_chars=30), 0, 2, ["tiny"], 4096)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        logits = m(b["input_ids"], pixels=b["pixels"])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 b["labels"].reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        (loss + m.aux_loss()).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_rendered_pages_plumbing(tmp_path: Path):
    """render_pages.py drives a memctl-compatible command and RenderedPages reads its output.

    The command here is a stand-in script with memctl's interface (`render T --mode M --out DIR
    --json --text`); the real `memctl render` must write page-NNNN.txt beside each PNG."""
    import subprocess

    fake = tmp_path / "memctl"
    fake.write_text(f"""#!{sys.executable}
import json, sys
sys.path.insert(0, {str(HERE)!r})
from data import StandInPages
args = sys.argv[1:]
mode, out = args[args.index("--mode") + 1], args[args.index("--out") + 1]
lines = [json.loads(l) for l in open(args[1], encoding="utf-8")]
p = StandInPages(len(lines), [mode], (48, 56), max_chars=50).page(0, mode)
p.image.save(out + "/page-0001.png")
open(out + "/page-0001.txt", "w", encoding="utf-8").write(p.text)
print(json.dumps({{"pages": 1, "mode": mode, "files": ["page-0001.png"]}}))
""")
    fake.chmod(0o755)
    res = subprocess.run([sys.executable, str(HERE / "render_pages.py"), "--memctl", str(fake),
                          "--out", str(tmp_path / "pages"), "--count", "2", "--turns", "3",
                          "--modes", "tiny,small"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pages" / "transcripts" / "train-000001.jsonl").is_file()
    from data import source_from_spec
    src = source_from_spec(f"rendered-tree:{tmp_path / 'pages' / 'train'}", 0)
    assert len(src.items) == 4
    modes = sorted(m for _, _, m in src.items)
    assert modes == ["small", "small", "tiny", "tiny"]
    b = batch(src, 0, 2, ["tiny"], 4096)
    assert b["pixels"].shape[0] == 2


def test_worker_batches_equal_inline_batches():
    a = train.parse_args(["--config", str(CPU_CFG), "--out", "unused", "--steps", "3", "--batch", "1",
                          "--standin-max-chars", "20", "--modes", "tiny", "--workers", "2"])
    src = train.make_source("standin", 1000, a)
    with_workers = list(train.step_batches(src, 1, a, ["tiny"]))
    a.workers = 0
    inline = list(train.step_batches(src, 1, a, ["tiny"]))
    assert len(with_workers) == len(inline) == 2
    for x, y in zip(with_workers, inline):
        assert torch.equal(x["pixels"], y["pixels"]) and torch.equal(x["input_ids"], y["input_ids"])


def test_reader_starts_from_an_exported_model_folder(tmp_path: Path):
    """`reader.py --init MODEL_DIR` reads what ships (f16 model.safetensors) as a stage-2
    checkpoint without heads: every tensor loads strictly, at the f16 value, in f32."""
    import reader
    from safetensors.torch import save_file

    model = LetheOCR(LetheConfig.from_json(CPU_CFG))
    model.init_weights(7)
    shipped = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(shipped, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    for init in (tmp_path, tmp_path / "model.safetensors"):
        ck = reader.load_init(init, torch.device("cpu"))
        assert ck["stage"] == 2 and ck["step"] == 0 and ck["heads"] == {}
        fresh = LetheOCR(LetheConfig.from_json(CPU_CFG))
        fresh.load_state_dict(ck["model"], strict=True)
        for k, v in fresh.state_dict().items():
            assert v.dtype == torch.float32, k
            assert torch.equal(v, shipped[k].to(torch.float32)), k


def test_freeze_model_trains_the_heads_only():
    """`--freeze-model` (warming fresh heads up after `--init MODEL_DIR`) leaves every weight that
    ships untouched by the optimiser."""
    import reader

    cfg = LetheConfig.from_json(CPU_CFG)
    model, heads = LetheOCR(cfg), reader.Heads(cfg, 40)
    params = reader.trainable(model, heads, 2, slot=True, freeze_model=True)
    assert not any(p.requires_grad for p in model.parameters())
    head_ids = {id(p) for p in heads.parameters()}
    assert params and all(id(p) in head_ids for p in params)
    assert len(params) < len(reader.trainable(model, heads, 2, slot=True))


def test_first_lines_cuts_text_boxes_and_pixels_together():
    """`--short-pages` pages: the first `keep` lines' text and boxes stay, every pixel row below
    the last kept glyph turns white, the rows above are untouched, and the input page is left
    as it was."""
    import reader

    lines = ["alpha beta", "gamma", "delta epsilon"]
    boxes = [{"line": i, "ch": ch, "x0": 10.0 * j, "x1": 10.0 * j + 9, "y0": 32.0 * i + 4,
              "y1": 32.0 * i + 27.5}
             for i, line in enumerate(lines) for j, ch in enumerate(line)]
    doc = {"boxes": boxes, "lines": len(lines), "width": 128}
    gen = torch.Generator().manual_seed(5)
    pix = torch.rand(3, 128, 128, generator=gen) * 2 - 1
    before = pix.clone()
    cut, text, cut_doc = reader.first_lines(pix, "\n".join(lines), doc, 2)
    assert text == "alpha beta\ngamma"
    assert cut_doc["lines"] == 2 and cut_doc["width"] == 128
    assert [b["ch"] for b in cut_doc["boxes"]] == list("alpha beta") + list("gamma")
    bottom = 32 * 1 + 28  # ceil of line 1's lowest box edge, 59.5
    assert torch.equal(cut[:, :bottom], before[:, :bottom])
    assert bool((cut[:, bottom:] == 1.0).all())
    assert torch.equal(pix, before)
    assert doc["lines"] == 3 and len(doc["boxes"]) == len(boxes)


def test_grow_decoder_appends_layers_that_change_nothing(tmp_path: Path):
    """`grow_decoder.py`: two appended decoder layers (copies of the last, output projections
    zeroed) leave every logit as it was, load strictly into the deeper config, and still train
    (the zeroed projections get gradients)."""
    import grow_decoder

    torch.manual_seed(0)
    cfg = LetheConfig.from_json(CPU_CFG)
    model = LetheOCR(cfg)
    model.init_weights(3)
    model.eval()
    b = batch(StandInPages(11, ["tiny"], (48, 56), max_chars=30), 0, 2, ["tiny"], 4096)
    with torch.no_grad():
        before = model(b["input_ids"], pixels=b["pixels"])
    torch.save({"model": model.state_dict(), "heads": {}, "stage": 2, "step": 9}, tmp_path / "ck.pt")
    layers = cfg.num_hidden_layers + 2
    grow_decoder.main(["--init", str(tmp_path / "ck.pt"), "--config", str(CPU_CFG), "--layers",
                       str(layers), "--config-out", str(tmp_path / "cfg.json"),
                       "--out", str(tmp_path / "grown.pt")])
    deep_cfg = LetheConfig.from_json(tmp_path / "cfg.json")
    assert deep_cfg.num_hidden_layers == layers
    deep = LetheOCR(deep_cfg)
    grown = torch.load(tmp_path / "grown.pt", weights_only=False)
    assert grown["stage"] == 2 and grown["step"] == 9
    deep.load_state_dict(grown["model"], strict=True)
    deep.eval()
    with torch.no_grad():
        after = deep(b["input_ids"], pixels=b["pixels"])
    assert torch.allclose(after, before, atol=1e-5, rtol=0), float((after - before).abs().max())
    deep.train()
    logits = deep(b["input_ids"], pixels=b["pixels"])
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1),
                                      ignore_index=IGNORE).backward()
    new = deep.model.layers[layers - 1]
    assert float(new.self_attn.o_proj.weight.grad.abs().sum()) > 0


def test_soup_is_the_mean_of_the_runs_and_refuses_runs_that_do_not_match():
    import pytest
    from soup import soup

    torch.manual_seed(3)
    a = {"w": torch.randn(4, 3), "n": torch.tensor([5])}
    b = {"w": torch.randn(4, 3), "n": torch.tensor([5])}
    mean = soup([a, b])
    assert torch.allclose(mean["w"], (a["w"] + b["w"]) / 2)
    assert torch.equal(mean["n"], a["n"])
    with pytest.raises(ValueError, match="shapes differ"):
        soup([a, {"w": torch.randn(3, 4), "n": torch.tensor([5])}])
    with pytest.raises(ValueError, match="non-float"):
        soup([a, {"w": b["w"], "n": torch.tensor([6])}])
    with pytest.raises(ValueError, match="different tensors"):
        soup([a, {**b, "extra": torch.zeros(1)}])
    with pytest.raises(ValueError, match="different tensors"):
        soup([{**a, "extra": torch.zeros(1)}, b])
