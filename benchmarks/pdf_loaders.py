"""PDF text extraction: pypdf vs pypdfium2 vs pdfplumber, speed and text quality.

Generates PDFs with fpdf2 whose text is known page by page (wrapped paragraphs with accents,
ligature-prone words and numbers; a heading and a list; a two-column page), extracts them with
each library and reports:

- pages/s on a ``--pages``-page document (best of ``--repeat``; timings need a quiet machine),
- word recall (share of the page's words found on that page, as a multiset),
- order (difflib ratio between the expected and extracted word sequences),
- pages whose marker word appears on exactly the right page,
- two-column pages read column by column (left column's last word before the right's first),
- non-ASCII words intact (é, ü, ß, ...), and ``ﬁ``/``ﬂ`` ligatures read as plain letters.

    python benchmarks/pdf_loaders.py                       # 300 pages, 3 repeats
    python benchmarks/pdf_loaders.py --pages 6 --repeat 1  # correctness check only
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the river city market winter report figure value table section method result office flow "
         "efficient affinity official final field profile system number answer question document page").split()
ACCENTED = ["café", "naïve", "Grüße", "façade", "coöperate", "résumé", "Ångström", "São", "München", "straße"]


def make_pages(n: int, seed: int = 0) -> list[dict]:
    """``n`` page specs: kind (``plain``, ``heading``, ``columns``) and their text parts."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        words = [rng.choice(WORDS) for _ in range(k)]
        words[rng.randrange(k)] = rng.choice(ACCENTED)
        words.append(str(rng.randrange(10, 99999)))
        return " ".join(words).capitalize() + "."

    pages = []
    for i in range(n):
        marker = f"Pagemarker{i + 1:05d}"
        kind = ("plain", "heading", "columns")[i % 3]
        body = " ".join(sentence(rng.randint(6, 14)) for _ in range(12))
        if kind == "columns":
            left = " ".join(sentence(8) for _ in range(8))
            right = " ".join(sentence(8) for _ in range(8))
            pages.append({"kind": kind, "marker": marker, "parts": [marker, left, right]})
        elif kind == "heading":
            items = [sentence(5) for _ in range(4)]
            pages.append({"kind": kind, "marker": marker, "parts": [f"Section {i + 1} {marker}", body, *items]})
        else:
            pages.append({"kind": kind, "marker": marker, "parts": [marker, body, "The ﬁnal ﬁgure shows the ﬂow."]})
    return pages


def write_pages(path: Path, pages: list[dict]) -> Path:
    from fpdf import FPDF

    from longread.testing import _unicode_font

    font = _unicode_font()
    if font is None:
        raise SystemExit("needs DejaVuSans.ttf (pip install matplotlib, or apt-get install fonts-dejavu)")
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.add_font("DejaVu", fname=str(font))
    for p in pages:
        pdf.add_page()
        pdf.set_font("DejaVu", size=10)
        pdf.set_xy(15, 12)
        if p["kind"] == "columns":
            marker, left, right = p["parts"]
            pdf.multi_cell(180, 5, marker)
            pdf.set_xy(15, 25)
            pdf.multi_cell(85, 5, left)
            pdf.set_xy(110, 25)
            pdf.multi_cell(85, 5, right)
        elif p["kind"] == "heading":
            title, body, *items = p["parts"]
            pdf.set_font("DejaVu", size=16)
            pdf.multi_cell(180, 8, title)
            pdf.set_font("DejaVu", size=10)
            pdf.set_x(15)
            pdf.multi_cell(180, 5, body)
            for it in items:
                pdf.set_x(20)
                pdf.multi_cell(175, 5, "• " + it)
        else:
            for part in p["parts"]:
                pdf.set_x(15)
                pdf.multi_cell(180, 5, part)
    pdf.output(str(path))
    return path


# -- extractors: path -> list of page texts ------------------------------------------------------
def extract_pypdf(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [pg.extract_text() or "" for pg in PdfReader(str(path)).pages]


def extract_pypdfium2(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(path)
    out = []
    for i in range(len(doc)):
        page = doc[i]
        tp = page.get_textpage()
        out.append(tp.get_text_bounded())
        tp.close()
        page.close()
    doc.close()
    return out


def extract_pdfplumber(path: Path) -> list[str]:
    import pdfplumber

    with pdfplumber.open(str(path)) as pdf:
        return [pg.extract_text() or "" for pg in pdf.pages]


def extract_longread(path: Path) -> list[str]:
    """The loader itself (pypdfium2 plus newline/ligature normalisation), split back into pages."""
    from longread.loaders.pdf import read_pdf

    pt = read_pdf(path)
    ends = pt.page_starts[1:] + [len(pt.text)]
    return [pt.text[a:b] for a, b in zip(pt.page_starts, ends)]


EXTRACTORS = {"pypdf": extract_pypdf, "pypdfium2": extract_pypdfium2, "pdfplumber": extract_pdfplumber, "longread": extract_longread}


def words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("•", " ")
    return re.findall(r"\w+", text)


def score(pages: list[dict], got: list[str]) -> dict:
    from collections import Counter

    recall, order, marker_ok, cols_ok, n_cols, acc_ok, acc_n, lig_ok, n_lig = [], [], 0, 0, 0, 0, 0, 0, 0
    all_words = [set(words(t)) for t in got]
    for i, p in enumerate(pages):
        exp = words(" ".join(p["parts"]))
        g = words(got[i]) if i < len(got) else []
        ce, cg = Counter(exp), Counter(g)
        recall.append(sum(min(n, cg[w]) for w, n in ce.items()) / max(1, len(exp)))
        order.append(difflib.SequenceMatcher(None, exp, g, autojunk=False).ratio())
        m = p["marker"].lower()
        marker_ok += sum(m in s for s in all_words) == 1 and m in all_words[i] if i < len(all_words) else 0
        if p["kind"] == "columns":
            n_cols += 1
            lw, rw = words(p["parts"][1]), words(p["parts"][2])
            text = " ".join(g)
            a, b = text.find(" ".join(lw[-4:])), text.find(" ".join(rw[:4]))
            cols_ok += 0 <= a < b
        if p["kind"] == "plain":
            n_lig += 3
            raw = got[i].lower() if i < len(got) else ""
            lig_ok += sum(w in raw for w in ("final", "figure", "flow"))  # no NFKC here: is "ﬁ" read as "fi"?
        for w in ACCENTED:
            if w.lower() in exp:
                acc_n += 1
                acc_ok += w.lower() in g
    n = len(pages)
    return {
        "word_recall": round(sum(recall) / n, 4),
        "order": round(sum(order) / n, 4),
        "marker_pages_ok": f"{marker_ok}/{n}",
        "two_column_ok": f"{cols_ok}/{n_cols}",
        "accented_ok": f"{acc_ok}/{acc_n}",
        "ligatures_as_letters": f"{lig_ok}/{n_lig}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=300, help="pages of the generated document")
    ap.add_argument("--repeat", type=int, default=3, help="timed extractions per library (best is reported)")
    ap.add_argument("--libs", nargs="+", default=list(EXTRACTORS), choices=list(EXTRACTORS))
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    pages = make_pages(args.pages)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pages(Path(tmp) / "bench.pdf", pages)
        for lib in args.libs:
            fn = EXTRACTORS[lib]
            best, got = float("inf"), []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                got = fn(path)
                best = min(best, time.perf_counter() - t0)
            if len(got) != len(pages):
                raise SystemExit(f"{lib}: extracted {len(got)} pages, expected {len(pages)}")
            rows.append({"library": lib, "pages_per_s": round(len(pages) / best, 1), **score(pages, got)})
    cols = list(rows[0])
    print(f"{args.pages} generated pages (plain, heading+list, two-column in turn), best of {args.repeat}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
