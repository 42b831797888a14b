"""LlamaIndex interop: longread retrievers as ``BaseRetriever``, other stages as node postprocessors,
and LlamaIndex ``Document``/``TextNode`` lists as a longread corpus.

```python
pipe = Pipeline.from_yaml("configs/rag_bm25.yaml"); pipe.index(documents_from_llama(docs), "idx")
retriever = LongreadRetriever(pipe.stages[0], pipe.context("idx"))
engine = RetrieverQueryEngine.from_args(retriever, llm=my_llm,
                                        node_postprocessors=[LongreadPostprocessor(pipe.stages[1], pipe.context("idx"))])
```
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode

from ..stage import RunContext, Stage
from ..types import Chunk, Document, Passage, QAState, Question

__all__ = ["LongreadRetriever", "LongreadPostprocessor", "documents_from_llama", "passage_to_node", "node_to_passage"]


def documents_from_llama(items: Iterable[BaseNode]) -> list[Document]:
    """Convert LlamaIndex ``Document``s or ``TextNode``s to longread ``Document``s (ids and metadata kept).

    Raises ``ValueError`` for a node with empty text or a duplicate id.
    """
    out: list[Document] = []
    seen: set[str] = set()
    for n in items:
        nid = n.node_id
        if nid in seen:
            raise ValueError(f"duplicate LlamaIndex node id {nid!r}")
        seen.add(nid)
        meta = {k: v for k, v in (n.metadata or {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
        title = meta.get("title") if isinstance(meta.get("title"), str) else None
        out.append(Document(id=nid, text=n.get_content(), title=title, meta=meta))
    return out


def passage_to_node(p: Passage) -> NodeWithScore:
    """A longread passage as a scored LlamaIndex ``TextNode`` (doc id and offsets in metadata)."""
    c = p.chunk
    node = TextNode(id_=c.id, text=c.text, metadata={"doc_id": c.doc_id, "start": c.start, "end": c.end})
    return NodeWithScore(node=node, score=p.score)


def node_to_passage(n: NodeWithScore) -> Passage:
    """A scored LlamaIndex node as a longread passage (offsets from metadata when present)."""
    node = n.node
    text = node.get_content()
    md = node.metadata or {}
    doc_id = str(md.get("doc_id") or getattr(node, "ref_doc_id", None) or node.node_id)
    start = int(md.get("start", 0))
    end = int(md.get("end", start + len(text)))
    chunk = Chunk(id=node.node_id, doc_id=doc_id, text=text, start=start, end=end)
    return Passage(chunk=chunk, score=float(n.score if n.score is not None else 0.0))


def _state(query: QueryBundle, passages: list[Passage] | None = None) -> QAState:
    q = Question(id=f"llama-{uuid.uuid4().hex[:12]}", question=query.query_str)
    return QAState(question=q, passages=passages or [])


def _run(stage: Stage, state: QAState) -> QAState:
    (out,) = stage([state])
    return out


class LongreadRetriever(BaseRetriever):
    """A longread retriever stage (``retriever.*``) as a LlamaIndex retriever.

    ``setup`` is called on the stage with ``ctx`` unless ``already_setup``.
    """

    def __init__(self, stage: Stage, ctx: RunContext, *, already_setup: bool = False, **kwargs: Any) -> None:
        if not stage.key.startswith("retriever."):
            raise ValueError(f"LongreadRetriever wraps a retriever.* stage, got {stage.key!r}")
        super().__init__(**kwargs)
        if not already_setup:
            stage.setup(ctx)
        self._stage = stage

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [passage_to_node(p) for p in _run(self._stage, _state(query_bundle)).passages]


class LongreadPostprocessor(BaseNodePostprocessor):
    """A longread rerank/compress/reorder stage as a LlamaIndex node postprocessor."""

    _stage: Any = PrivateAttr()

    def __init__(self, stage: Stage, ctx: RunContext, *, already_setup: bool = False, **kwargs: Any) -> None:
        kind = stage.key.split(".", 1)[0]
        if kind not in {"reranker", "compressor", "reorder"}:
            raise ValueError(f"LongreadPostprocessor wraps reranker.*, compressor.* or reorder.* stages, got {stage.key!r}")
        super().__init__(**kwargs)
        if not already_setup:
            stage.setup(ctx)
        self._stage = stage

    @classmethod
    def class_name(cls) -> str:
        return "LongreadPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("longread stages are query-aware: pass a query bundle")
        state = _run(self._stage, _state(query_bundle, [node_to_passage(n) for n in nodes]))
        return [passage_to_node(p) for p in state.passages]
