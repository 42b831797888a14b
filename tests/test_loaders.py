"""Loaders: folders/globs/files to documents with page and heading offsets; every bad input case."""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path

import pytest

from longread.cli import main
from longread.loaders import LoadError, load_documents, provenance
from longread.testing import write_pdf

PAGES = [
    "Page one is about rivers.\nThe Nile is long.",
    "Page two is about mountains.\nEverest is high.",
    "Page three holds the planted fact: the vault code is 4711.",
    "Page four is about oceans.",
    "Page five closes the report.",
]

MARKDOWN = """---
title: Field Notes
---
# Birds

Sparrows nest in spring.

```
# not a heading inside code
```

## Owls

Owls hunt at night.
"""

HTML = """<html><head><meta charset="utf-8"><title>The Atlas</title><style>p {color: red}</style></head>
<body><h1>Europe</h1><p>Paris is in <b>France</b>.</p><script>var x = "hidden";</script>
<h2>Rivers</h2><ul><li>Rhine</li><li>Danube</li></ul></body></html>"""

CONFIG = """name: loaders-test
chunker: {kind: tokens, size: 24, overlap: 4}
stages:
  - {key: retriever.bm25, params: {top_k: 2}}
  - {key: reader.echo, params: {words: 3}}
"""


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    write_pdf(d / "reports" / "annual.pdf", PAGES, title="Annual Report")
    (d / "notes.md").write_text(MARKDOWN, encoding="utf-8")
    (d / "atlas.html").write_text(HTML, encoding="utf-8")
    (d / "reports" / "old.txt").write_bytes("Crème brûlée à la française, déjà vu.\n".encode("cp1252"))
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "slides.docx").write_bytes(b"PK\x03\x04")
    (d / ".hidden.md").write_text("# secret", encoding="utf-8")
    return d


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    return cfg


def cli(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    cfg = _config(tmp_path)
    argv = [a.replace("CFG", str(cfg)) for a in args]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# -- good input ----------------------------------------------------------------------------------
def test_folder_loads_every_format_with_relative_path_ids(folder: Path) -> None:
    stream = load_documents(folder)
    docs = {d.id: d for d in stream}
    assert list(docs) == ["atlas.html", "notes.md", "reports/annual.pdf", "reports/old.txt"]  # sorted per level
    rep = stream.report
    assert dict(rep.formats) == {"html": 1, "markdown": 1, "pdf": 1, "text": 1}
    assert dict(rep.unsupported) == {".docx": 1, ".png": 1} and rep.hidden == 1 and rep.skipped == []
    for did, d in docs.items():
        assert d.meta["source"] == did
        assert d.meta["sha256"] == hashlib.sha256((folder / did).read_bytes()).hexdigest()
    assert docs["reports/old.txt"].text.startswith("Crème brûlée à la française")
    assert docs["reports/old.txt"].meta["title"] == "old" and docs["reports/old.txt"].meta["format"] == "text"


def test_pdf_page_starts_title_and_provenance(folder: Path) -> None:
    doc = next(iter(load_documents(folder / "reports" / "annual.pdf")))
    assert doc.id == "annual.pdf" and doc.title == "Annual Report" and doc.meta["title"] == "Annual Report"
    starts = doc.meta["page_starts"]
    assert doc.meta["n_pages"] == 5 and len(starts) == 5 and starts[0] == 0
    ends = starts[1:] + [len(doc.text)]
    for i, page in enumerate(PAGES):
        got = " ".join(doc.text[starts[i] : ends[i]].split())
        assert got == " ".join(page.split()), i
    fact = doc.text.index("vault code is 4711")
    assert provenance(doc.meta, fact, fact + 18) == {"source": "annual.pdf", "pages": [3], "heading": None}
    # a span from the end of page 2 into page 4 spans pages 2, 3 and 4
    assert provenance(doc.meta, ends[1] - 5, starts[3] + 3)["pages"] == [2, 3, 4]


def test_pdf_without_metadata_title_uses_the_file_stem(tmp_path: Path) -> None:
    write_pdf(tmp_path / "quarterly-notes.pdf", ["Some text."])
    doc = next(iter(load_documents(tmp_path / "quarterly-notes.pdf")))
    assert doc.title == "quarterly-notes" and doc.meta["headings"] == []


def test_markdown_and_html_headings_are_lines_with_offsets(folder: Path) -> None:
    docs = {d.id: d for d in load_documents(folder)}
    md, html = docs["notes.md"], docs["atlas.html"]
    assert md.title == "Field Notes"  # front matter beats the first heading
    assert [(lvl, t) for _, lvl, t in md.meta["headings"]] == [(1, "Birds"), (2, "Owls")]
    assert "# not a heading inside code" in md.text and "---" not in md.text
    assert html.title == "The Atlas" and "hidden" not in html.text and "color" not in html.text
    assert [(lvl, t) for _, lvl, t in html.meta["headings"]] == [(1, "Europe"), (2, "Rivers")]
    for d in (md, html):
        for off, _, text in d.meta["headings"]:
            assert d.text[off : off + len(text)] == text
            assert off == 0 or d.text[off - 1] == "\n"  # a heading starts its own line
    owls = md.text.index("Owls hunt")
    assert provenance(md.meta, owls, owls + 9) == {"source": "notes.md", "pages": [], "heading": "Owls"}
    rhine = html.text.index("Rhine")
    assert provenance(html.meta, rhine, rhine + 5)["heading"] == "Rivers"
    assert "- Rhine\n- Danube" in html.text


def test_html_without_closing_head_keeps_its_body(tmp_path: Path) -> None:
    (tmp_path / "a.htm").write_text("<html><head><title>T</title><body><h2>Top</h2><p>Body text.</p>", encoding="utf-8")
    doc = next(iter(load_documents(tmp_path / "a.htm")))
    assert doc.text == "Top\n\nBody text." and doc.title == "T"


def test_title_falls_back_to_the_first_heading(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("intro\n\n## Setup\n\ntext\n", encoding="utf-8")
    (tmp_path / "b.html").write_text("<p>x</p><h3>Install</h3><p>y</p>", encoding="utf-8")
    docs = {d.id: d for d in load_documents(tmp_path)}
    assert docs["a.md"].title == "Setup" and docs["b.html"].title == "Install"


def test_provenance_rules() -> None:
    meta = {"source": "r.pdf", "page_starts": [0, 100, 200], "headings": [[50, 1, "Intro"], [150, 2, "Method"]]}
    assert provenance(meta, 0, 10) == {"source": "r.pdf", "pages": [1], "heading": None}
    assert provenance(meta, 0, 60)["heading"] == "Intro"  # starts before any heading: first heading inside
    assert provenance(meta, 60, 160) == {"source": "r.pdf", "pages": [1, 2], "heading": "Intro"}
    assert provenance(meta, 100, 100)["pages"] == [2]  # empty span: the page it sits on
    assert provenance(meta, 99, 100)["pages"] == [1]  # end is exclusive
    assert provenance(meta, 250, 900) == {"source": "r.pdf", "pages": [3], "heading": "Method"}
    assert provenance({}, 3, 4) == {"source": None, "pages": [], "heading": None}
    for bad in [(-1, 3), (5, 4)]:
        with pytest.raises(ValueError, match="0 <= start <= end"):
            provenance(meta, *bad)


def test_glob_and_jsonl(tmp_path: Path, folder: Path) -> None:
    ids = [d.id for d in load_documents(str(folder) + "/**/*.pdf")]
    assert ids == ["reports/annual.pdf"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "d1", "text": "hello"}) + "\n", encoding="utf-8")
    stream = load_documents(corpus)
    assert [d.id for d in stream] == ["d1"] and dict(stream.report.formats) == {"jsonl": 1}
    with pytest.raises(LoadError, match="matches no files"):
        list(load_documents(str(folder) + "/**/*.epub"))


def test_encodings_are_detected(tmp_path: Path) -> None:
    (tmp_path / "ru.txt").write_bytes(("Привет, как дела? Это тест кодировки. " * 3).encode("cp1251"))
    (tmp_path / "utf16.txt").write_bytes("Grüße aus München".encode("utf-16"))
    (tmp_path / "bom.md").write_bytes(b"\xef\xbb\xbf# Caf\xc3\xa9\n")
    (tmp_path / "legacy.html").write_bytes(b'<meta charset="iso-8859-1"><h1>Caf\xe9</h1>')
    docs = {d.id: d for d in load_documents(tmp_path)}
    assert docs["ru.txt"].text.startswith("Привет") and docs["ru.txt"].meta["encoding"] == "cp1251"
    assert docs["utf16.txt"].text == "Grüße aus München"
    assert docs["bom.md"].text == "Café" and docs["legacy.html"].title == "Café"


def test_stream_is_lazy_and_single_pass(folder: Path) -> None:
    stream = load_documents(folder)
    it = iter(stream)
    first = next(it)
    assert first.id == "atlas.html"
    # nothing past the first file has been read yet
    assert dict(stream.report.formats) == {"html": 1} and not stream.report.unsupported
    with pytest.raises(RuntimeError, match="only once"):
        iter(stream)


# -- bad input ------------------------------------------------------------------------------------
def _encrypted(d: Path) -> str:
    write_pdf(d / "locked.pdf", ["secret text"], user_password="pw")
    return "locked.pdf"


def _corrupt(d: Path) -> str:
    (d / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage without xref")
    return "broken.pdf"


def _truncated(d: Path) -> str:
    full = write_pdf(d / "whole.tmp", PAGES).read_bytes()
    (d / "whole.tmp").unlink()
    (d / "cut.pdf").write_bytes(full[: len(full) // 2])  # a download that stopped half way
    return "cut.pdf"


def _binary(d: Path) -> str:
    (d / "data.txt").write_bytes(bytes(range(256)) * 4)
    return "data.txt"


def _mixed(d: Path) -> str:
    (d / "mixed.txt").write_bytes("Ünïcode first line — ok\n".encode() + "then Latin-1: café crème\n".encode("latin-1"))
    return "mixed.txt"


def _duplicate_id(d: Path) -> str:
    (d / unicodedata.normalize("NFC", "café.md")).write_text("one", encoding="utf-8")
    (d / unicodedata.normalize("NFD", "café.md")).write_text("two", encoding="utf-8")
    return "café.md"


def _symlink_loop(d: Path) -> str:
    (d / "sub").mkdir()
    os.symlink(d, d / "sub" / "loop")
    return "sub/loop"


def _self_link(d: Path) -> str:
    os.symlink("self.txt", d / "self.txt")
    return "self.txt"


BAD = {
    "encrypted": (_encrypted, "encrypted PDF"),
    "corrupt": (_corrupt, "not a readable PDF"),
    "truncated": (_truncated, "not a readable PDF"),
    "binary": (_binary, "binary file"),
    "mixed_encoding": (_mixed, "mixed encodings"),
    "duplicate_id": (_duplicate_id, "maps to document id"),
    "symlink_loop": (_symlink_loop, "symlink loop"),
    "self_link": (_self_link, "symlink loop"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_is_one_error_line_then_skip_bad_goes_on(tmp_path: Path, capsys, case: str) -> None:
    make, message = BAD[case]
    d = tmp_path / "docs"
    d.mkdir()
    (d / "good.md").write_text("# Good\n\nThe good document.\n", encoding="utf-8")
    name = make(d)
    idx = tmp_path / "idx"
    rc, out, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(d), "--out", str(idx), "--quiet")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0] and unicodedata.normalize("NFC", name) in unicodedata.normalize("NFC", lines[0])
    assert not idx.exists()  # nothing half-written

    rc, out, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(d), "--out", str(idx), "--quiet", "--skip-bad")
    assert rc == 0, err
    assert "skipped 1 files" in err and message in err
    man = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))
    skipped = man["loader"]["skipped"]
    assert len(skipped) == 1 and message in skipped[0]["reason"]
    assert man["n_documents"] == (2 if case == "duplicate_id" else 1)  # the first of two same-id files stays


def test_scanned_pdf_is_a_warning_and_counted_in_the_manifest(tmp_path: Path, capsys) -> None:
    d = tmp_path / "docs"
    write_pdf(d / "scan.pdf", [None, None])
    write_pdf(d / "mixed.pdf", ["Typed page.", None])
    idx = tmp_path / "idx"
    rc, out, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(d), "--out", str(idx), "--quiet")
    assert rc == 0, err
    assert "warning: " in err and "scan.pdf: PDF with no text layer on any of its 2 pages" in err and "no OCR" in err
    assert "mixed.pdf: page 2 has no text layer" in err
    loader = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))["loader"]
    assert loader["no_text"] == ["scan.pdf"] and [s["source"] for s in loader["skipped"]] == ["scan.pdf"]
    assert loader["n_documents"] == 1


def test_pipeline_index_takes_the_stream_and_records_its_report(tmp_path: Path, folder: Path) -> None:
    from longread.pipelines.pipeline import Pipeline

    write_pdf(folder / "scan.pdf", [None])
    pipe = Pipeline.from_yaml(_config(tmp_path))
    idx = pipe.index(load_documents(folder, warn=lambda m: None), tmp_path / "idx", show_progress=False)
    loader = json.loads((idx / "manifest.json").read_text(encoding="utf-8"))["loader"]
    assert loader["n_documents"] == 4 and loader["no_text"] == ["scan.pdf"] and loader["unsupported"] == {".docx": 1, ".png": 1}


def test_nothing_to_load_is_an_error(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(empty), "--out", str(tmp_path / "i"), "--quiet")
    assert rc == 2 and err == f"error: {empty}: no .pdf/.html/.htm/.md/.markdown/.txt files\n"
    (empty / "notes.docx").write_bytes(b"PK")
    rc, _, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(empty), "--out", str(tmp_path / "i"), "--quiet")
    assert rc == 2 and err.count("\n") == 1 and "no .pdf/.html/.htm/.md/.markdown/.txt files" in err and "ignored 1" in err
    rc, _, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(empty / "notes.docx"), "--out", str(tmp_path / "i"))
    assert rc == 2 and "unsupported file type '.docx'" in err
    rc, _, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "i"))
    assert rc == 2 and "corpus not found" in err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    _binary(only_bad)
    rc, _, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(only_bad), "--out", str(tmp_path / "i"), "--skip-bad", "--quiet")
    assert rc == 2 and "no documents loaded: all 1" in err


def test_file_changed_between_index_and_run_is_refused(tmp_path: Path, capsys, folder: Path) -> None:
    idx = tmp_path / "idx"
    rc, _, err = cli(tmp_path, capsys, "index", "--config", "CFG", "--corpus", str(folder), "--out", str(idx), "--quiet")
    assert rc == 0, err
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"id": "q1", "question": "Where is Paris?", "answers": ["France"]}) + "\n", encoding="utf-8")
    with open(folder / "notes.md", "a", encoding="utf-8") as f:
        f.write("\nA late edit.\n")
    run_dir = tmp_path / "run"
    rc, _, err = cli(tmp_path, capsys, "run", "--config", "CFG", "--corpus", str(folder), "--index", str(idx),
                     "--questions", str(qs), "--out", str(run_dir), "--quiet")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and errors[0].startswith("error: notes.md: the file changed since the index")
    assert not run_dir.exists()
    (folder / "notes.md").write_text(MARKDOWN, encoding="utf-8")  # restored: same bytes, same hash
    rc, _, err = cli(tmp_path, capsys, "run", "--config", "CFG", "--corpus", str(folder), "--index", str(idx),
                     "--questions", str(qs), "--out", str(run_dir), "--quiet")
    assert rc == 0, err


def test_too_long_document_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("word " * 100, encoding="utf-8")
    with pytest.raises(LoadError, match="big.txt: .*too large|big.txt: .*over the limit"):
        list(load_documents(tmp_path, max_doc_chars=50))
    stream = load_documents(tmp_path / "big.txt", max_doc_chars=300, skip_bad=True)
    with pytest.raises(LoadError, match="no documents loaded"):
        list(stream)
    assert stream.report.skipped[0]["kind"] == "too_long"
