"""LlamaIndex interop: a longread retriever inside a RetrieverQueryEngine, no API key needed."""

from __future__ import annotations

from pathlib import Path

from llama_index.core import Document as LIDocument
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import QueryBundle, TextNode

from longread.integrations.llama_index import LongreadPostprocessor, LongreadRetriever, documents_from_llama
from longread.pipelines.pipeline import Pipeline

TEXTS = {
    "paris": "Paris is the capital of France, on the river Seine.",
    "nile": "The Nile is the longest river in Africa.",
    "moon": "Apollo 11 landed on the Moon in July 1969, far from any river.",
}


def _pipe(tmp_path: Path) -> tuple[Pipeline, Path]:
    docs = documents_from_llama([LIDocument(text=t, id_=i, metadata={"title": i.title()}) for i, t in TEXTS.items()])
    assert [d.id for d in docs] == list(TEXTS) and docs[0].title == "Paris"
    pipe = Pipeline.from_config(
        {
            "name": "li",
            "chunker": {"kind": "whole"},
            "stages": [{"key": "retriever.bm25", "params": {"top_k": 2}}, {"key": "reorder.hard_negative", "params": {"mode": "reverse"}}],
        }
    )
    pipe.index(docs, tmp_path / "idx", show_progress=False)
    return pipe, tmp_path / "idx"


def test_query_engine_on_a_longread_retriever(tmp_path: Path) -> None:
    pipe, idx = _pipe(tmp_path)
    ctx = pipe.context(idx)
    retriever = LongreadRetriever(pipe.stages[0], ctx)
    nodes = retriever.retrieve("Which river is the longest in Africa?")
    assert nodes[0].node.metadata["doc_id"] == "nile" and nodes[0].score > nodes[1].score
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    resp = engine.query("Which river is the longest in Africa?")
    assert resp.source_nodes[0].node.node_id.startswith("nile")


def test_reorder_stage_as_a_node_postprocessor(tmp_path: Path) -> None:
    pipe, idx = _pipe(tmp_path)
    ctx = pipe.context(idx)
    retriever = LongreadRetriever(pipe.stages[0], ctx)
    post = LongreadPostprocessor(pipe.stages[1], ctx)
    q = "Which river did Apollo 11 see from the Moon?"
    nodes = retriever.retrieve(q)
    assert len(nodes) == 2
    out = post.postprocess_nodes(nodes, QueryBundle(q))
    assert [n.node.node_id for n in out] == [n.node.node_id for n in reversed(nodes)]


def test_text_nodes_are_a_corpus_and_bad_ones_are_refused() -> None:
    docs = documents_from_llama([TextNode(id_="a", text="alpha"), TextNode(id_="b", text="beta")])
    assert [d.text for d in docs] == ["alpha", "beta"]
    import pytest

    with pytest.raises(ValueError, match="duplicate"):
        documents_from_llama([TextNode(id_="a", text="x"), TextNode(id_="a", text="y")])
    with pytest.raises(ValueError, match="retriever"):
        LongreadRetriever(Pipeline.from_config({"name": "x", "stages": [{"key": "reader.echo"}]}).stages[0], None)  # type: ignore[arg-type]
