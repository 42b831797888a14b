"""Readers on the generation layer: ``reader.hf`` (RAG) and ``reader.long_context``.

Both build the answer style's prompt (``prompt:``, see :mod:`longread.llm.prompts`) as one user
message, which the backend renders with the model's chat template, generate in one batched call
and set ``state.answer``. Budgets (``max_context_tokens``, the model window) are counted with the
backend's tokenizer. Cost goes to the stage's :class:`~longread.types.Usage` record; the trace
keeps ``raw_answer`` (the model's text before cleaning) and ``reader_truncated``.

``reader.hf`` sets ``state.citations`` (see :mod:`longread.citations`): with the ``cite`` style
the passages the answer's ``[n]`` markers point at (``cited=True``), with every other style (or a
``cite`` answer without a valid marker) the passages it read (``cited=False``). A passage cut to
fit the budget is cited with the text that was read. A ``cite`` answer that is only markers
("[2][3]") gets its words from one more, ``short``-style call over the passages it marks.
``reader.long_context`` reads whole documents and cites nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..citations import citations_for
from ..llm import GenRequest, load_backend
from ..llm.params import ReaderLLMParams
from ..llm.prompts import STYLES, PromptSpec, clean, clean_answer, has_words, parse_citations, strip_citations
from ..llm.usage import record_error, record_generations
from ..registry import register
from ..stage import Params, RunContext, Stage, timed
from ..types import Citation, Passage, QAState

__all__ = ["HFReader", "LongContextReader", "clean_answer", "head_tail"]


def head_tail(ids: list[int], budget: int) -> list[int]:
    """Keep the first and last halves of ``ids`` within ``budget`` tokens (LongBench's truncation)."""
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return ids
    head = budget // 2
    tail = budget - head
    return ids[:head] + ids[len(ids) - tail :]


class _ReaderParams(ReaderLLMParams):
    max_context_tokens: int = Field(default=2048, description="token budget for the passages / document")

    @field_validator("max_context_tokens")
    @classmethod
    def _mct(cls, v: int) -> int:
        if v < 16:
            raise ValueError(f"max_context_tokens must be >= 16, got {v}")
        return v


@dataclass
class _Context:
    text: str
    truncated: bool
    shown: list[Passage] = field(default_factory=list)  # passages in prompt order: [1], [2], ...
    kept_chars: tuple[int, int] | None = None  # a cut document: characters of its head and tail read


class _BaseReader(Stage):
    """Shared loading, budgeting, generation and usage bookkeeping."""

    #: What the prompt calls its context ("passages" / "document").
    source: ClassVar[str] = "passages"
    #: A sentence added to the style's instruction (``reader.route``'s "unanswerable" clause).
    extra_instruction: str = ""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.backend = None
        self.store = None

    def setup(self, ctx: RunContext) -> None:
        """Load the backend through ``ctx`` (stages naming the same ``llm`` share it)."""
        self.backend = load_backend(self.params.llm, ctx)
        self.store = ctx.store

    def _require_setup(self) -> None:
        if self.backend is None:
            raise RuntimeError(f"{self.key}: call setup(ctx) before answering")

    def _ids(self, text: str) -> list[int]:
        return self.backend.encode(text)

    def _messages(self, context: str, question: str) -> list[dict[str, str]]:
        text = self.params.prompt_spec.message(context, question, source=self.source, extra=self.extra_instruction)
        return [{"role": "user", "content": text}]

    def _budget(self, question: str) -> int:
        """Context tokens allowed: the param, capped so prompt + answer fit the model window."""
        overhead = self.backend.count_tokens(self.backend.render(self._messages("", question)))
        p = self.params
        return max(0, min(p.max_context_tokens, self.backend.window - overhead - p.answer_tokens))

    def _context(self, state: QAState) -> _Context:  # pragma: no cover - abstract
        raise NotImplementedError

    def _citations(self, answer: str, shown: list[Passage], cites: bool) -> list[Citation]:
        """The ``[n]`` passages of a ``cite`` answer (``cited=True``); for other styles, or a
        ``cite`` answer without a valid marker, every passage shown (``cited=False``)."""
        docs = self.store.documents if self.store is not None else None
        numbers = parse_citations(answer, len(shown)) if cites else []
        if numbers:
            return citations_for(shown, docs, numbers=numbers, cited=True)
        return citations_for(shown, docs, cited=False)

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Answer each state in the batch: sets ``answer`` and ``citations``."""
        self._require_setup()
        p = self.params
        spec = p.prompt_spec
        with timed(batch, self.key):
            contexts = [self._context(s) for s in batch]
            reqs = [GenRequest(messages=self._messages(c.text, s.question.question), max_new_tokens=p.answer_tokens)
                    for c, s in zip(contexts, batch)]
            gens = self.backend.generate(reqs)
            for s, c, g in zip(batch, contexts, gens):
                s.context = c.text
                s.trace["reader_truncated"] = c.truncated
                if c.kept_chars is not None:
                    s.trace["context_kept_chars"] = list(c.kept_chars)
                if g.finish_reason == "error":
                    record_error(s, self.key, g.error, spec=p.llm)
                    continue
                record_generations(s, self.key, [g], spec=p.llm)
                s.trace["raw_answer"] = g.text
                s.answer = clean(g.text, spec.cleaner)
            if spec.cites:
                self._complete_marker_only(batch, contexts)
        for s, c in zip(batch, contexts):
            if s.answer is not None and "error" not in s.trace:
                s.citations = self._citations(s.answer, c.shown, spec.cites)
        return batch

    def _complete_marker_only(self, batch: list[QAState], contexts: list[_Context]) -> None:
        """Give words to ``cite`` answers that are nothing but markers.

        Small models often reply to the cite prompt with only "[2][3]": the right passages and no
        answer; or with "[2]" and then the first words of passage 2, copied as if the marker were the
        start of a passage. Such an answer is completed with one more call, the ``short`` style's
        question over just the passages it marks (under their numbers), into "words [2][3]"; the
        trace keeps the extra reply in ``cite_completion``.
        """
        p = self.params
        short = PromptSpec(STYLES["short"])
        todo = []
        for s, c in zip(batch, contexts):
            if s.answer is None or "error" in s.trace:
                continue
            nums = parse_citations(s.answer, len(c.shown))
            if nums and (not has_words(s.answer) or _copies_a_start(s.answer, [c.shown[n - 1].text for n in nums])):
                marked = "\n\n".join(f"[{n}] {c.shown[n - 1].text.strip()}" for n in nums)
                text = short.message(marked, s.question.question, source=self.source, extra=self.extra_instruction)
                todo.append((s, nums, GenRequest(messages=[{"role": "user", "content": text}],
                                                 max_new_tokens=STYLES["short"].max_new_tokens)))
        if not todo:
            return
        for (s, nums, _), g in zip(todo, self.backend.generate([r for _, _, r in todo])):
            if g.finish_reason == "error":
                record_error(s, self.key, g.error, spec=p.llm)
                continue
            record_generations(s, self.key, [g], spec=p.llm)
            s.trace["cite_completion"] = g.text
            words = clean_answer(g.text)
            if words:
                s.answer = f"{words} {''.join(f'[{n}]' for n in nums)}"

def _copies_a_start(answer: str, passages: list[str]) -> bool:
    """True when the answer's words are the opening words of one of ``passages`` (a recital, not an answer)."""
    words = strip_citations(answer).lower().split()
    return bool(words) and any(p.lower().split()[: len(words)] == words for p in passages)


class HFReaderParams(_ReaderParams):
    """Params of ``reader.hf``: ``llm`` (or ``model``), ``prompt`` (answer style or template),
    ``max_new_tokens`` (default: the style's), ``max_passages`` and the ``max_context_tokens``
    budget; ``batch_size`` is shorthand for ``llm.batch_size``."""

    max_passages: int = Field(default=5, description="use at most this many passages, best first")

    @field_validator("max_passages")
    @classmethod
    def _mp(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_passages must be >= 1, got {v}")
        return v


@register
class HFReader(_BaseReader):
    """RAG reader: numbered passages ``[1]..[n]`` (best first) + question → answer in the chosen style.

    Passages are added in order until ``max_context_tokens`` (capped by the model window) is
    spent; the passage that overflows is cut in token space and later ones are dropped, and
    ``trace["reader_truncated"]`` records that it happened.
    """

    key: ClassVar[str] = "reader.hf"
    Params: ClassVar[type[Params]] = HFReaderParams

    def _context(self, state: QAState) -> _Context:
        budget = self._budget(state.question.question)
        parts: list[str] = []
        shown: list[Passage] = []
        truncated = False
        for n, p in enumerate(state.passages[: self.params.max_passages], start=1):
            label = f"[{n}] "
            text = p.text.strip()
            need = len(self._ids(f"{label}{text}\n\n"))
            if need <= budget:
                parts.append(f"{label}{text}")
                shown.append(p)
                budget -= need
                continue
            truncated = True
            room = budget - len(self._ids(f"{label}\n\n"))
            if room >= 8:  # a few tokens of a passage would only add noise
                cut = self.backend.decode(self._ids(text)[:room])
                parts.append(label + cut)
                shown.append(p.model_copy(update={"text": cut}))  # a citation quotes what was read
            break
        context = "\n\n".join(parts) if parts else "(no passages)"
        return _Context(context, truncated, shown)


class LongContextParams(_ReaderParams):
    """Params of ``reader.long_context``: the model reads whole documents, head+tail truncated.
    ``prompt`` is any style but ``cite`` (there are no numbered passages to cite)."""

    max_context_tokens: int = Field(default=4096, description="token budget for the document(s)")

    @field_validator("prompt")
    @classmethod
    def _no_cite(cls, v: str) -> str:
        if v == "cite":
            raise ValueError("reader.long_context reads whole documents, not numbered passages, so it cannot "
                             "'cite'; use short, span, free or a template")
        return v


@register
class LongContextReader(_BaseReader):
    """Long-context reader: the question's whole document(s) + question → answer in the chosen style.

    The documents are ``question.doc_ids`` from the indexed corpus, joined in order. When they
    exceed the budget (``max_context_tokens``, capped by the model window) the middle is cut
    in token space, keeping the first and last halves, as LongBench does.
    """

    key: ClassVar[str] = "reader.long_context"
    Params: ClassVar[type[Params]] = LongContextParams
    source: ClassVar[str] = "document"

    def setup(self, ctx: RunContext) -> None:
        """Load the backend, and check that the corpus is open."""
        store = ctx.require_store()
        super().setup(ctx)
        self.store = store

    def _context(self, state: QAState) -> _Context:
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
            return _Context(text, False)
        kept = head_tail(ids, budget)
        head = budget // 2
        # Recorded so the answer-loss funnel can tell whether the answer survived the cut.
        kept_chars = (len(self.backend.decode(kept[:head])), len(self.backend.decode(kept[head:])))
        return _Context(self.backend.decode(kept), True, kept_chars=kept_chars)
