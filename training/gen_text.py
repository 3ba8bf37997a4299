"""Seeded generator of varied agent-dialogue text for training and held-out pages.

Everything comes from `random.Random(seed)` and word lists in this file, so a seed always gives the
same transcript on every machine. Training uses seeds from `TRAIN_SEED` upwards; held-out pages use
`HELDOUT_SEED` (a different stream, never seen in training).

Content mix per turn (weights in `KINDS`): prose, chat-style replies, numbers (amounts, dates,
times, versions, phone numbers, percentages), identifiers (snake/camel case, hashes, UUIDs, paths),
URLs, code snippets, CJK (Chinese, Japanese kana, Korean), and text with no language prior
(shuffled words, random identifiers, random character strings) so that what the decoder reads
must come from the pixels.

Usage:
  python training/gen_text.py --seed 1 --turns 200 --format jsonl > t.jsonl   # a transcript
  python training/gen_text.py --seed 1 --turns 5 --format text                # Speaker: text lines
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import string
import sys
import sysconfig
from pathlib import Path

MIXES = ("all", "ordinary", "no_prior", "everyday", "agent", "corpus", "repeats", "tables")
"""The content mixes `Gen(seed, kinds)` knows (its docstring says what each holds)."""
TRAIN_SEED = 1_000
HELDOUT_SEED = 9_000_000

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but have
an they you were her she there been one all we their has would when if so no will more can what
about out up them into do time some could then other than only its over also new after first two
may these like our any me through back most where much should well even just those people way how
work year because many make good each must system memory page model token agent user context data
image read text render store layer tier decay policy budget compress recall window cache request
reply answer question result error value file path line word number list table code function test
build deploy server client network queue worker thread session history summary report note plan
task step check update change fix bug issue review merge branch commit version release schedule
meeting project team budget cost price order invoice customer account payment address city street
morning evening today tomorrow yesterday week month quarter small large quick slow early late
simple clear exact green blue red dark light open close start stop keep move send receive write
find show give take use call run need want know think look feel seem help try ask tell leave
""".split()

NAMES = ["Alice", "Bob", "Chen Wei", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jia",
         "Kofi", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
SPEAKERS = ["User", "Assistant", "Tool", "System"]
TLDS = ["com", "org", "net", "io", "dev", "cn", "de", "co.uk"]
CONTRACTIONS = """
I'm I've I'll I'd you're you've you'll you'd he's she's it's we're we've we'll we'd they're they've
they'll that's there's here's what's who's let's don't doesn't didn't can't couldn't won't wouldn't
isn't aren't wasn't weren't hasn't haven't shouldn't o'clock y'all it'd
""".split()
PLACES = ["Kyoto", "Seoul", "Berlin", "Lagos", "Lima", "Oslo", "Toronto", "Mumbai", "Nairobi",
          "Lisbon", "Denver", "Osaka", "Busan", "Prague", "Austin", "Sydney", "Monday", "Friday",
          "November", "March", "GitHub", "Postgres", "Slack", "Docker", "Python", "Rust"]
TECH_UNITS = ["ms", "s", "MB", "GB", "KiB", "rows", "accounts", "requests", "connections", "tokens",
              "pages", "bytes", "threads", "retries", "minutes", "files"]
UNITS = ["EUR", "USD", "JPY", "KRW", "km", "kg", "MB", "GB", "ms", "%", "°C", "people", "days",
         "hours", "minutes", "pages", "tokens", "requests", "replicas", "€", "$"]
HAN = ("的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后"
       "能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此"
       "心前面又定见只主没公从记忆模型页面文本压缩图像数据系统测试版本问题结果时间服务器客户端网络")
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん" \
       "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
HANGUL = "가나다라마바사아자차카타파하기억메모리페이지문서압축모델데이터시스템서버"
CODE_KW = {
    "python": ["def", "return", "import", "for", "in", "if", "else", "with", "as", "class"],
    "rust": ["fn", "let", "mut", "impl", "pub", "match", "struct", "use", "return", "enum"],
    "js": ["const", "let", "function", "return", "await", "async", "import", "from", "if"],
}


class Gen:
    """Text pieces from one seeded stream."""

    def __init__(self, seed: int, kinds: str = "all"):
        """`kinds`: "all" (the mix of `KINDS`), "ordinary" (everything but no-prior text) or
        "no_prior" (only shuffled words, random identifiers and random strings), or "everyday":
        conversational English as people and assistants write it (contractions and possessives,
        quotations, names and places, typographic punctuation, units), which the other mixes
        hardly have, or "agent": a coding agent's sessions (technical prose with numbers and
        identifiers inside sentences, shell commands and their output, log lines, config files,
        indented source, numbered steps), or "corpus": real text, not generated: passages of the
        Python standard library's modules (English docstrings and comments with the whole
        vocabulary, real code), for the words the generator's small word list never has, or
        "repeats": the agent mix as real sessions repeat it (retries and polling that print the
        same lines again with a counter or a timestamp changed, a command run twice, a file shown
        again), so that a page holds the same line at several places and a reader must follow
        where it is on the page, not only what the text looks like, or "tables": the agent mix with
        tables as tools and assistants print them (psql's, columns aligned by spaces under a rule
        of dashes, Markdown's), so that a reader learns to count runs of one character (rules,
        padding) from the pixels. Each is a separate mix so that the older streams stay as they
        were."""
        self.r = random.Random(seed)
        self.repeats = kinds == "repeats"
        self.history: list[str] = []
        if kinds == "all":
            self.kinds = self.KINDS
        elif kinds == "ordinary":
            self.kinds = [k for k in self.KINDS if k[0] != "no_prior"]
        elif kinds == "no_prior":
            self.kinds = [("no_prior", 1)]
        elif kinds == "everyday":
            self.kinds = [("everyday", 6), ("numbers", 1), ("list", 1), ("cjk", 1)]
        elif kinds == "corpus":
            self.kinds = [("corpus", 1)]
        elif kinds in ("agent", "repeats"):
            self.kinds = [("tech", 6), ("shell", 2), ("logs", 2), ("config", 1), ("source", 2),
                          ("steps", 2), ("everyday", 1)]
        elif kinds == "tables":
            self.kinds = [("table", 5), ("tech", 3), ("shell", 1), ("logs", 1), ("everyday", 1)]
        else:
            raise ValueError(f"kinds must be one of {', '.join(MIXES)}, not {kinds!r}")

    # -- atoms --------------------------------------------------------------------------------
    def word(self) -> str:
        return self.r.choice(WORDS)

    def ident(self) -> str:
        r = self.r
        parts = [self.word() for _ in range(r.randint(1, 3))]
        style = r.randrange(4)
        if style == 0:
            return "_".join(parts)
        if style == 1:
            return parts[0] + "".join(p.capitalize() for p in parts[1:])
        if style == 2:
            return "".join(p.capitalize() for p in parts)
        return "-".join(parts) + str(r.randint(0, 99))

    def rand_ident(self) -> str:
        r = self.r
        alphabet = string.ascii_letters + string.digits + "_"
        return r.choice(string.ascii_letters) + "".join(r.choice(alphabet) for _ in range(r.randint(3, 14)))

    def hexstr(self, n: int) -> str:
        return "".join(self.r.choice("0123456789abcdef") for _ in range(n))

    def uuid(self) -> str:
        h = self.hexstr(32)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def path(self) -> str:
        r = self.r
        parts = [self.ident() for _ in range(r.randint(1, 4))]
        ext = r.choice(["rs", "py", "json", "md", "toml", "log", "csv", "png", "txt"])
        root = r.choice(["/home/agent/", "./", "src/", "/var/lib/lethe/", "C:\\Users\\dev\\", ""])
        sep = "\\" if root.startswith("C:") else "/"
        return root + sep.join(parts) + "." + ext

    def url(self) -> str:
        r = self.r
        host = ".".join([self.ident().replace("_", "-").lower() for _ in range(r.randint(1, 2))])
        u = f"{r.choice(['https', 'http'])}://{r.choice(['', 'www.', 'api.', 'docs.'])}{host}.{r.choice(TLDS)}"
        for _ in range(r.randint(0, 3)):
            u += "/" + r.choice([self.word(), self.ident(), str(r.randint(1, 9999))])
        if r.random() < 0.4:
            u += f"?{self.word()}={r.choice([self.word(), str(r.randint(0, 10**6))])}"
            if r.random() < 0.5:
                u += f"&{self.word()}={self.hexstr(r.randint(4, 10))}"
        if r.random() < 0.15:
            u += "#" + self.word()
        return u

    def number(self) -> str:
        r = self.r
        k = r.randrange(10)
        if k == 0:
            return f"{r.randint(0, 10**r.randint(1, 9)):,}"
        if k == 1:
            return f"{r.uniform(-1000, 100000):.{r.randint(1, 4)}f}"
        if k == 2:
            return f"{r.randint(1990, 2031)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if k == 3:
            return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
        if k == 4:
            return f"v{r.randint(0, 12)}.{r.randint(0, 40)}.{r.randint(0, 200)}"
        if k == 5:
            return f"+{r.randint(1, 99)} {r.randint(100, 999)} {r.randint(100, 999)} {r.randint(1000, 9999)}"
        if k == 6:
            return f"{r.uniform(0, 100):.{r.randint(0, 2)}f}%"
        if k == 7:
            return f"{r.choice(['$', '€', '¥', '£'])}{r.uniform(0, 50000):,.2f}"
        if k == 8:
            return f"0x{self.hexstr(r.choice([4, 8, 16])).upper() if r.random() < 0.3 else self.hexstr(8)}"
        return str(r.randint(0, 10**r.randint(1, 12)))

    def cjk(self) -> str:
        r = self.r
        k = r.randrange(3)
        n = r.randint(4, 30)
        if k == 0:
            s = "".join(r.choice(HAN) for _ in range(n))
            return s + r.choice(["。", "，", "！", "？", ""])
        if k == 1:
            return "".join(r.choice(KANA + HAN[:40]) for _ in range(n)) + r.choice(["。", ""])
        return " ".join("".join(r.choice(HANGUL) for _ in range(r.randint(2, 5))) for _ in range(n // 4 + 1))

    # -- larger pieces ------------------------------------------------------------------------
    def draw_words(self, lo: int, hi: int, table) -> list[str]:
        """`lo..=hi` words; each draws x in [0, 1) and takes the first `(limit, make)` of `table`
        with x < limit, else a plain word (one `random()` per word, then what `make` draws)."""
        r = self.r
        words = []
        for _ in range(r.randint(lo, hi)):
            x = r.random()
            make = next((make for limit, make in table if x < limit), self.word)
            words.append(make())
        return words

    def sentence(self) -> str:
        r = self.r
        words = self.draw_words(4, 18, [(0.06, self.number), (0.10, lambda: f"`{self.ident()}`"),
                                        (0.12, lambda: r.choice(NAMES))])
        if r.random() < 0.15:
            i = r.randint(1, len(words) - 1)
            words.insert(i, "(" + self.word() + ")")
        s = " ".join(words)
        s = s[0].upper() + s[1:]
        return s + r.choice([".", ".", ".", "?", "!", ":", ";"])

    def prose(self) -> str:
        return " ".join(self.sentence() for _ in range(self.r.randint(1, 5)))

    def code(self) -> str:
        r = self.r
        lang = r.choice(list(CODE_KW))
        name, arg, var = self.ident(), self.ident(), self.ident()
        n = self.number()
        if lang == "python":
            lines = [f"def {name}({arg}, limit={r.randint(1, 512)}):",
                     f"    {var} = [x for x in {arg} if x > {n}]",
                     f"    return {var}[:limit]  # {self.word()}"]
        elif lang == "rust":
            lines = [f"pub fn {name}({arg}: &[u32]) -> Result<usize> {{",
                     f"    let {var} = {arg}.iter().filter(|x| **x > {r.randint(0, 999)}).count();",
                     f"    Ok({var}) // {self.word()}", "}"]
        else:
            lines = [f"const {var} = await fetch(\"{self.url()}\");",
                     f"if ({var}.status !== {r.choice([200, 201, 404, 500])}) {{ throw new Error(\"{self.word()}\"); }}"]
        if r.random() < 0.5:
            lines.append(f"$ {r.choice(['cargo test -p', 'python -m', 'npm run', 'git checkout'])} {self.ident()}")
        return "\n".join(lines)

    def no_prior(self) -> str:
        r = self.r
        k = r.randrange(3)
        if k == 0:
            ws = [self.word() for _ in range(r.randint(6, 30))]
            r.shuffle(ws)
            return " ".join(ws)
        if k == 1:
            return " ".join(r.choice([self.rand_ident(), self.hexstr(r.randint(6, 16)), self.uuid(),
                                      self.rand_ident().upper()]) for _ in range(r.randint(3, 12)))
        alphabet = string.ascii_letters + string.digits + string.punctuation
        return " ".join("".join(r.choice(alphabet) for _ in range(r.randint(2, 10)))
                        for _ in range(r.randint(3, 10)))

    def identifiers(self) -> str:
        r = self.r
        items = [r.choice([self.ident(), self.path(), self.uuid(), self.hexstr(r.choice([7, 12, 40]))])
                 for _ in range(r.randint(1, 5))]
        lead = r.choice(["See", "Updated", "Check", "Found in", "Renamed to", "Key:", "ID"])
        return f"{lead} " + ", ".join(items) + r.choice([".", "", ";"])

    def numbers(self) -> str:
        r = self.r
        parts = [f"{self.word()} {self.number()}" for _ in range(r.randint(2, 6))]
        return r.choice(["Totals: ", "Measured ", "", "At "]) + ", ".join(parts) + "."

    def urls(self) -> str:
        return " ".join([self.r.choice(["Docs at", "See", "Link:", "Fetched", "Moved to"]), self.url()]
                        + ([self.sentence()] if self.r.random() < 0.5 else []))

    def everyday_sentence(self) -> str:
        r = self.r
        words = self.draw_words(5, 20, [
            (0.14, lambda: r.choice(CONTRACTIONS)),
            (0.20, lambda: r.choice(NAMES + PLACES) + r.choice(["'s", "'s", "’s"])),
            (0.30, lambda: r.choice(NAMES + PLACES)),
            (0.35, lambda: r.choice(["about", "roughly", "nearly", "≈", "~"]) + " " + self.quantity()),
            (0.37, lambda: r.choice(["—", "–", "…", "·", "/", "&", "+"]))])
        if r.random() < 0.25:
            i = r.randint(0, len(words) - 1)
            open_q, close_q = r.choice([('"', '"'), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’")])
            words[i] = f"{open_q}{words[i]} {self.word()}{close_q}"
        if r.random() < 0.12:
            i = r.randint(1, len(words) - 1)
            words.insert(i, "(" + " ".join(self.word() for _ in range(r.randint(1, 4))) + ")")
        text = " ".join(words)
        text = text[0].upper() + text[1:]
        return text + r.choice([".", ".", ".", "?", "!", ",", "...", ":", "?!"])

    def quantity(self) -> str:
        r = self.r
        n = r.choice([f"{r.randint(1, 99)}", f"{r.randint(1, 9)},{r.randint(0, 999):03d}",
                      f"{r.randint(0, 99)}.{r.randint(0, 99):02d}"])
        return f"{n} {r.choice(UNITS)}"

    def everyday(self) -> str:
        return " ".join(self.everyday_sentence() for _ in range(self.r.randint(1, 5)))

    # -- a coding agent's sessions (kinds="agent") -------------------------------------------
    def tech_atom(self) -> str:
        """A number, identifier or measurement as it sits inside technical prose."""
        r = self.r
        k = r.randrange(9)
        if k == 0:
            return f"{self.ident()}={r.choice([str(r.randint(0, 99999)), self.word(), self.hexstr(7)])}"
        if k == 1:
            return f"{r.choice([r.randint(1, 999), f'{r.randint(1, 99)},{r.randint(0, 999):03d}'])} " \
                   f"{r.choice(TECH_UNITS)}"
        if k == 2:
            return r.choice(["commit ", "hash ", "build ", ""]) + self.hexstr(r.choice([7, 8, 12]))
        if k == 3:
            return self.path()
        if k == 4:
            return f"{self.ident()}::{self.ident()}" + r.choice(["()", "", "::new"])
        if k == 5:
            return f"{r.choice(['port', 'PR', 'issue', 'line', 'status'])} {r.randint(1, 65535)}"
        if k == 6:
            return r.choice(["/v1/", "/api/", "/"]) + "/".join(self.word() for _ in range(r.randint(1, 3)))
        if k == 7:
            return self.number()
        return f'"{self.ident()}"'

    def tech_sentence(self) -> str:
        r = self.r
        words = self.draw_words(6, 24, [(0.16, self.tech_atom), (0.22, self.ident),
                                        (0.27, lambda: r.choice(CONTRACTIONS)), (0.29, lambda: r.choice(NAMES))])
        if r.random() < 0.2:
            i = r.randint(1, len(words) - 1)
            words.insert(i, "(" + " ".join(self.word() for _ in range(r.randint(1, 3))) + ")")
        if r.random() < 0.15:
            words[r.randint(0, len(words) - 1)] += ","
        text = " ".join(words)
        return text[0].upper() + text[1:] + r.choice([".", ".", ".", "?", ":", ", so", "."])

    def tech(self) -> str:
        return " ".join(self.tech_sentence() for _ in range(self.r.randint(1, 5)))

    def timestamp(self) -> str:
        r = self.r
        return (f"{r.randint(2019, 2031)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T"
                f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
                f"{r.randint(0, 999):03d}Z")

    def log_line(self) -> str:
        r = self.r
        level = r.choice(["INFO ", "WARN ", "ERROR", "DEBUG", "INFO "])
        fields = " ".join(f"{self.ident().replace('-', '_')}={r.choice([str(r.randint(0, 99999)), self.word(), self.hexstr(8)])}"
                          for _ in range(r.randint(0, 4)))
        msg = " ".join(self.word() for _ in range(r.randint(2, 7)))
        return f"{self.timestamp()} {level} {self.ident().replace('-', '_')}::{self.word()}: {msg} {fields}".rstrip()

    def logs(self) -> str:
        return "\n".join(self.log_line() for _ in range(self.r.randint(2, 8)))

    def shell(self) -> str:
        r = self.r
        cmd = r.choice([
            f"kubectl -n {self.word()} logs deploy/{self.ident()} --since={r.randint(1, 48)}h | grep -E \"WARN|ERROR\"",
            f"cargo test -p {self.ident()} -- --nocapture",
            f"git log --oneline -n {r.randint(2, 9)}",
            f"rg -n \"{self.ident()}\" {self.path()}",
            f"curl -s {self.url()} | jq .{self.word()}",
            f"psql -c \"SELECT count(*) FROM {self.word()} WHERE {self.word()} > {r.randint(0, 999)};\"",
            f"ls -la {self.path()}",
            f"python -m pytest {self.path()} -k {self.word()} -q"])
        out = []
        for _ in range(r.randint(1, 6)):
            k = r.randrange(4)
            if k == 0:
                out.append(f"{self.hexstr(7)} {self.tech_sentence()}")
            elif k == 1:
                out.append(self.log_line())
            elif k == 2:
                out.append(f"{self.path()}:{r.randint(1, 999)}: {self.word()} {self.ident()}")
            else:
                out.append(f"test {self.ident()}::{self.ident()} ... {r.choice(['ok', 'ok', 'FAILED', 'ignored'])}")
        return "$ " + cmd + "\n" + "\n".join(out)

    def config(self) -> str:
        r = self.r
        lines = []
        if r.random() < 0.5:
            lines.append(f"[{r.choice(['dependencies', 'server', 'pool', 'profile.release', self.word()])}]")
        for _ in range(r.randint(2, 6)):
            v = r.choice([f'"{r.randint(0, 9)}.{r.randint(0, 40)}.{r.randint(0, 20)}"', str(r.randint(0, 10**5)),
                          r.choice(["true", "false"]), f'"{self.url()}"',
                          f'{{ version = "{r.randint(0, 2)}.{r.randint(0, 40)}", features = ["{self.word()}", "{self.word()}"] }}'])
            sep = r.choice([" = ", ": "])
            lines.append(f"{self.ident().replace('-', '_')}{sep}{v}")
        return "\n".join(lines)

    def source(self) -> str:
        r = self.r
        name, arg = self.ident().replace("-", "_"), self.ident().replace("-", "_")
        lines = [r.choice([f"pub async fn {name}({arg}: &{self.ident().title().replace('-', '')}) -> anyhow::Result<u64> {{",
                           f"def {name}({arg}, *, timeout={r.randint(1, 120)}):",
                           f"fn {name}(&mut self, {arg}: usize) -> Option<{r.choice(['u32', 'String', 'Vec<u8>'])}> {{"])]
        depth = 1
        for _ in range(r.randint(3, 10)):
            var = self.ident().replace("-", "_")
            stmt = r.choice([f"let {var} = {arg}.{self.word()}({r.randint(0, 500)}).await?;",
                             f"for {var} in {arg}.chunks({r.randint(2, 512)}) {{",
                             f"{var} += {self.word()}(&mut {arg}, {r.randint(0, 99)})?;",
                             f"if {var} > {r.randint(0, 9999)}:",
                             f"return Ok({var}) // {self.word()} {self.word()}",
                             f"{var} = self.{self.word()}.get(\"{self.word()}\")"])
            lines.append("    " * depth + stmt)
            if stmt.endswith("{") or stmt.endswith(":"):
                depth = min(depth + 1, 4)
            elif depth > 1 and r.random() < 0.3:
                depth -= 1
                lines.append("    " * depth + "}")
        return "\n".join(lines)

    def corpus(self) -> str:
        """3-14 consecutive lines of one module of the running Python's standard library (test
        suites and vendored packages left out); runs of blank lines become one."""
        r = self.r
        files = corpus_files()
        for _ in range(20):
            lines = corpus_lines(files[r.randrange(len(files))])
            if len(lines) >= 3:
                break
        start = r.randrange(max(1, len(lines) - 3))
        out: list[str] = []
        for line in lines[start:start + r.randint(3, 14)]:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip("\n") or self.tech()

    def table_cell(self, k: int) -> str:
        """One cell of a table's column of kind `k` (0-7)."""
        r = self.r
        if k == 0:
            return str(r.randint(0, 10 ** r.randint(1, 6)))
        if k == 1:
            return self.number()
        if k == 2:
            return self.hexstr(r.choice([7, 8, 12]))
        if k == 3:
            return " ".join(self.word() for _ in range(r.randint(2, 4)))
        if k == 4:
            return self.timestamp()[:r.choice([10, 19, 23])].replace("T", " ")
        if k == 5:
            return r.choice(["", "-", "t", "f", "ok", "idle", "active", "n/a"])
        return self.ident().replace("-", "_") if k == 6 else self.word()

    def table(self) -> str:
        """A table as a tool or an assistant prints one: psql's (a `-+-` rule under the header,
        `(N rows)`), columns aligned by runs of spaces with a rule of dashes under the header or
        above a total, or Markdown's; numbers right-aligned, rules as long as the columns."""
        r = self.r
        ncol, nrow = r.choice([2, 2, 3, 3, 4, 5]), r.randint(1, 7)
        head = [r.choice([self.word(), self.ident().replace("-", "_")]) for _ in range(ncol)]
        kinds = [r.randrange(8) for _ in range(ncol)]
        rows = []
        for _ in range(nrow):
            # a column keeps its kind, mostly
            rows.append([self.table_cell(k if r.random() < 0.8 else r.randrange(8)) for k in kinds])
        width = [max(len(head[c]), *(len(row[c]) for row in rows)) for c in range(ncol)]

        def fit(cell: str, c: int) -> str:
            numeric = re.fullmatch(r"[-+~]?[\d.,:% ]+", cell) is not None
            return cell.rjust(width[c]) if numeric else cell.ljust(width[c])
        style = r.randrange(3)
        if style == 0:
            lines = [(" " + " | ".join(h.center(width[c]) for c, h in enumerate(head))).rstrip(),
                     "+".join("-" * (w + 2) for w in width)]
            lines += [(" " + " | ".join(fit(v, c) for c, v in enumerate(row))).rstrip() for row in rows]
            lines.append(f"({nrow} row{'s' if nrow != 1 else ''})")
            return "\n".join(lines)
        if style == 1:
            indent, gap = " " * r.choice([0, 2, 2, 4]), " " * r.randint(2, 8)

            def aligned(cells: list[str]) -> str:
                return (indent + gap.join(fit(v, c) for c, v in enumerate(cells))).rstrip()
            lines = [aligned(row) for row in [head] + rows]
            # dashes twice as often as `=`; as long as the columns, now and then a little off
            rule = indent + r.choice("--=") * (sum(width) + len(gap) * (ncol - 1) + r.choice([0, 0, r.randint(-6, 12)]))
            if r.random() < 0.6:
                lines.insert(1, rule)
            if r.random() < 0.5:
                total = [r.choice(["total", "subtotal", "sum"])] + [""] * (ncol - 2) + [str(r.randint(0, 99999))]
                lines += [rule, aligned(total)]
            return "\n".join(lines)
        lines = ["| " + " | ".join(fit(h, c) for c, h in enumerate(head)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in width) + "|"]
        lines += ["| " + " | ".join(fit(v, c) for c, v in enumerate(row)) + " |" for row in rows]
        return "\n".join(lines)

    def steps(self) -> str:
        r = self.r
        return "\n".join(f"{i}. {self.tech_sentence()}" for i in range(1, r.randint(3, 6)))

    KINDS = [("prose", 30), ("code", 10), ("numbers", 10), ("identifiers", 10), ("urls", 8),
             ("cjk", 8), ("no_prior", 16), ("list", 8)]

    def bullet_list(self) -> str:
        r = self.r
        mark = r.choice(["-", "*", "1."])
        return "\n".join(f"{mark} {r.choice([self.sentence(), self.identifiers(), self.numbers()])}"
                         for _ in range(r.randint(2, 5)))

    def piece(self) -> str:
        r = self.r
        kinds, weights = zip(*self.kinds)
        k = r.choices(kinds, weights)[0]
        return {"prose": self.prose, "code": self.code, "numbers": self.numbers,
                "identifiers": self.identifiers, "urls": self.urls, "cjk": self.cjk,
                "no_prior": self.no_prior, "list": self.bullet_list, "everyday": self.everyday,
                "tech": self.tech, "shell": self.shell, "logs": self.logs, "config": self.config,
                "source": self.source, "steps": self.steps, "corpus": self.corpus,
                "table": self.table}[k]()

    def vary(self, text: str) -> str:
        """`text` again as a rerun prints it: each run of digits kept (most), counted up by one or
        redrawn at its length; a third of the time exactly the same."""
        r = self.r
        if r.random() < 0.33:
            return text

        def one(m: re.Match) -> str:
            k = r.random()
            if k < 0.7:
                return m.group(0)
            if k < 0.85:
                return str(int(m.group(0)) + 1).zfill(len(m.group(0)))
            return "".join(r.choice(string.digits) for _ in m.group(0))
        return re.sub(r"\d+", one, text)

    def repeated(self) -> str:
        """A block of 1-4 lines printed 2-4 times, each time through `vary`, sometimes with a
        line between (a retry's `sleeping 2s`, a prompt)."""
        r = self.r
        lines = [ln for ln in r.choice([self.logs, self.shell, self.tech, self.source, self.config])()
                 .split("\n") if ln.strip()]
        start = r.randrange(len(lines))
        block = "\n".join(lines[start:start + r.randint(1, 4)])
        between = r.choice(["", "", f"sleeping {r.randint(1, 30)}s", f"attempt {r.randint(1, 9)} failed",
                            f"$ {self.ident()}", "..."])
        out = [block]
        for _ in range(r.randint(1, 3)):
            if between:
                out.append(self.vary(between))
            out.append(self.vary(block))
        return "\n".join(out)

    def turn(self) -> dict:
        r = self.r
        role = r.choices(["user", "assistant", "tool", "system"], [40, 45, 10, 5])[0]
        if self.repeats and self.history and r.random() < 0.25:
            content = self.vary(r.choice(self.history[-6:]))  # an earlier turn shown again
        elif self.repeats and r.random() < 0.6:
            content = "\n".join(self.repeated() if r.random() < 0.7 else self.piece()
                                for _ in range(r.randint(1, 3)))
        else:
            content = "\n".join(self.piece() for _ in range(r.randint(1, 4)))
        if self.repeats:
            self.history.append(content)
        return {"role": role, "content": content}

    def page_text(self, max_chars: int) -> str:
        """A block of `Speaker: text` turns of at most about `max_chars` characters."""
        out = []
        total = 0
        while total < max_chars:
            t = self.turn()
            line = f"{t['role'].capitalize()}: {t['content']}"
            out.append(line)
            total += len(line) + 1
        return "\n".join(out)[:max_chars]


@functools.cache
def corpus_files() -> list[str]:
    """The `.py` files of the running Python's standard library, sorted, without test suites,
    site-packages and IDLE; the same list for the same Python version (TRAINING.md records it)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "__pycache__"}
    files = sorted(str(f) for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts))
    if not files:
        raise RuntimeError(f"no standard-library sources under {root}")
    return files


@functools.lru_cache(maxsize=256)
def corpus_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    return [line.rstrip().replace("\t", "    ") for line in text.splitlines()]


def speaker_text(seed: int, turns: int, kinds: str = "all") -> str:
    """The same kind of transcript in memctl's speaker format, as people write one: capitalised
    speakers, a blank line between turns, and a `=== Session N · date time ===` header every 8-20
    turns (drawn in bold at the top of every page of the session)."""
    r = random.Random(seed * 31 + 7)
    out, session, left = [], r.randint(1, 40), 0
    day = (r.randint(2019, 2031), r.randint(1, 12), r.randint(1, 28))
    for t in transcript(seed, turns, kinds):
        if left == 0:
            session += 1
            left = r.randint(8, 20)
            out.append(f"=== Session {session} · {day[0]}-{day[1]:02d}-{day[2]:02d} "
                       f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d} ===\n")
        left -= 1
        out.append(f"{t['role'].capitalize()}: {t['content']}\n")
    return "\n".join(out)


def transcript(seed: int, turns: int, kinds: str = "all") -> list[dict]:
    g = Gen(seed, kinds)
    return [g.turn() for _ in range(turns)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--heldout", action="store_true", help=f"use the held-out stream (seed {HELDOUT_SEED} + --seed)")
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--format", choices=["jsonl", "text"], default="jsonl")
    ap.add_argument("--kinds", choices=MIXES, default="all",
                    help="content mix: all, ordinary (no no-prior text), no_prior only, everyday "
                         "(conversational English with contractions, quotes, names, units), or agent "
                         "(a coding agent's sessions: technical prose, shell, logs, config, source), or corpus "
                         "(passages of the Python standard library: real words and code), or repeats "
                         "(the agent mix with lines and turns repeated as retries and reruns print them)")
    a = ap.parse_args()
    seed = HELDOUT_SEED + a.seed if a.heldout else a.seed
    for t in transcript(seed, a.turns, a.kinds):
        if a.format == "jsonl":
            sys.stdout.write(json.dumps(t, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(f"{t['role'].capitalize()}: {t['content']}\n")


if __name__ == "__main__":
    main()
