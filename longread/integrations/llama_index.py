"""LlamaIndex interop: longread retrievers as ``BaseRetriever``, other stages as node postprocessors,
and LlamaIndex ``Document``/``TextNode`` lists as a longread corpus.

```python
pipe = Pipeline.from_yaml("configs/rag_bm25.yaml"); pipe.index(documents_from_llama(docs), "idx")
retriever = LongreadRetriever(pipe.stages[0], pipe.context("idx"))
engine = RetrieverQueryEngine.from_args(retriever, llm=my_llm,
                                        node_postprocessors=[LongreadPostprocessor(pipe.stages[1], pipe.context("idx"))])
```

- Retrieved nodes carry their provenance: ``ref_doc_id`` (a SOURCE relationship to the longread
  document), ``source``/``page``/``pages``/``heading`` for loaded files, ``doc_id``/``chunk_id``/
  ``start``/``end``, and the document's own metadata (see :func:`passage_to_node`).
- The postprocessor hands back the caller's own nodes, reordered and filtered; a node whose text
  a stage rewrote (a compressor) is a copy with the new text that keeps everything else and puts
  the old text under :data:`ORIGINAL_TEXT_KEY` (see :class:`LongreadPostprocessor`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import uuid
from typing import Any, Iterable

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    ObjectType,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import ValidationError

from ..citations import chunk_provenance
from ..stage import RunContext, Stage
from ..types import Chunk, Document, Passage, Provenance, QAState, Question

__all__ = [
    "LongreadRetriever",
    "LongreadPostprocessor",
    "documents_from_llama",
    "passage_to_node",
    "node_to_passage",
    "ORIGINAL_TEXT_KEY",
]

log = logging.getLogger("longread.integrations.llama_index")

#: Metadata key of a rewritten (compressed) node that holds the text it had before.
ORIGINAL_TEXT_KEY = "longread_original_text"

# Offset tables a loader writes into ``Document.meta``: a node gets what they mean for its span
# (``page``, ``pages``, ``heading``) instead of a copy of the whole table (1,000 entries for a
# 1,000-page PDF).
_OFFSET_TABLES = ("page_starts", "headings")
# Bookkeeping a node carries for code, not for the LLM or the embedder.
_HIDDEN = ("doc_id", "chunk_id", "start", "end", "sha256", "format", "encoding", "n_pages")


def documents_from_llama(items: Iterable[BaseNode], *, skip_bad_metadata: bool = False) -> list[Document]:
    """Convert LlamaIndex ``Document``s or ``TextNode``s to longread ``Document``s.

    Ids are kept; ``metadata`` is kept when its values are JSON (``str``, finite numbers, ``bool``,
    ``None``, and lists/tuples/dicts of those with string keys; tuples become lists), since the
    index stores it as JSON. ``metadata["title"]``, when a string, becomes the title.

    Raises ``ValueError`` for a node with empty text, a bad or duplicate id, or metadata values
    that are not JSON (naming the node and the keys); with ``skip_bad_metadata=True`` such values
    are dropped instead and one warning lists every node and key dropped.
    """
    out: list[Document] = []
    seen: set[str] = set()
    dropped: dict[str, list[str]] = {}
    for n in items:
        nid = n.node_id
        if nid in seen:
            raise ValueError(f"duplicate LlamaIndex node id {nid!r}")
        seen.add(nid)
        meta: dict[str, Any] = {}
        bad: list[str] = []
        for k, v in (n.metadata or {}).items():
            try:
                meta[str(k)] = _json_value(v)
            except TypeError as e:
                bad.append(f"{k!r} ({e})")
        if bad and not skip_bad_metadata:
            raise ValueError(
                f"LlamaIndex node {nid!r}: metadata {', '.join(bad)} is not JSON and cannot be indexed; "
                "convert it to str/number/list/dict, or pass skip_bad_metadata=True to drop it"
            )
        if bad:
            dropped[nid] = bad
        title = meta.get("title") if isinstance(meta.get("title"), str) else None
        try:
            out.append(Document(id=nid, text=n.get_content(MetadataMode.NONE), title=title, meta=meta))
        except ValidationError as e:  # one line that names the node
            why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValueError(f"LlamaIndex node {nid!r}: {why}") from None
    if dropped:
        log.warning(
            "documents_from_llama dropped metadata that is not JSON: %s",
            "; ".join(f"node {nid!r}: {', '.join(keys)}" for nid, keys in dropped.items()),
        )
    return out


def _json_value(v: Any, depth: int = 0) -> Any:
    """``v`` as plain JSON (tuples as lists); ``TypeError`` saying what is not JSON."""
    if depth > 64:
        raise TypeError("nested more than 64 levels (a cycle?)")
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise TypeError(f"{v!r} is not a finite number")
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x, depth + 1) for x in v]
    if isinstance(v, dict):
        for k in v:
            if not isinstance(k, str):
                raise TypeError(f"dict key {k!r} is a {type(k).__name__}, not a str")
        return {k: _json_value(x, depth + 1) for k, x in v.items()}
    raise TypeError(f"a {type(v).__name__}")


def passage_to_node(p: Passage, document: Document | None = None) -> NodeWithScore:
    """A longread passage as a scored LlamaIndex ``TextNode`` with its provenance.

    The node's id is the chunk id, its text the passage text, ``start_char_idx``/``end_char_idx``
    the chunk's span, and ``ref_doc_id`` the document id (a SOURCE relationship). Metadata:
    ``doc_id``, ``chunk_id``, ``start``, ``end`` and, given the chunk's ``document``, that
    document's ``meta`` (less its offset tables ``page_starts``/``headings``) and ``title`` plus,
    where known, ``source``, ``page`` (the first page), ``pages`` (every page the span touches)
    and ``heading`` (the chunk's provenance, else derived from ``document``); longread's keys win
    over a document key of the same name. The bookkeeping
    keys are hidden from the LLM and the embedder; ``source``, ``page(s)``, ``heading`` and
    ``title`` are shown so an answer can cite them.
    """
    c = p.chunk
    meta: dict[str, Any] = {}
    if document is not None:
        meta.update({k: v for k, v in document.meta.items() if k not in _OFFSET_TABLES})
        if document.title is not None:
            meta.setdefault("title", document.title)
    prov = chunk_provenance(c, document)
    if prov.source is not None:
        meta["source"] = prov.source
    if prov.pages:
        meta["page"], meta["pages"] = prov.pages[0], list(prov.pages)
    if prov.heading is not None:
        meta["heading"] = prov.heading
    meta.update({"doc_id": c.doc_id, "chunk_id": c.id, "start": c.start, "end": c.end})
    hidden = [k for k in _HIDDEN if k in meta]
    node = TextNode(
        id_=c.id,
        text=p.text,
        metadata=meta,
        start_char_idx=c.start,
        end_char_idx=c.end,
        excluded_llm_metadata_keys=hidden,
        excluded_embed_metadata_keys=list(hidden),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=c.doc_id, node_type=ObjectType.DOCUMENT)},
    )
    return NodeWithScore(node=node, score=p.score)


def node_to_passage(n: NodeWithScore, chunk_id: str | None = None) -> Passage:
    """A scored LlamaIndex node as a longread passage (chunk id ``chunk_id`` or the node id).

    The document id is ``metadata["doc_id"]`` when a string (nodes from :class:`LongreadRetriever`),
    else ``ref_doc_id``, else the node id; the span is ``start_char_idx``/``end_char_idx``, else
    integer ``metadata["start"]``/``["end"]``, else the node's whole text. A missing score is 0.
    The chunk's provenance is the node's ``source``/``page``/``pages``/``heading`` metadata (what
    :func:`passage_to_node` writes), None without any.
    """
    node = n.node
    text = node.get_content(MetadataMode.NONE)
    md = node.metadata or {}
    doc_id = md.get("doc_id") if isinstance(md.get("doc_id"), str) else (node.ref_doc_id or node.node_id)
    start, end = getattr(node, "start_char_idx", None), getattr(node, "end_char_idx", None)
    if not _is_span(start, end):
        start, end = md.get("start"), md.get("end")
    if not _is_span(start, end):
        start, end = 0, len(text)
    chunk = Chunk(id=chunk_id or node.node_id, doc_id=str(doc_id), text=text, start=start, end=end, provenance=_node_provenance(md))
    return Passage(chunk=chunk, text=text, score=float(n.score if n.score is not None else 0.0))


def _node_provenance(md: dict[str, Any]) -> Provenance | None:
    """longread's own provenance keys of a node's metadata (what :func:`passage_to_node` wrote)."""
    source, heading = md.get("source"), md.get("heading")
    pages = md.get("pages")
    if not (isinstance(pages, list) and pages and all(type(x) is int and x >= 1 for x in pages)):
        pages = [md["page"]] if type(md.get("page")) is int and md["page"] >= 1 else []
    source = source if isinstance(source, str) else None
    heading = heading if isinstance(heading, str) else None
    if source is None and heading is None and not pages:
        return None
    return Provenance(source=source, pages=pages, heading=heading)


def _is_span(start: Any, end: Any) -> bool:
    return (type(start) is int and type(end) is int) and 0 <= start <= end


def _state(query: QueryBundle, passages: list[Passage] | None = None) -> QAState:
    q = Question(id=f"llama-{uuid.uuid4().hex[:12]}", question=query.query_str)
    return QAState(question=q, passages=passages or [])


def _run(stage: Stage, lock: threading.Lock, state: QAState) -> QAState:
    # Stages are not promised to be thread-safe (a fast tokenizer raises "Already borrowed" when
    # two threads share it), and the async paths run them in worker threads: one call at a time.
    with lock:
        (out,) = stage([state])
    return out


class LongreadRetriever(BaseRetriever):
    """A longread retriever stage (``retriever.*``) as a LlamaIndex retriever.

    ``setup`` is called on the stage with ``ctx`` unless ``already_setup``. Nodes are built by
    :func:`passage_to_node` with each chunk's document from ``ctx.store`` (provenance metadata
    and ``ref_doc_id``). ``aretrieve`` runs the retrieval in a worker thread so the event loop
    goes on; calls to the stage are serialised. Raises ``ValueError`` for a non-retriever stage.
    """

    def __init__(self, stage: Stage, ctx: RunContext, *, already_setup: bool = False, **kwargs: Any) -> None:
        if not stage.key.startswith("retriever."):
            raise ValueError(f"LongreadRetriever wraps a retriever.* stage, got {stage.key!r}")
        super().__init__(**kwargs)
        if not already_setup:
            stage.setup(ctx)
        self._stage, self._ctx, self._lock = stage, ctx, threading.Lock()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        state = _run(self._stage, self._lock, _state(query_bundle))
        docs = self._ctx.store.documents if self._ctx is not None and self._ctx.store is not None else {}
        return [passage_to_node(p, docs.get(p.chunk.doc_id)) for p in state.passages]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


class LongreadPostprocessor(BaseNodePostprocessor):
    """A longread rerank/compress/reorder stage as a LlamaIndex node postprocessor.

    Returns the caller's own nodes in the stage's order, without those it dropped:

    - a node the stage kept as it was comes back as the same ``NodeWithScore`` (or, when the stage
      gave it a new score, a new ``NodeWithScore`` around the same node object);
    - a node whose text the stage rewrote (a compressor) comes back as a copy of the node with the
      new text and everything else kept (id, metadata, relationships, excluded metadata keys,
      templates, char span); its metadata gains :data:`ORIGINAL_TEXT_KEY` with the text it had
      before (the first one, when rewritten twice), hidden from the LLM and the embedder so the
      reader sees only the rewritten text. The caller's node is not changed.

    Raises ``ValueError`` for a stage of another kind, a missing query, or a stage that returns a
    passage it was not given.
    """

    _stage: Any = PrivateAttr()
    _lock: Any = PrivateAttr()

    def __init__(self, stage: Stage, ctx: RunContext, *, already_setup: bool = False, **kwargs: Any) -> None:
        kind = stage.key.split(".", 1)[0]
        if kind not in {"reranker", "compressor", "reorder"}:
            raise ValueError(f"LongreadPostprocessor wraps reranker.*, compressor.* or reorder.* stages, got {stage.key!r}")
        super().__init__(**kwargs)
        if not already_setup:
            stage.setup(ctx)
        self._stage, self._lock = stage, threading.Lock()

    @classmethod
    def class_name(cls) -> str:
        return "LongreadPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("longread stages are query-aware: pass a query bundle")
        if not nodes:
            return []
        # Passages get ids unique within this call, so a node given twice maps back to itself.
        given: dict[str, tuple[NodeWithScore, Passage]] = {}
        for i, n in enumerate(nodes):
            pid = n.node.node_id
            while pid in given:
                pid = f"{pid}#{i}"
            given[pid] = (n, node_to_passage(n, pid))
        state = _run(self._stage, self._lock, _state(query_bundle, [p.model_copy(deep=True) for _, p in given.values()]))
        out: list[NodeWithScore] = []
        for p in state.passages:
            if p.chunk.id not in given:
                raise ValueError(
                    f"{self._stage.key} returned passage {p.chunk.id!r}, which was not among the nodes it was given; "
                    "LongreadPostprocessor only reorders, filters and rewrites the caller's nodes"
                )
            n, before = given[p.chunk.id]
            text = p.text
            score = n.score if p.score == before.score else p.score  # a node given without a score keeps None
            if text != before.text:
                out.append(NodeWithScore(node=_rewritten(n.node, before.text, text), score=score))
            elif score != n.score:
                out.append(NodeWithScore(node=n.node, score=score))
            else:
                out.append(n)
        return out


def _rewritten(node: BaseNode, old: str, new: str) -> BaseNode:
    """A copy of ``node`` with text ``new`` and the text it had in ``ORIGINAL_TEXT_KEY``."""
    copy = node.model_copy(deep=True)  # deep: the caller's metadata dict and key lists stay as they were
    copy.set_content(new)
    copy.metadata.setdefault(ORIGINAL_TEXT_KEY, old)
    for keys in (copy.excluded_llm_metadata_keys, copy.excluded_embed_metadata_keys):
        if ORIGINAL_TEXT_KEY not in keys:
            keys.append(ORIGINAL_TEXT_KEY)
    return copy
