"""Streaming load with bounded memory: a generated N-page PDF and a folder of M small files.

Each case is generated first, then loaded in a fresh Python process (so one case's memory
never counts against another) by iterating ``load_documents(...)`` without keeping the
documents. Reports pages/s or files/s, the RSS after imports, the peak RSS and the growth.
``--index-config NAME`` also indexes each case with that config in its own process
(``Pipeline.index`` over the stream; only index parts are built, no reader is loaded).

    python benchmarks/loaders_memory.py                          # 1,000-page PDF, 10,000 files
    python benchmarks/loaders_memory.py --index-config rag_bm25  # ... and their BM25 index
    python benchmarks/loaders_memory.py --pages 20 --files 50    # correctness check only
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    """Peak RSS of this process image so far, in MiB.

    VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``execve``, so a child started by a
    big parent would report the parent's peak as its own floor.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_pdf(path: Path, pages: int) -> None:
    sys.path.insert(0, str(ROOT))
    from longread.testing import write_pdf

    rng = random.Random(0)
    words = "alpha beta gamma delta river market report table figure value system answer".split()
    texts = [f"Page {i + 1}. " + " ".join(rng.choice(words) for _ in range(450)) for i in range(pages)]
    write_pdf(path, texts, title="memory benchmark")


def make_folder(root: Path, files: int) -> None:
    rng = random.Random(0)
    words = "alpha beta gamma delta river market report table figure value system answer".split()
    for i in range(files):
        sub = root / f"d{i % 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        body = " ".join(rng.choice(words) for _ in range(120))
        kind = i % 3
        if kind == 0:
            (sub / f"f{i:05d}.md").write_text(f"# File {i}\n\n{body}\n", encoding="utf-8")
        elif kind == 1:
            (sub / f"f{i:05d}.html").write_text(f"<html><title>File {i}</title><body><h1>File {i}</h1><p>{body}</p></body></html>", encoding="utf-8")
        else:
            (sub / f"f{i:05d}.txt").write_text(body + "\n", encoding="utf-8")


def child(path: str, index_config: str | None) -> None:
    """Load ``path`` streaming (or index it) and print one JSON line of measurements."""
    sys.path.insert(0, str(ROOT))
    from longread.loaders import load_documents

    import pypdfium2  # noqa: F401  (imported before the baseline, as a loader run would have it)
    import markdown_it  # noqa: F401

    pipe = None
    if index_config:
        from longread.pipelines.pipeline import Pipeline, resolve_config_path

        pipe = Pipeline.from_yaml(resolve_config_path(index_config))
    base = _rss_mb()
    t0 = time.perf_counter()
    n_docs = n_pages = n_chars = 0

    def counted():
        nonlocal n_docs, n_pages, n_chars
        for doc in load_documents(path):
            n_docs += 1
            n_pages += doc.meta.get("n_pages", 0)
            n_chars += len(doc.text)
            yield doc

    if pipe is None:
        for _ in counted():
            pass
    else:
        with tempfile.TemporaryDirectory() as tmp:
            pipe.index(counted(), Path(tmp) / "idx", show_progress=False)
    dt = time.perf_counter() - t0
    peak = _rss_mb()
    print(json.dumps({"documents": n_docs, "pages": n_pages, "chars": n_chars, "seconds": round(dt, 3),
                      "rss_after_imports_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
                      "growth_mb": round(peak - base, 1)}))


def run_case(name: str, path: Path, index_config: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path)] + (["--index-config", index_config] if index_config else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name}: child failed:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["case"] = name
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1000, help="pages of the generated PDF (0: skip the case)")
    ap.add_argument("--files", type=int, default=10_000, help="small files in the generated folder (0: skip)")
    ap.add_argument("--index-config", default=None, help="also index each case with this config (e.g. rag_bm25)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.index_config)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.pages:
            pdf = Path(tmp) / "big.pdf"
            make_pdf(pdf, args.pages)
            for cfg in [None] + ([args.index_config] if args.index_config else []):
                what = f"index {cfg}" if cfg else "load"
                r = run_case(f"{what}: pdf, {args.pages} pages ({pdf.stat().st_size / 1e6:.2f} MB)", pdf, cfg)
                r["rate"] = f"{r['pages'] / max(r['seconds'], 1e-9):.0f} pages/s"
                rows.append(r)
        if args.files:
            folder = Path(tmp) / "many"
            make_folder(folder, args.files)
            for cfg in [None] + ([args.index_config] if args.index_config else []):
                what = f"index {cfg}" if cfg else "load"
                r = run_case(f"{what}: folder, {args.files} files (md/html/txt)", folder, cfg)
                r["rate"] = f"{r['documents'] / max(r['seconds'], 1e-9):.0f} files/s"
                rows.append(r)
    cols = ["case", "documents", "pages", "chars", "rate", "rss_after_imports_mb", "peak_rss_mb", "growth_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
