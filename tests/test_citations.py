"""Provenance and citations: chunks know their file, pages and heading; passages keep the reader's
text apart from the chunk; predictions list citations; ``longread ask`` prints them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from longread.citations import chunk_provenance, citations_for, meta_provenance
from longread.cli import main
from longread.config import ChunkerSpec
from longread.loaders import load_documents
from longread.pipelines.chunking import chunk_document
from longread.testing import write_pdf
from longread.types import Chunk, Citation, Document, Passage, Prediction, Provenance


def _page_words(k: int, n: int = 60) -> str:
    # Every word names its page, so a chunk's pages can be read off its own text.
    return "\n".join(" ".join(f"p{k}w{i + j}" for j in range(10)) for i in range(0, n, 10))


def _pages_in(text: str) -> list[int]:
    return sorted({int(m) for m in re.findall(r"\bp(\d+)w\d+", text)})


def test_pdf_chunks_know_their_pages(tmp_path: Path) -> None:
    write_pdf(tmp_path / "book.pdf", [_page_words(k) for k in range(1, 6)], title="Book")
    [doc] = load_documents(tmp_path / "book.pdf")
    chunks = chunk_document(doc, ChunkerSpec(kind="tokens", size=25, overlap=5))
    assert len(chunks) > 10
    spanning = 0
    for c in chunks:
        assert c.provenance is not None and c.provenance.source == "book.pdf" and c.provenance.heading is None
        assert c.provenance.pages == _pages_in(c.text), c.id
        spanning += len(c.provenance.pages) > 1
    assert spanning >= 3  # chunks that cross a page break list both pages
    assert {p for c in chunks for p in c.provenance.pages} == {1, 2, 3, 4, 5}


MD = """# Guide

Intro words here.

## Rivers

riv riv riv riv riv riv riv riv riv riv riv riv riv riv riv riv riv riv riv riv

## Cities

cit cit cit cit cit cit cit cit cit cit cit cit cit cit cit cit cit cit cit cit
"""

HTML = ("<html><head><title>Atlas</title></head><body><h1>Atlas</h1><p>Intro words here.</p>"
        "<h2>Rivers</h2><p>" + "riv " * 20 + "</p><h2>Cities</h2><p>" + "cit " * 20 + "</p></body></html>")


@pytest.mark.parametrize("name,text", [("guide.md", MD), ("atlas.html", HTML)])
def test_markdown_and_html_chunks_know_their_heading(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    [doc] = load_documents(tmp_path / name)
    chunks = chunk_document(doc, ChunkerSpec(kind="tokens", size=6, overlap=0))
    seen = set()
    for c in chunks:
        words = set(c.text.split())
        assert c.provenance.source == name and c.provenance.pages == []
        # A chunk starting inside a section carries that section's heading.
        if words <= {"riv"}:
            assert c.provenance.heading == "Rivers", c
            seen.add("Rivers")
        elif words <= {"cit"}:
            assert c.provenance.heading == "Cities", c
            seen.add("Cities")
    assert seen == {"Rivers", "Cities"}
    assert chunks[0].provenance.heading == chunks[0].text.split("\n")[0]  # the title heading starts the text


def test_plain_documents_have_no_provenance_and_bad_offsets_are_named() -> None:
    doc = Document(id="d", text="one two three")
    [c] = chunk_document(doc, ChunkerSpec(kind="whole"))
    assert c.provenance is None
    assert '"provenance":null' in c.model_dump_json()  # no copy of document meta per chunk
    assert chunk_provenance(c, doc) == Provenance()
    bad = Document(id="d", text="one two", meta={"page_starts": [5, 0]})
    with pytest.raises(ValueError, match="document 'd': meta.page_starts must be an ascending list"):
        meta_provenance(bad, 0, 3)
    with pytest.raises(ValueError, match="meta.headings must be"):
        meta_provenance(Document(id="d", text="x", meta={"headings": ["Intro"]}), 0, 1)


def test_provenance_is_derived_for_chunks_stored_without_it() -> None:
    # Chunks from an index built before provenance existed (or a store keeping only spans).
    doc = Document(id="r.pdf", text="page one\n\npage two", meta={"source": "r.pdf", "page_starts": [0, 10]})
    bare = Chunk(id="r.pdf#0", doc_id="r.pdf", text="page two", start=10, end=18)
    assert chunk_provenance(bare, doc) == Provenance(source="r.pdf", pages=[2])
    [cit] = citations_for([Passage(chunk=bare, score=1.0)], {"r.pdf": doc}, cited=True)
    assert (cit.source, cit.page, cit.pages, cit.location()) == ("r.pdf", 2, [2], "r.pdf p. 2")


def test_passage_text_defaults_to_the_chunk_and_old_records_still_read() -> None:
    c = Chunk(id="a#0", doc_id="a", text="full text", start=0, end=9)
    p = Passage(chunk=c, score=0.5)
    assert p.text == "full text"
    assert Passage.model_validate_json('{"chunk": %s, "score": 1.0}' % c.model_dump_json()).text == "full text"
    q = Passage(chunk=c, text="", score=0.5)  # a compressor may empty a passage on purpose
    assert q.text == "" and q.chunk.text == "full text"
    assert Passage.model_validate(p.model_dump()) == p
    # A citation line written before ``cited``/``pages``/``heading`` existed.
    old = {"n": 2, "doc_id": "a", "chunk_id": "a#0", "source": None, "page": None, "start": 0, "end": 9, "text": "t"}
    cit = Citation.model_validate(old)
    assert cit.cited is True and cit.pages == [] and cit.heading is None
    assert Citation.model_validate({**old, "page": 4}).pages == [4]
    with pytest.raises(ValueError, match="page .3. must be the first of pages"):
        Citation.model_validate({**old, "page": 3, "pages": [4, 5]})


# --- the command line ----------------------------------------------------------------------------

CONFIG = """name: ask-test
chunker: {kind: tokens, size: 40, overlap: 0}
stages:
  - {key: retriever.bm25, params: {top_k: 1}}
  - {key: reader.echo, params: {words: 9}}
"""

FILLER = "Office rules and coffee breaks are described here at length. "


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    pages = [f"Page {k}. " + FILLER * 4 for k in range(1, 6)]
    pages[2] = "The launch code of project Falcon is 7741. " + FILLER * 4
    write_pdf(d / "reports" / "handbook.pdf", pages, title="Handbook")
    (d / "notes.md").write_text("# Notes\n\nIntro.\n\n## Rivers\n\nThe Nile is the longest river in Africa.\n", encoding="utf-8")
    return d


@pytest.fixture()
def index(tmp_path: Path, corpus: Path, capsys) -> Path:
    cfg = tmp_path / "ask.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    idx = tmp_path / "idx"
    assert main(["index", "--config", str(cfg), "--corpus", str(corpus), "--out", str(idx), "--quiet"]) == 0
    capsys.readouterr()
    return idx


def test_ask_prints_the_answer_and_where_it_comes_from(index: Path, capsys) -> None:
    assert main(["ask", "--index", str(index), "What is the launch code of project Falcon?"]) == 0
    out, err = capsys.readouterr()
    answer, blank, head, cite = out.splitlines()
    assert (blank, head) == ("", "Read (the answer marks no passage):")  # reader.echo marks nothing
    m = re.fullmatch(r"  \[1\] reports/handbook\.pdf (?:p\. (\d)|pp\. (\d)-(\d)): (.*)", cite)
    assert m, cite
    first, last = int(m[1] or m[2]), int(m[1] or m[3])
    assert first <= 3 <= last and "launch code of project Falcon is 7741." in m[4]
    assert m[4].startswith(answer)  # reader.echo answers with the first words of the passage it cites
    assert err == ""


def test_ask_json(index: Path, capsys) -> None:
    assert main(["ask", "--index", str(index), "--json", "Which river is the longest in Africa?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"].startswith("Notes")
    [c] = out["citations"]
    assert list(c)[:6] == ["doc_id", "source", "page", "start", "end", "text"]
    assert (c["doc_id"], c["source"], c["page"], c["heading"], c["cited"]) == ("notes.md", "notes.md", None, "Notes", False)
    assert "The Nile is the longest river in Africa." in c["text"]


def test_ask_errors_are_one_line(index: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "ask.yaml").unlink()  # the config the index recorded is gone
    assert main(["ask", "--index", str(index), "Where?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "which no longer exists" in err and err.rstrip().endswith("pass --config")
    cfg = tmp_path / "again.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    assert main(["ask", "--index", str(index), "--config", str(cfg), "Where is the Nile?"]) == 0
    assert "notes.md" in capsys.readouterr().out
    assert main(["ask", "--index", str(tmp_path / "nope"), "Where?"]) == 2
    assert "is not an index dir" in capsys.readouterr().err
    assert main(["ask", "--index", str(index), "--config", str(cfg), "   "]) == 2
    assert capsys.readouterr().err == "error: the question is empty\n"
    bad = tmp_path / "fails.yaml"
    bad.write_text(CONFIG.replace("{words: 9}", "{words: 9, fail_on: Nile}"), encoding="utf-8")
    assert main(["ask", "--index", str(index), "--config", str(bad), "Where is the Nile?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not answer: reader.echo: ValueError") and err.count("\n") == 1


def test_ask_with_corpus_builds_the_index_once_then_refuses_changed_files(tmp_path: Path, corpus: Path, capsys) -> None:
    cfg = tmp_path / "ask.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    idx = tmp_path / "new-idx"
    q = "Which river is the longest in Africa?"
    assert main(["ask", "--index", str(idx), "--corpus", str(corpus), q]) == 2  # nothing to build it with
    assert capsys.readouterr().err.startswith("error: ") and not idx.exists()
    assert main(["ask", "--index", str(idx), "--corpus", str(corpus), "--config", str(cfg), "--quiet", q]) == 0
    assert "notes.md" in capsys.readouterr().out and (idx / "manifest.json").is_file()
    assert main(["ask", "--index", str(idx), "--corpus", str(corpus), "--quiet", q]) == 0  # the config it recorded
    assert "notes.md" in capsys.readouterr().out
    (corpus / "notes.md").write_text("# Notes\n\nThe Amazon is the longest river.\n", encoding="utf-8")
    assert main(["ask", "--index", str(idx), "--corpus", str(corpus), "--quiet", q]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the loader's summary line
    assert err.count("error:") == 1 and last.startswith("error: notes.md: the file changed since the index")


def test_pipeline_ask_is_answer_of_one(index: Path, tmp_path: Path) -> None:
    from longread.pipelines.pipeline import Pipeline, index_config_path
    from longread.types import Question

    pipe = Pipeline.from_yaml(index_config_path(index))
    st = pipe.ask("What is the launch code of project Falcon?", index_dir=index)
    ref = pipe.answer([Question(id="ask", question="What is the launch code of project Falcon?")], index_dir=index)[0]
    assert (st.answer, st.citations) == (ref.answer, ref.citations)
    assert 3 in st.citations[0].pages and st.citations[0].source == "reports/handbook.pdf"


def test_run_predictions_carry_citations(corpus: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "ask.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"id": "q1", "question": "What is the launch code of project Falcon?", "answers": ["7741"]}) + "\n",
                  encoding="utf-8")
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--corpus", str(corpus), "--questions", str(qs), "--out", str(out), "--quiet"]) == 0
    [line] = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    pred = Prediction.model_validate_json(line)
    [c] = pred.citations
    assert (c.doc_id, c.source, c.cited) == ("reports/handbook.pdf", "reports/handbook.pdf", False)
    assert 3 in c.pages and c.page == c.pages[0]
    assert "7741" in c.text and c.chunk_id == pred.passage_ids[0]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["citation_precision"] is None  # passages merely read are not scored as citations


# --- the real small reader (slow) -----------------------------------------------------------------


@pytest.mark.slow
def test_real_reader_cites_the_planted_fact_on_page_3(tmp_path: Path) -> None:
    # qwen2.5-0.5b-instruct: smollm2-135m-instruct answers in words but does not write [n] markers
    # with any wording tried (benchmarks/citations.py measures both).
    from longread.pipelines.pipeline import Pipeline

    model = "qwen2.5-0.5b-instruct"
    pages = [f"Page {k} of the annual report. " + FILLER * 6 for k in range(1, 6)]
    pages[2] = "Page 3 of the annual report. " + FILLER * 3 + "The vault code of the Kestrel archive is 4711. " + FILLER * 3
    write_pdf(tmp_path / "docs" / "annual.pdf", pages, title="Annual Report")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n" + FILLER * 10, encoding="utf-8")
    pipe = Pipeline.from_config({
        "name": "cite-slow",
        "chunker": {"kind": "tokens", "size": 64, "overlap": 8},
        "stages": [{"key": "retriever.bm25", "params": {"top_k": 2}},
                   {"key": "reader.hf", "params": {"model": model, "prompt": "cite", "max_passages": 2, "max_new_tokens": 48}}],
    }, kv_cache=False)
    idx = pipe.index(load_documents(tmp_path / "docs"), tmp_path / "idx", show_progress=False)
    st = pipe.ask("What is the vault code of the Kestrel archive?", index_dir=idx)
    assert "error" not in st.trace
    assert "4711" in st.answer, st.trace["raw_answer"]
    cited = [c for c in st.citations if c.cited]
    assert cited, st.trace["raw_answer"]
    assert any(c.source == "annual.pdf" and 3 in c.pages and "4711" in c.text for c in cited), st.citations


def test_chunks_read_back_from_the_sharded_store_carry_their_provenance(tmp_path):
    """The store keeps chunks as spans; pages and heading come back from the document's meta."""
    from longread import Pipeline
    from longread.loaders import load_documents
    from longread.testing import write_pdf

    write_pdf(tmp_path / "c" / "a.pdf", [f"Page {i} is about topic {i}. " * 30 for i in range(1, 6)])
    pipe = Pipeline.from_config({"name": "x", "chunker": {"kind": "tokens", "size": 64, "overlap": 8},
                                 "stages": [{"key": "retriever.bm25", "params": {"top_k": 3}}, {"key": "reader.echo"}]})
    pipe.index(load_documents(tmp_path / "c"), tmp_path / "idx", show_progress=False)
    store = pipe.context(tmp_path / "idx").store
    first, last = store.chunks[0], store.chunks[len(store.chunks) - 1]
    assert first.provenance.source == "a.pdf" and first.provenance.pages == [1]
    assert last.provenance.pages == [5]
    doc = store.documents["a.pdf"]
    starts = doc.meta["page_starts"]
    for c in store.chunks:  # each chunk's first page is the page its first character is on
        assert c.provenance.pages[0] == sum(1 for s in starts if s <= c.start)
