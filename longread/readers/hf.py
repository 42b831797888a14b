"""Readers on Hugging Face causal LMs: ``reader.hf`` (RAG) and ``reader.long_context``.

Both render a short-answer prompt through the model's chat template, decode greedily in
left-padded batches (:mod:`longread.readers.generate`) and set ``state.answer``. Trace keys:
``reader_tokens`` (prompt tokens), ``ttft_s``, ``new_tokens``, ``reader_truncated`` and the
per-stage counters ``llm_calls`` / ``llm_tokens`` (prompt + generated tokens).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..registry import register
from ..stage import Params, RunContext, Stage, timed
from ..types import QAState
from .generate import chat_prompts, generate

__all__ = ["HFReader", "LongContextReader", "clean_answer", "head_tail", "RAG_INSTRUCTION", "LONG_INSTRUCTION"]

RAG_INSTRUCTION = (
    "Answer the question using the passages below. Reply with only the answer, as a short phrase "
    "of a few words, with no explanation."
)
LONG_INSTRUCTION = (
    "Answer the question using the document below. Reply with only the answer, as a short phrase "
    "of a few words, with no explanation."
)

_PREFIX = re.compile(r"^\s*(final answer|answer)\s*[:\-]\s*", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """Normalise a generated answer for output: first non-empty line, no "Answer:" prefix,
    no wrapping quotes, and no trailing period unless it ends an abbreviation ("U.S.")."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    ans = _PREFIX.sub("", lines[0]).strip()
    if len(ans) >= 2 and ans[0] == ans[-1] and ans[0] in "\"'":
        ans = ans[1:-1].strip()
    if ans.endswith(".") and not ans.endswith(".."):
        last = ans.rsplit(maxsplit=1)[-1][:-1]
        # "U.S." / "a.m." keep their final dot; "Zorbatown." and "3.5." lose it.
        if "." not in last or re.fullmatch(r"[\d.,]+", last):
            ans = ans[:-1].rstrip()
    return ans


def head_tail(ids: list[int], budget: int) -> list[int]:
    """Keep the first and last halves of ``ids`` within ``budget`` tokens (LongBench's truncation)."""
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return ids
    head = budget // 2
    tail = budget - head
    return ids[:head] + ids[len(ids) - tail :]


class _ReaderParams(Params):
    model: str = Field(default="qwen2.5-0.5b-instruct", description="model name, pack or local directory")
    max_new_tokens: int = Field(default=32, description="greedy decoding limit per answer")
    max_context_tokens: int = Field(default=2048, description="token budget for the passages / document")
    batch_size: int = Field(default=4, description="prompts per generation batch")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f"model must be a non-empty name, got {v!r}")
        return v

    @field_validator("max_new_tokens")
    @classmethod
    def _mnt(cls, v: int) -> int:
        if not 1 <= v <= 4096:
            raise ValueError(f"max_new_tokens must be in 1..4096, got {v}")
        return v

    @field_validator("max_context_tokens")
    @classmethod
    def _mct(cls, v: int) -> int:
        if v < 16:
            raise ValueError(f"max_context_tokens must be >= 16, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _bs(cls, v: int) -> int:
        if not 1 <= v <= 1024:
            raise ValueError(f"batch_size must be in 1..1024, got {v}")
        return v


class _BaseReader(Stage):
    """Shared loading, budgeting, generation and trace bookkeeping."""

    instruction: ClassVar[str] = RAG_INSTRUCTION

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.model = None
        self.tokenizer = None

    def setup(self, ctx: RunContext) -> None:
        """Load the model and tokenizer through ``ctx.models`` (once per hub)."""
        self.model, self.tokenizer = ctx.models.causal_lm(self.params.model)
        self.ctx = ctx

    def _require_setup(self) -> None:
        if self.model is None:
            raise RuntimeError(f"{self.key}: call setup(ctx) before answering")

    def _ids(self, text: str) -> list[int]:
        # verbose=False: documents longer than the model window are expected here (we cut them).
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _window(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 2048))

    def _message(self, context: str, question: str) -> list[dict]:
        return [{"role": "user", "content": f"{self.instruction}\n\n{context}\n\nQuestion: {question}\nAnswer:"}]

    def _budget(self, question: str) -> int:
        """Context tokens allowed: the param, capped so prompt + answer fit the model window."""
        overhead = len(self._ids(chat_prompts(self.tokenizer, [self._message("", question)])[0]))
        return max(0, min(self.params.max_context_tokens, self._window() - overhead - self.params.max_new_tokens))

    def _context(self, state: QAState) -> tuple[str, bool]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Answer each state in the batch; sets ``answer`` and the reader trace keys."""
        self._require_setup()
        with timed(batch, self.key):
            contexts = [self._context(s) for s in batch]
            convs = [self._message(c, s.question.question) for (c, _), s in zip(contexts, batch)]
            prompts = chat_prompts(self.tokenizer, convs)
            gens = generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=self.params.max_new_tokens,
                batch_size=self.params.batch_size,
            )
        for s, (ctx_text, truncated), g in zip(batch, contexts, gens):
            s.context = ctx_text
            s.answer = clean_answer(g.text)
            t = s.trace
            t["raw_answer"] = g.text
            t["reader_tokens"] = t.get("reader_tokens", 0) + g.prompt_tokens
            t["ttft_s"] = g.ttft_s
            t["new_tokens"] = t.get("new_tokens", 0) + g.new_tokens
            t["reader_truncated"] = truncated
            calls = t.setdefault("llm_calls", {})
            calls[self.key] = calls.get(self.key, 0) + 1
            toks = t.setdefault("llm_tokens", {})
            toks[self.key] = toks.get(self.key, 0) + g.prompt_tokens + g.new_tokens
        return batch


class HFReaderParams(_ReaderParams):
    """Params of ``reader.hf``: model, decoding limit, passage count and token budget, batch size."""

    max_passages: int = Field(default=5, description="use at most this many passages, best first")

    @field_validator("max_passages")
    @classmethod
    def _mp(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_passages must be >= 1, got {v}")
        return v


@register
class HFReader(_BaseReader):
    """RAG reader: numbered passages (best first) + question → short answer.

    Passages are added in order until ``max_context_tokens`` (capped by the model window) is
    spent; the passage that overflows is cut in token space and later ones are dropped, and
    ``trace["reader_truncated"]`` records that it happened.
    """

    key: ClassVar[str] = "reader.hf"
    Params: ClassVar[type[Params]] = HFReaderParams

    def _context(self, state: QAState) -> tuple[str, bool]:
        budget = self._budget(state.question.question)
        parts: list[str] = []
        truncated = False
        for n, p in enumerate(state.passages[: self.params.max_passages], start=1):
            label = f"[{n}] "
            text = p.chunk.text.strip()
            need = len(self._ids(f"{label}{text}\n\n"))
            if need <= budget:
                parts.append(f"{label}{text}")
                budget -= need
                continue
            truncated = True
            room = budget - len(self._ids(f"{label}\n\n"))
            if room >= 8:  # a few tokens of a passage would only add noise
                parts.append(label + self.tokenizer.decode(self._ids(text)[:room]))
            break
        context = "\n\n".join(parts) if parts else "(no passages)"
        return context, truncated


class LongContextParams(_ReaderParams):
    """Params of ``reader.long_context``: the model reads whole documents, head+tail truncated."""

    max_context_tokens: int = Field(default=4096, description="token budget for the document(s)")


@register
class LongContextReader(_BaseReader):
    """Long-context reader: the question's whole document(s) + question → short answer.

    The documents are ``question.doc_ids`` from the indexed corpus, joined in order. When they
    exceed the budget (``max_context_tokens``, capped by the model window) the middle is cut
    in token space, keeping the first and last halves, as LongBench does.
    """

    key: ClassVar[str] = "reader.long_context"
    Params: ClassVar[type[Params]] = LongContextParams
    instruction: ClassVar[str] = LONG_INSTRUCTION

    def setup(self, ctx: RunContext) -> None:
        """Load the model, and check that the corpus is open."""
        super().setup(ctx)
        self.store = ctx.require_store()

    def _context(self, state: QAState) -> tuple[str, bool]:
        q = state.question
        if not q.doc_ids:
            raise ValueError(f"{self.key}: question {q.id!r} has no doc_ids; the long-context reader needs its document(s)")
        texts = []
        for d in q.doc_ids:
            doc = self.store.documents.get(d)
            if doc is None:
                raise KeyError(f"{self.key}: question {q.id!r} names document {d!r}, which is not in the index")
            texts.append(f"{doc.title}\n{doc.text}" if doc.title else doc.text)
        text = "\n\n".join(t.strip() for t in texts)
        budget = self._budget(q.question)
        ids = self._ids(text)
        if len(ids) <= budget:
            return text, False
        return self.tokenizer.decode(head_tail(ids, budget)), True
