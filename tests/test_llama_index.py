"""LlamaIndex interop with real llama-index-core objects, no API key needed: retrieved nodes carry
provenance, the postprocessor hands back the caller's own nodes, async retrieval leaves the loop free."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from llama_index.core import Document as LIDocument
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode

from longread.integrations.llama_index import (
    ORIGINAL_TEXT_KEY,
    LongreadPostprocessor,
    LongreadRetriever,
    documents_from_llama,
    node_to_passage,
)
from longread.loaders import load_documents
from longread.pipelines.pipeline import Pipeline
from longread.stage import Stage
from longread.testing import write_pdf
from longread.types import Passage, QAState

PAGES = [
    "Apples grow in orchards across the valley and are picked in the autumn by hand.",
    "Bananas ripen quickly in warm rooms and turn brown within a week of purchase.",
    "The vault code is 4417 and only the night guard knows it by heart.",
]


@pytest.fixture(scope="module")
def folder_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Path, Path]:
    """A folder corpus (a 3-page PDF and a Markdown file with headings) indexed with BM25."""
    root = tmp_path_factory.mktemp("li")
    corpus = root / "corpus"
    write_pdf(corpus / "reports" / "q1.pdf", PAGES, title="Quarterly report")
    (corpus / "notes.md").write_text("# Fruit\n\nPears are sweet.\n\n## Rivers\n\nThe Nile is the longest river in Africa.\n")
    pipe = Pipeline.from_config(
        {
            "name": "li",
            "chunker": {"kind": "tokens", "size": 8, "overlap": 0},
            "stages": [{"key": "retriever.bm25", "params": {"top_k": 4}}, {"key": "reorder.hard_negative", "params": {"mode": "reverse"}}],
        }
    )
    pipe.index(load_documents(str(corpus)), root / "idx", show_progress=False)
    return pipe, root / "idx", corpus


def _pages_by_text(doc_text: str, start: int, end: int) -> list[int]:
    """The pages a span touches, found by where each page's known text lies in the document."""
    spans = [(doc_text.index(t), doc_text.index(t) + len(t)) for t in PAGES]
    return [i + 1 for i, (a, b) in enumerate(spans) if start < b and a < max(end, start + 1)]


def test_retrieved_nodes_carry_source_page_heading_and_ref_doc_id(folder_index) -> None:
    pipe, idx, _ = folder_index
    ctx = pipe.context(idx)
    retriever = LongreadRetriever(pipe.stages[0], ctx)
    nodes = retriever.retrieve("Which vault code does the night guard know?")
    top = nodes[0].node
    assert "4417" in top.get_content() and top.ref_doc_id == "reports/q1.pdf"
    md = top.metadata
    assert md["source"] == "reports/q1.pdf" and md["title"] == "Quarterly report" and md["page"] == 3
    pdf = ctx.store.documents["reports/q1.pdf"]
    for n in nodes:
        m = n.node.metadata
        assert m["chunk_id"] == n.node.node_id and m["doc_id"] == n.node.ref_doc_id
        assert (n.node.start_char_idx, n.node.end_char_idx) == (m["start"], m["end"])
        if m["doc_id"] == "reports/q1.pdf":
            assert n.node.get_content() == pdf.text[m["start"] : m["end"]]
            assert m["pages"] == _pages_by_text(pdf.text, m["start"], m["end"]) and m["page"] == m["pages"][0]
            assert "page_starts" not in m and m["n_pages"] == 3
    # The LLM sees where a passage comes from, not the bookkeeping.
    shown = top.get_content(MetadataMode.LLM)
    assert "source: reports/q1.pdf" in shown and "page: 3" in shown and "chunk_id" not in shown and "sha256" not in shown

    river = retriever.retrieve("Which river is the longest in Africa?")[0].node
    assert river.metadata["source"] == "notes.md" and river.metadata["heading"] == "Rivers" and "page" not in river.metadata

    # Back into longread, a node keeps its provenance: a chunk that can be cited without its document.
    back = node_to_passage(nodes[0])
    assert back.chunk.provenance == ctx.store.chunks[ctx.store.chunk_pos[top.node_id]].provenance
    assert (back.chunk.provenance.source, back.chunk.provenance.page) == ("reports/q1.pdf", 3) and back.text == top.get_content()


class WordOverlapReranker(Stage):
    """Test reranker: score = question words in the passage, best first."""

    key: ClassVar[str] = "reranker.test_overlap"

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        for s in batch:
            q = set(re.findall(r"\w+", s.question.question.lower()))
            for p in s.passages:
                p.score = float(len(q & set(re.findall(r"\w+", p.text.lower()))))
            s.passages.sort(key=lambda p: -p.score)
        return batch


class FirstSentence(Stage):
    """Test compressor: drops passages saying "irrelevant", cuts the others to their first sentence."""

    key: ClassVar[str] = "compressor.test_first_sentence"

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        for s in batch:
            s.passages = [p for p in s.passages if "irrelevant" not in p.text]
            for p in s.passages:
                p.text = re.split(r"(?<=\.)\s+", p.text.strip())[0]
        return batch


def _user_nodes() -> list[NodeWithScore]:
    """Nodes as a LlamaIndex app has them: own ids, nested metadata, relationships, templates."""
    src = RelatedNodeInfo(node_id="handbook", metadata={"path": "handbook.pdf"})

    def node(i: str, text: str, score: float | None, **rel: str) -> NodeWithScore:
        return NodeWithScore(
            node=TextNode(
                id_=i,
                text=text,
                metadata={"file_name": "handbook.pdf", "page_label": i[-1], "tags": ["hr", "policy"], "extra": {"owner": "ops"}},
                excluded_llm_metadata_keys=["tags"],
                excluded_embed_metadata_keys=["extra"],
                relationships={NodeRelationship.SOURCE: src, **{NodeRelationship[k]: RelatedNodeInfo(node_id=v) for k, v in rel.items()}},
                text_template="<<{metadata_str}>>\n{content}",
                metadata_template="{key}={value}",
                start_char_idx=100 * int(i[-1]),
                end_char_idx=100 * int(i[-1]) + len(text),
            ),
            score=score,
        )

    return [
        node("n1", "Holidays are booked in the portal. Ask your manager first.", 0.9, NEXT="n2"),
        node("n2", "This paragraph is irrelevant to leave.", 0.5, PREVIOUS="n1", NEXT="n3"),
        node("n3", "Sick leave needs a note after three days.", None, PREVIOUS="n2"),
    ]


def _same_but_text(a, b) -> None:
    for f in ("id_", "relationships", "text_template",
              "metadata_template", "start_char_idx", "end_char_idx"):
        assert getattr(a, f) == getattr(b, f), f
    assert a.ref_doc_id == b.ref_doc_id == "handbook"


def test_postprocessors_hand_back_the_users_own_nodes(folder_index) -> None:
    pipe, idx, _ = folder_index
    ctx = pipe.context(idx)
    nodes = _user_nodes()
    before = [n.node.model_copy(deep=True) for n in nodes]
    q = QueryBundle("How do I book holidays in the portal?")

    reversed_ = LongreadPostprocessor(pipe.stages[1], ctx).postprocess_nodes(nodes, q)
    assert [id(n) for n in reversed_] == [id(n) for n in reversed(nodes)]  # the very same objects

    reranked = LongreadPostprocessor(WordOverlapReranker(), ctx).postprocess_nodes(nodes, q)
    assert [n.node.node_id for n in reranked][0] == "n1" and reranked[0].node is nodes[0].node
    assert reranked[0].score == 4.0 and nodes[0].score == 0.9  # new score, caller's wrapper untouched

    compressed = LongreadPostprocessor(FirstSentence(), ctx).postprocess_nodes(nodes, q)
    assert [n.node.node_id for n in compressed] == ["n1", "n3"]  # n2 filtered out
    cut, kept = compressed[0], compressed[1]
    assert kept is nodes[2] and kept.score is None  # one sentence already: not rewritten, score left as given
    assert cut.node is not nodes[0].node and cut.score == 0.9
    assert cut.node.get_content() == "Holidays are booked in the portal."
    _same_but_text(cut.node, before[0])
    assert cut.node.metadata == {**before[0].metadata, ORIGINAL_TEXT_KEY: before[0].text}
    assert cut.node.excluded_llm_metadata_keys == ["tags", ORIGINAL_TEXT_KEY]
    assert cut.node.excluded_embed_metadata_keys == ["extra", ORIGINAL_TEXT_KEY]
    shown = cut.node.get_content(MetadataMode.LLM)
    assert shown.startswith("<<file_name=handbook.pdf") and "Ask your manager" not in shown and "tags=" not in shown

    # Rewritten twice: the first original is kept. The caller's nodes never changed.
    again = LongreadPostprocessor(FirstSentence(), ctx).postprocess_nodes([NodeWithScore(node=cut.node.model_copy(update={"text": "Holidays. Portal."}))], q)
    assert again[0].node.metadata[ORIGINAL_TEXT_KEY] == before[0].text
    for n, b in zip(nodes, before):
        assert n.node.model_dump() == b.model_dump()


def test_query_engine_with_retriever_and_postprocessor_keeps_provenance(folder_index) -> None:
    pipe, idx, _ = folder_index
    ctx = pipe.context(idx)
    engine = RetrieverQueryEngine.from_args(
        LongreadRetriever(pipe.stages[0], ctx), llm=MockLLM(max_tokens=8), node_postprocessors=[LongreadPostprocessor(FirstSentence(), ctx)]
    )
    resp = engine.query("Which vault code does the night guard know?")
    assert resp.source_nodes and all(n.node.ref_doc_id in {"reports/q1.pdf", "notes.md"} for n in resp.source_nodes)
    vault = next(n.node for n in resp.source_nodes if "4417" in n.node.get_content())
    assert vault.metadata["source"] == "reports/q1.pdf" and vault.metadata["page"] == 3


class SlowRetriever(Stage):
    """Test retriever that blocks until ``release`` is set (or 5 s pass) and records which."""

    key: ClassVar[str] = "retriever.test_slow"

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()
        self.released_by_other_coroutine: bool | None = None

    def setup(self, ctx) -> None:
        self.chunks = ctx.require_store().chunks

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        self.started.set()
        self.released_by_other_coroutine = self.release.wait(timeout=5)
        for s in batch:
            s.passages = [Passage(chunk=self.chunks[0], score=1.0)]
        return batch


def test_aretrieve_leaves_the_event_loop_free(folder_index) -> None:
    pipe, idx, _ = folder_index
    stage = SlowRetriever()
    retriever = LongreadRetriever(stage, pipe.context(idx))
    ticks: list[float] = []

    async def other() -> None:
        # Progresses only if the loop is free while the stage blocks; then lets the stage finish.
        while not stage.started.is_set():
            await asyncio.sleep(0.005)
        for _ in range(3):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)
        stage.release.set()

    async def main() -> list[NodeWithScore]:
        nodes, _ = await asyncio.gather(retriever.aretrieve("anything"), other())
        return nodes

    nodes = asyncio.run(main())
    assert stage.released_by_other_coroutine is True and len(ticks) == 3
    assert nodes[0].node.node_id == stage.chunks[0].id and nodes[0].node.ref_doc_id == stage.chunks[0].doc_id


def test_documents_from_llama_keeps_json_metadata_and_refuses_the_rest(tmp_path: Path) -> None:
    meta = {"title": "Paris", "tags": ["capital", "europe"], "geo": {"lat": 48.86, "names": ("Paris", "Lutetia")}, "n": None}
    docs = documents_from_llama(
        [
            LIDocument(text="Paris is the capital of France, on the river Seine.", id_="paris", metadata=meta),
            TextNode(id_="nile", text="The Nile is the longest river in Africa."),
        ]
    )
    assert docs[0].title == "Paris" and docs[0].meta == {**meta, "geo": {"lat": 48.86, "names": ["Paris", "Lutetia"]}}
    assert docs[1].meta == {} and docs[1].text.startswith("The Nile")

    pipe = Pipeline.from_config({"name": "li", "chunker": {"kind": "whole"}, "stages": [{"key": "retriever.bm25", "params": {"top_k": 1}}]})
    pipe.index(docs, tmp_path / "idx", show_progress=False)
    (hit,) = LongreadRetriever(pipe.stages[0], pipe.context(tmp_path / "idx")).retrieve("capital of France")
    assert hit.node.ref_doc_id == "paris" and hit.node.metadata["geo"]["names"] == ["Paris", "Lutetia"]
    assert hit.node.metadata["tags"] == ["capital", "europe"]

    bad = {"ok": [1, 2], "when": datetime.date(2024, 1, 2), "ids": {1: "x"}, "ratio": float("nan"), "s": {"a"}}
    with pytest.raises(ValueError, match=r"node 'b'.*'when' \(a date\).*'ids' \(dict key 1.*'ratio'.*'s' \(a set\)"):
        documents_from_llama([TextNode(id_="b", text="x", metadata=bad)])


def test_skip_bad_metadata_drops_it_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    nodes = [TextNode(id_="a", text="alpha", metadata={"ok": 1, "when": datetime.date(2024, 1, 2)}),
             TextNode(id_="b", text="beta", metadata={"s": {1, 2}})]
    with caplog.at_level(logging.WARNING, logger="longread.integrations.llama_index"):
        docs = documents_from_llama(nodes, skip_bad_metadata=True)
    assert [d.meta for d in docs] == [{"ok": 1}, {}]
    (rec,) = caplog.records
    assert "node 'a': 'when' (a date)" in rec.getMessage() and "node 'b': 's' (a set)" in rec.getMessage()


def test_bad_nodes_and_stages_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        documents_from_llama([TextNode(id_="a", text="x"), TextNode(id_="a", text="y")])
    with pytest.raises(ValueError, match="node 'e'.*must not be empty"):
        documents_from_llama([TextNode(id_="e", text="  ")])
    with pytest.raises(ValueError, match="retriever"):
        LongreadRetriever(Pipeline.from_config({"name": "x", "stages": [{"key": "reader.echo"}]}).stages[0], None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reorder"):
        LongreadPostprocessor(SlowRetriever(), None, already_setup=True)  # type: ignore[arg-type]
    post = LongreadPostprocessor(Inventor(), None, already_setup=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query-aware"):
        post.postprocess_nodes(_user_nodes())
    with pytest.raises(ValueError, match="compressor.test_inventor returned passage 'made-up', which was not among"):
        post.postprocess_nodes(_user_nodes(), QueryBundle("q"))


class Inventor(Stage):
    """Test compressor that replaces what it is given with a passage of its own."""

    key: ClassVar[str] = "compressor.test_inventor"

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        for s in batch:
            s.passages = [Passage(chunk=s.passages[0].chunk.model_copy(update={"id": "made-up"}), score=1.0)]
        return batch
