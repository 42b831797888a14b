"""The ``reader.retrolm`` stage: page store + bounded prefill + page scoring + selection + decoding."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from ...llm.prompts import clean
from ...llm.usage import record
from ...registry import register
from ...stage import RunContext, Stage, timed
from ...types import QAState
from . import decode as _decode
from .model import KVModel
from .params import RetroLMParams
from .prefill import prefill
from .prompt import PromptLayout
from .scoring import PageScorer
from .select import fits, select_pages
from .store import FORMAT_VERSION, PagedDoc, PageStore, PageWriter, doc_key, sha

__all__ = ["RetroLMReader", "join_documents"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def join_documents(docs: list[Any]) -> str:
    """The text a question scoped to ``docs`` reads (titles first, as reader.long_context does)."""
    return "\n\n".join((f"{d.title}\n{d.text}" if d.title else d.text).strip() for d in docs)


@register
class RetroLMReader(Stage):
    """Reader that retrieves pages of the input's own KV cache and decodes from them.

    After ``setup``: ``kv`` (:class:`KVModel`), ``prompt`` (:class:`PromptLayout`), ``scorer``
    (:class:`PageScorer`) and ``store`` (:class:`PageStore`). ``stats`` counts documents and
    pages prefilled and cache hits, for tests and benchmarks.
    """

    key: ClassVar[str] = "reader.retrolm"
    Params = RetroLMParams

    def __init__(self, params: RetroLMParams | dict | None = None) -> None:
        super().__init__(params)
        self.stats = {"documents_prefilled": 0, "pages_prefilled": 0, "memory_hits": 0, "disk_hits": 0, "index_hits": 0}
        self.kv: KVModel | None = None
        self.prompt: PromptLayout | None = None
        self.scorer: PageScorer | None = None
        self.store: PageStore | None = None
        self._corpus = None

    # ------------------------------------------------------------------ setup
    def indexes(self) -> dict[str, Callable[[RunContext, Path], None]]:
        """``{part: builder}`` when ``precompute`` is set: page KV for every corpus document."""
        return {self._part_name(): self._build_part} if self.params.precompute else {}

    def _part_name(self) -> str:
        p = self.params
        h = sha([FORMAT_VERSION, p.page_size, p.sink_tokens, p.local_pages, p.instruction_text])[:12]
        return f"retrolm-{_slug(p.model)}-{h}"

    def _build_part(self, ctx: RunContext, out_dir: Path) -> None:
        self._load_model(ctx)
        for doc in ctx.require_store().documents.values():
            text = join_documents([doc])  # what a question scoped to this one document reads
            key = self.cache_key(text)
            if not (out_dir / key).is_dir():  # two documents with the same text share one
                self._build(out_dir / key, key, text)

    def setup(self, ctx: RunContext) -> None:
        """Load the model through the ``hf`` backend; open the index part (``precompute``) and the cache dir."""
        self._load_model(ctx)
        self._corpus = ctx.store
        p = self.params
        self.store = PageStore(
            device=self.kv.device, stats=self.stats, keep=p.cache, memory_docs=p.memory_docs,
            index_root=ctx.index_part(self._part_name()) if p.precompute else None,
            cache_root=Path(ctx.cache_dir) / "retrolm" / _slug(p.model) if p.cache and ctx.cache_dir is not None else None,
        )

    def _load_model(self, ctx: RunContext) -> None:
        if self.kv is not None:
            return
        from ...llm import load_backend

        p = self.params
        kv = KVModel.from_backend(load_backend(p.llm, ctx), p.model)
        self.scorer = PageScorer.create(
            kv, scorer=p.scorer, trained_path=p.trained_scorer, score_layers=p.score_layers, model=p.model,
            page_size=p.page_size,
        )
        self.prompt = PromptLayout(kv.tokenizer, p.message)
        self.kv = kv

    # ------------------------------------------------------------ the seams
    def cache_key(self, text: str) -> str:
        """The page-KV cache key of ``text`` for this reader's model and params (after ``setup``)."""
        p = self.params
        return doc_key(
            text, model_sig=self.kv.signature, dtype=self.kv.dtype, page_size=p.page_size, sink_tokens=p.sink_tokens,
            local_pages=p.local_pages, prefix_ids=self.prompt.prefix_ids,
        )

    def _build(self, final: Path, key: str, text: str) -> int:
        """Prefill ``text`` into the page-KV dir ``final`` (atomically); returns the tokens prefilled."""
        p = self.params
        doc_ids, offsets = self.prompt.document(text, p.max_input_tokens)
        meta = {"model": p.model, "page_size": str(p.page_size), "dtype": self.kv.dtype}
        with PageWriter(final, key, meta) as writer:
            prefill(self.kv, self.prompt.prefix_ids, doc_ids, offsets, writer, page_size=p.page_size,
                    sink_tokens=p.sink_tokens, local_pages=p.local_pages, stats=self.stats)
        return len(self.prompt.prefix_ids) + len(doc_ids)

    def paged(self, text: str, batch: dict[str, Any] | None = None) -> tuple[PagedDoc, int]:
        """Page KV of ``text`` (reused or prefilled now) and the tokens prefilled for it now."""
        key = self.cache_key(text)
        return self.store.get(key, lambda path: self._build(path, key, text), batch)

    def read(self, text: str) -> PagedDoc:
        """Page KV of ``text`` (prefilled now or reused); for tests and tools."""
        return self.paged(text)[0]

    def page_features(self, doc: PagedDoc, suffix_ids: list[int]) -> dict[str, Any]:
        """Scoring features of the question suffix against every page (:meth:`PageScorer.features`)."""
        return self.scorer.features(doc, suffix_ids)

    def score_pages(self, doc: PagedDoc, suffix_ids: list[int]) -> Any:
        """Relevance of every page of ``doc`` to the question suffix: float32 tensor ``[P]`` (:meth:`PageScorer.score`)."""
        return self.scorer.score(doc, suffix_ids)

    def select_pages(self, lengths: list[int], scores: Any | None) -> list[int]:
        """Indices (ascending) of pages to keep with this reader's budget (:func:`select.select_pages`)."""
        p = self.params
        return select_pages(lengths, scores, budget_tokens=p.budget_tokens, sink_tokens=p.sink_tokens,
                            recent_pages=p.recent_pages, follow_pages=p.follow_pages)

    def decode_logits(self, doc: PagedDoc, selected: list[int], suffix_ids: list[int]) -> Any:
        """Float32 logits ``[T, vocab]`` of ``suffix_ids`` read after sink + ``selected`` pages."""
        return _decode.decode_logits(self.kv, doc, selected, suffix_ids, self.params.positions)

    def generate(self, doc: PagedDoc, selected: list[int], suffix_ids: list[int], t0: float | None = None) -> tuple[Any, int]:
        """The answer decoded after sink + ``selected`` pages: ``(Decoded, KV length)`` (:func:`decode.generate`)."""
        return _decode.generate(self.kv, doc, selected, suffix_ids, self.params.positions,
                                max_new_tokens=self.params.answer_tokens, t0=t0)

    # ------------------------------------------------------------------- call
    def _input_text(self, state: QAState) -> str:
        store = self._corpus
        if store is None:
            raise RuntimeError("reader.retrolm needs the indexed corpus, but no index is open")
        ids = state.question.doc_ids
        if ids is None:
            if len(store.documents) != 1:
                raise ValueError(
                    f"question {state.question.id!r} has no doc_ids and the corpus has {len(store.documents)} "
                    "documents; reader.retrolm reads the question's scoped documents"
                )
            ids = list(store.documents)
        missing = [d for d in ids if d not in store.documents]
        if missing:
            raise KeyError(f"question {state.question.id!r}: documents {missing} are not in the index")
        return join_documents([store.documents[d] for d in ids])

    def _check_window(self, state: QAState, doc: PagedDoc, suffix: list[int]) -> None:
        n = doc.sink_len + sum(doc.lengths)
        if self.params.positions == "original" and n + len(suffix) + self.params.answer_tokens > self.kv.max_pos:
            raise ValueError(
                f"question {state.question.id!r}: input of {n} tokens does not fit {self.params.model!r}'s "
                f"{self.kv.max_pos} positions with positions='original'; use positions: compact"
            )

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Answer each question from its scoped documents' page KV; sets answer, usage and trace."""
        if self.kv is None or self.store is None:
            raise RuntimeError("reader.retrolm: call setup(ctx) before answering")
        p = self.params
        shared: dict[str, Any] = {}  # questions of one batch on one document share a prefill
        with timed(batch, self.key):
            for state in batch:
                t0 = time.perf_counter()
                doc, prefilled = self.paged(self._input_text(state), shared)
                suffix = self.prompt.suffix_ids(state.question.question)
                lengths = doc.lengths
                needs_scores = not fits(lengths, budget_tokens=p.budget_tokens, sink_tokens=p.sink_tokens)
                selected = self.select_pages(lengths, self.score_pages(doc, suffix) if needs_scores else None)
                self._check_window(state, doc, suffix)
                out, kv_len = self.generate(doc, selected, suffix, t0=t0)
                state.answer = clean(out.text, p.cleaner)
                record(state, self.key, spec=p.llm, calls=1, prompt_tokens=kv_len + len(suffix), new_tokens=out.steps,
                       prefill_tokens=prefilled, ttft_s=out.ttft_s)
                spans = doc.tensor("spans")
                state.trace.update(
                    raw_answer=out.text, decode_s=out.seconds - out.ttft_s, pages_total=doc.n_pages,
                    pages_selected=len(selected), prefill_reused=prefilled == 0, retrolm_pages=selected,
                    retrolm_spans=[spans[i].tolist() for i in selected],
                )
        return batch
