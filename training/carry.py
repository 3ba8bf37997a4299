"""Split a file into raw parts of at most N MiB (with SHA256SUMS) and join them back.

The device tool brings back at most 8 files of 16 MiB per call, so checkpoints and weights come
back in parts:
  python training/carry.py split runs/small/resume-lite.pt $OUT 15
  python training/carry.py join DIR resume-lite.pt        # checks the sha256
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split(path: Path, out_dir: Path, mib: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    size = mib * (1 << 20)
    parts = []
    with open(path, "rb") as f:
        i = 0
        while chunk := f.read(size):
            p = out_dir / f"{path.name}.part-{i:03d}"
            p.write_bytes(chunk)
            parts.append(p)
            i += 1
    sums = out_dir / "SHA256SUMS"
    old = sums.read_text() if sums.is_file() else ""
    keep = [ln for ln in old.split("\n") if ln and not ln.endswith(f"  {path.name}")
            and f"  {path.name}.part-" not in ln]
    keep += [f"{sha256(path)}  {path.name}"] + [f"{sha256(p)}  {p.name}" for p in parts]
    sums.write_text("\n".join(keep) + "\n")
    return parts


def join(folder: Path, name: str) -> Path:
    parts = sorted(folder.glob(f"{name}.part-*"))
    if not parts:
        raise FileNotFoundError(f"no {name}.part-* in {folder}")
    out = folder / name
    with open(out, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().split("\n"):
        if line:
            digest, fname = line.split("  ", 1)
            sums[fname] = digest
    if sums.get(name) != sha256(out):
        raise ValueError(f"{out}: sha256 differs from SHA256SUMS")
    return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "split":
        ps = split(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        print(f"{len(ps)} parts in {sys.argv[3]}")
    elif len(sys.argv) == 4 and sys.argv[1] == "join":
        print(f"joined {join(Path(sys.argv[2]), sys.argv[3])}; sha256 ok")
    else:
        sys.exit(__doc__)
