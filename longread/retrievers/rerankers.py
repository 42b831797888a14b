"""LLM rerankers: full-listwise, sliding-window listwise, single-token (FIRST) and pointwise.

- ``reranker.fullrank`` — one LLM call ranks *all* candidates ("Sliding Windows Are Not the
  End", Liu et al. 2024). Passages are numbered ``[1]..[n]``, cut to a word budget, and the
  model answers with a ranking ``[2] > [1] > ...`` (RankGPT's prompt, as the paper uses it).
- ``reranker.sliding`` — RankGPT's baseline: the same prompt over windows of ``window``
  passages moved back to front by ``stride``, so strong passages bubble to the top.
- ``reranker.first`` — FIRST (Reddy et al. 2024): one forward pass over the listwise prompt,
  passages ranked by the logit of their identifier as the first generated token. Needs
  identifiers that are single tokens (letters here), checked with the backend's tokenizer.
- ``reranker.pointwise`` — one forward pass per passage; score = logit("Yes") - logit("No")
  for "does this passage answer the query?".

All four talk to a model through the generation layer (``llm:``, see :mod:`longread.llm`); the
two logit rankers need a backend with next-token logits (``hf`` or ``llamacpp``), which the
config check enforces. Listwise output is parsed leniently: ids out of range and repeats are
dropped, passages the model left out follow the ranked ones in their retrieval order.
``trace["rerank_incomplete"]`` says whether the model's ranking missed any passage;
``trace["rerank_counts"][key]`` has the counts. LLM calls and tokens go to the stage's
:class:`~longread.types.Usage` record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from pydantic import field_validator, model_validator

from ..llm import GenRequest, load_backend
from ..llm.params import LLMParams
from ..llm.usage import record, record_error
from ..registry import register
from ..stage import RunContext, Stage, timed
from ..types import Passage, QAState

if TYPE_CHECKING:  # pragma: no cover
    from ..llm import Backend

__all__ = [
    "RankParse",
    "ListwiseResult",
    "ListwiseRanker",
    "parse_ranking",
    "truncate_words",
    "escape_ids",
    "listwise_messages",
    "ranking_text",
    "sliding_windows",
    "sliding_window_rank",
    "OverlapRanker",
    "LLMListwiseRanker",
    "letter_ids",
    "single_token_ids",
    "FullRankReranker",
    "SlidingWindowReranker",
    "FirstReranker",
    "PointwiseReranker",
]

SYSTEM_MESSAGE = "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."

# ---------------------------------------------------------------------------------------
# Prompt and parsing (pure functions: no model)
# ---------------------------------------------------------------------------------------

_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_DIGITS = re.compile(r"\d+")
_ID_IN_TEXT = re.compile(r"\[(\d+)\]")


def truncate_words(text: str, budget: int) -> str:
    """The first ``budget`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:budget])


def escape_ids(text: str) -> str:
    """Rewrite ``[12]`` as ``(12)`` so passage text cannot look like an identifier."""
    return _ID_IN_TEXT.sub(r"(\1)", text)


def listwise_messages(
    query: str,
    texts: Sequence[str],
    *,
    word_budget: int,
    ids: Sequence[str] | None = None,
    system: str | None = SYSTEM_MESSAGE,
) -> list[dict[str, str]]:
    """Chat messages asking to rank ``texts`` for ``query`` (RankGPT form, as fullrank uses it).

    ``ids`` are the identifiers shown in brackets (default ``1..n``). Each passage is cut to
    ``word_budget`` words. The ranking is asked for as ``[2] > [1]`` (the example fullrank
    uses with variable passage counts).
    """
    n = len(texts)
    ids = [str(i + 1) for i in range(n)] if ids is None else list(ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} passages")
    query = escape_ids(query).strip()
    kind = "numerical " if all(i.isdigit() for i in ids) else ""
    lines = [
        f"I will provide you with {n} passages, each indicated by a {kind}identifier []. "
        f"Rank the passages based on their relevance to the search query: {query}.\n"
    ]
    for i, t in zip(ids, texts):
        lines.append(f"[{i}] {escape_ids(truncate_words(t, word_budget))}")
    example = f"[{ids[1]}] > [{ids[0]}]" if n >= 2 else f"[{ids[0]}]" if n else "[1]"
    lines.append(
        f"Search Query: {query}.\nRank the {n} passages above based on their relevance to the search query. "
        "All the passages should be included and listed using identifiers, in descending order of relevance. "
        f"The output format should be [] > [], e.g., {example}, "
        "Only respond with the ranking results, do not say any word or explain."
    )
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": "\n".join(lines)})
    return msgs


def ranking_text(order: Sequence[int], ids: Sequence[str] | None = None) -> str:
    """The target answer for a 0-based ranking: ``"[3] > [1] > [2]"`` (ids default to 1-based numbers)."""
    return " > ".join(f"[{ids[i] if ids is not None else i + 1}]" for i in order)


@dataclass
class RankParse:
    """A parsed listwise answer.

    ``order`` is a full permutation of ``range(n)``: the model's ranked ids first, then the
    missing ones in retrieval order. ``ranked`` counts valid distinct ids the model gave.
    """

    order: list[int]
    ranked: int
    missing: int
    out_of_range: int
    repeated: int

    @property
    def incomplete(self) -> bool:
        """True when the model's answer did not rank every passage."""
        return self.missing > 0


def parse_ranking(text: str, n: int, ids: Sequence[str] | None = None) -> RankParse:
    """Parse an answer like ``"[2] > [1] > [3]"`` for ``n`` passages; never raises on bad text.

    With numeric ids (default) bracketed numbers are used when there are any, else every
    number in the text (RankGPT's lenient reading). With ``ids`` (e.g. letters), bracketed
    ids are matched against them. Out-of-range and repeated ids are dropped and counted.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if ids is None:
        found = _BRACKETED.findall(text) or _DIGITS.findall(text)
        # Guard against absurd digit runs before int(): they are out of range anyway.
        raw = [int(x) - 1 if len(x) <= 9 else -1 for x in found]
    else:
        lookup = {s: i for i, s in enumerate(ids)}
        found = re.findall(r"\[\s*([^\[\]\s]+)\s*\]", text)
        raw = [lookup.get(x, -1) for x in found]
    seen: set[int] = set()
    order: list[int] = []
    out_of_range = repeated = 0
    for r in raw:
        if not 0 <= r < n:
            out_of_range += 1
        elif r in seen:
            repeated += 1
        else:
            seen.add(r)
            order.append(r)
    ranked = len(order)
    order.extend(i for i in range(n) if i not in seen)
    return RankParse(order=order, ranked=ranked, missing=n - ranked, out_of_range=out_of_range, repeated=repeated)


# ---------------------------------------------------------------------------------------
# Rankers: something that ranks a batch of (query, texts) windows
# ---------------------------------------------------------------------------------------


@dataclass
class ListwiseResult:
    """One ranked window: the parse plus what the LLM call cost; ``error`` when the call failed
    (the parse then keeps the window's order)."""

    parse: RankParse
    prompt_tokens: int = 0
    new_tokens: int = 0
    text: str = ""
    error: str | None = None


ListwiseRanker = Callable[[list[tuple[str, list[str]]]], list[ListwiseResult]]
"""Ranks a batch of ``(query, passage_texts)`` windows; one result per window, in order."""


class OverlapRanker:
    """A deterministic, model-free listwise ranker: passages by count of query words they contain.

    Ties keep input order. Meant for tests of the window logic and as a no-LLM reference;
    it records every window it was given in ``calls`` (one list per batch).
    """

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, list[str]]]] = []

    def __call__(self, windows: list[tuple[str, list[str]]]) -> list[ListwiseResult]:
        self.calls.append([(q, list(t)) for q, t in windows])
        out = []
        for q, texts in windows:
            qw = set(re.findall(r"\w+", q.lower()))
            overlap = [len(qw & set(re.findall(r"\w+", t.lower()))) for t in texts]
            order = sorted(range(len(texts)), key=lambda i: (-overlap[i], i))
            out.append(ListwiseResult(RankParse(order, len(order), 0, 0, 0)))
        return out


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows RankGPT visits for ``n`` candidates, back to front.

    The first window ends at ``n``; each next one moves ``stride`` towards the front; the
    last one starts at 0 (so the front is always ranked, unlike RankGPT's original loop which
    can skip the first ``window - stride`` passages when ``n`` is not a multiple of ``stride``).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be > 0, got window={window} stride={stride}")
    if n <= 0:
        return []
    out = []
    end = n
    while True:
        start = max(0, end - window)
        out.append((start, end))
        if start == 0:
            return out
        end -= stride


@dataclass
class SlidingResult:
    """Final order of one question after all windows, and the summed window stats."""

    order: list[int]
    windows: int = 0
    incomplete: bool = False
    ranked: int = 0
    missing: int = 0
    out_of_range: int = 0
    repeated: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    error: str | None = None


def sliding_window_rank(
    items: list[tuple[str, list[str]]], ranker: ListwiseRanker, *, window: int, stride: int
) -> list[SlidingResult]:
    """Rank each ``(query, texts)`` by sliding windows; the k-th windows of all items go in one batch.

    Returns one ``SlidingResult`` per item with ``order`` a permutation of its passages.
    """
    results = [SlidingResult(order=list(range(len(t)))) for _, t in items]
    plans = [sliding_windows(len(t), window, stride) for _, t in items]
    for step in range(max((len(p) for p in plans), default=0)):
        todo = [i for i, p in enumerate(plans) if step < len(p)]
        reqs = []
        for i in todo:
            s, e = plans[i][step]
            q, texts = items[i]
            reqs.append((q, [texts[j] for j in results[i].order[s:e]]))
        outs = ranker(reqs)
        if len(outs) != len(reqs):
            raise RuntimeError(f"ranker returned {len(outs)} results for {len(reqs)} windows")
        for i, res in zip(todo, outs):
            s, e = plans[i][step]
            r = results[i]
            cur = r.order[s:e]
            if sorted(res.parse.order) != list(range(len(cur))):
                raise RuntimeError(f"ranker returned {res.parse.order} for a window of {len(cur)}")
            r.order[s:e] = [cur[j] for j in res.parse.order]
            r.windows += 1
            r.incomplete |= res.parse.incomplete
            r.ranked += res.parse.ranked
            r.missing += res.parse.missing
            r.out_of_range += res.parse.out_of_range
            r.repeated += res.parse.repeated
            r.prompt_tokens += res.prompt_tokens
            r.new_tokens += res.new_tokens
            r.error = r.error or res.error
    return results


class LLMListwiseRanker:
    """Listwise ranking by generation with a chat LLM (the RankGPT prompt) on a loaded backend.

    ``max_new_tokens=None`` sizes each answer for its window (the token count of
    ``[1] > [2] > ... > [n]`` plus a small margin). All windows of a call go in one batch.
    """

    def __init__(self, backend: "Backend", *, word_budget: int, max_new_tokens: int | None):
        self.backend = backend
        self.word_budget = word_budget
        self.max_new_tokens = max_new_tokens

    def answer_tokens(self, n: int) -> int:
        """Tokens needed to write a full ranking of ``n`` passages (+4 for end of turn)."""
        return self.backend.count_tokens(ranking_text(range(n))) + 4

    def __call__(self, windows: list[tuple[str, list[str]]]) -> list[ListwiseResult]:
        out: list[ListwiseResult | None] = [None] * len(windows)
        todo = []
        for k, (q, texts) in enumerate(windows):
            if len(texts) <= 1:  # nothing to rank: no LLM call
                out[k] = ListwiseResult(RankParse(list(range(len(texts))), len(texts), 0, 0, 0))
            else:
                todo.append(k)
        reqs = [
            GenRequest(
                messages=listwise_messages(windows[k][0], windows[k][1], word_budget=self.word_budget),
                max_new_tokens=self.max_new_tokens or self.answer_tokens(len(windows[k][1])),
            )
            for k in todo
        ]
        for k, g in zip(todo, self.backend.generate(reqs) if reqs else []):
            n = len(windows[k][1])
            err = (g.error or "generation failed") if g.finish_reason == "error" else None
            out[k] = ListwiseResult(parse_ranking(g.text, n), g.prompt_tokens, g.new_tokens, g.text, err)
        return [o for o in out if o is not None]


# ---------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------


class _RerankParams(LLMParams):
    """Shared params: ``llm`` (or ``model``: hub name or local dir), ``top_n`` candidates to rerank
    (the rest follow in retrieval order), ``word_budget`` words per passage, ``keep`` passages kept
    after reranking (None: all); ``batch_size`` is shorthand for ``llm.batch_size`` (prompts per
    forward batch, ``hf``)."""

    top_n: int = 20
    word_budget: int = 100
    keep: int | None = None

    # check_fields=False: the same checks cover the window/stride/max_new_tokens fields subclasses add.
    @field_validator("top_n", "word_budget", "window", "stride", check_fields=False)
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("keep", "max_new_tokens", check_fields=False)
    @classmethod
    def _positive_or_null(cls, v: int | None, info: Any) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"{info.field_name} must be > 0 or null, got {v}")
        return v


def _apply_order(state: QAState, key: str, order: list[int], n_ranked: int, keep: int | None) -> None:
    """Put ``passages[:n_ranked]`` in ``order``; the rest follow; score = descending rank score."""
    head = [state.passages[i] for i in order]
    tail = state.passages[n_ranked:]
    new = head + tail
    if keep is not None:
        new = new[:keep]
    total = len(head) + len(tail)
    out = []
    for pos, p in enumerate(new):
        score = float(total - pos)  # a rank score: higher is better, consistent with the order
        out.append(Passage(chunk=p.chunk, text=p.text, score=score, scores={**p.scores, key: score}))
    state.passages = out


def _record(state: QAState, key: str, n: int, ranked: int, missing: int, oor: int, rep: int, incomplete: bool) -> None:
    state.trace["rerank_incomplete"] = bool(state.trace.get("rerank_incomplete", False) or incomplete)
    state.trace.setdefault("rerank_counts", {})[key] = {
        "candidates": n,
        "ranked": ranked,
        "missing": missing,
        "out_of_range": oor,
        "repeated": rep,
        "incomplete": incomplete,
    }


class _LLMStage(Stage):
    """Loads ``params.llm``'s backend in ``setup``."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.backend: "Backend | None" = None

    def setup(self, ctx: RunContext) -> None:
        """Load the backend once per worker (``longread.llm.load_backend``)."""
        self.backend = load_backend(self.params.llm, ctx)

    def _require_setup(self) -> None:
        if self.backend is None:
            raise RuntimeError(f"{self.key}: call setup(ctx) before running the stage")

    def _usage(self, state: QAState, calls: int, prompt_tokens: int = 0, new_tokens: int = 0) -> None:
        record(state, self.key, spec=self.params.llm, calls=calls, prompt_tokens=prompt_tokens, new_tokens=new_tokens)


class _ListwiseStage(_LLMStage):
    def ranker(self) -> ListwiseRanker:
        """The LLM listwise ranker this stage uses (after ``setup``)."""
        self._require_setup()
        p = self.params
        return LLMListwiseRanker(self.backend, word_budget=p.word_budget, max_new_tokens=p.max_new_tokens)


@register
class FullRankReranker(_ListwiseStage):
    """Rank all top-``top_n`` candidates with one LLM call per question (full-listwise)."""

    key: ClassVar[str] = "reranker.fullrank"

    class Params(_RerankParams):
        """``max_new_tokens``: answer length cap (None: enough for ``[1] > ... > [n]``)."""

        top_n: int = 20
        max_new_tokens: int | None = None

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Rerank every state's passages; see the module docstring for the trace keys."""
        ranker = self.ranker()
        with timed(batch, self.key):
            items = [(s.question.question, [p.text for p in s.passages[: self.params.top_n]]) for s in batch]
            results = ranker(items)
            for s, (_, texts), r in zip(batch, items, results):
                n = len(texts)
                if r.error is not None:
                    record_error(s, self.key, r.error, spec=self.params.llm)
                    continue
                _apply_order(s, self.key, r.parse.order, n, self.params.keep)
                self._usage(s, int(n > 1), r.prompt_tokens, r.new_tokens)
                pr = r.parse
                _record(s, self.key, n, pr.ranked, pr.missing, pr.out_of_range, pr.repeated, pr.incomplete)
        return batch


@register
class SlidingWindowReranker(_ListwiseStage):
    """RankGPT's sliding-window listwise reranking (window 20, stride 10, back to front)."""

    key: ClassVar[str] = "reranker.sliding"

    class Params(_RerankParams):
        """``window``/``stride``: window size and step (stride <= window); ``max_new_tokens`` as fullrank."""

        top_n: int = 100
        window: int = 20
        stride: int = 10
        max_new_tokens: int | None = None

        @model_validator(mode="after")
        def _stride(self) -> "SlidingWindowReranker.Params":
            if self.stride > self.window:
                raise ValueError(f"stride must be <= window, got stride={self.stride} window={self.window}")
            return self

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Rerank every state's passages window by window; trace as fullrank, summed over windows."""
        ranker = self.ranker()
        with timed(batch, self.key):
            items = [(s.question.question, [p.text for p in s.passages[: self.params.top_n]]) for s in batch]
            results = sliding_window_rank(items, ranker, window=self.params.window, stride=self.params.stride)
            for s, (_, texts), r in zip(batch, items, results):
                n = len(texts)
                if r.error is not None:
                    record_error(s, self.key, r.error, spec=self.params.llm)
                    continue
                _apply_order(s, self.key, r.order, n, self.params.keep)
                self._usage(s, r.windows if n > 1 else 0, r.prompt_tokens, r.new_tokens)
                _record(s, self.key, n, r.ranked, r.missing, r.out_of_range, r.repeated, r.incomplete)
        return batch


# ---------------------------------------------------------------------------------------
# Logit-based rankers (one forward pass, no generation)
# ---------------------------------------------------------------------------------------

_LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]


def letter_ids(n: int) -> list[str]:
    """``n`` single-character identifiers A..Z, a..z; raise ``ValueError`` beyond 52."""
    if n > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} single-letter identifiers exist, asked for {n}")
    return _LETTERS[:n]


def single_token_ids(encode: Callable[[str], list[int]], ids: Sequence[str]) -> tuple[list[int], str]:
    """The token that starts each identifier's answer, and the text to prefill before it.

    ``encode`` is the backend's tokenizer (text -> ids without special tokens,
    :meth:`longread.llm.Backend.encode`), so this works for any backend with logits. Byte-level
    BPE tokenizers differ: some split ``"[A"`` into ``"["`` + ``"A"`` (then the answer is
    prefilled with ``"["`` and the identifier token is ``"A"``), others (Qwen2) merge it into one
    token ``"[A"`` (then nothing is prefilled and that token is the identifier).
    Returns ``(token_ids, prefill)``. Raises ``ValueError`` when an identifier takes more than
    one token either way, when identifiers mix the two forms, or when two share a token.
    """
    base = list(encode("["))
    out, forms = [], set()
    for s in ids:
        toks = list(encode("[" + s))
        if len(toks) == 1 and toks != base:
            forms.add("merged")
        elif len(toks) == len(base) + 1 and toks[: len(base)] == base:
            forms.add("split")
        else:
            raise ValueError(
                f"identifier {s!r} is not a single token for this tokenizer (\"[{s}\" -> tokens {toks}); "
                "FIRST needs single-token identifiers"
            )
        out.append(toks[-1])
    if len(forms) > 1:
        raise ValueError(f"identifiers {list(ids)} tokenize inconsistently after '[' (some merged, some split)")
    if len(set(out)) != len(out):
        raise ValueError(f"identifiers {list(ids)} map to repeated token ids {out}")
    return out, ("[" if forms == {"split"} else "")


@register
class FirstReranker(_LLMStage):
    """FIRST: rank by the first-token logits of single-letter identifiers, one forward pass."""

    key: ClassVar[str] = "reranker.first"

    class Params(_RerankParams):
        """``top_n`` is at most 52 (single-letter identifiers A..Z, a..z). Needs a backend with
        logits (``hf`` or ``llamacpp``)."""

        needs = frozenset({"logits"})
        stage_key = "reranker.first"

        @field_validator("top_n")
        @classmethod
        def _max(cls, v: int) -> int:
            if not 0 < v <= len(_LETTERS):
                raise ValueError(f"top_n must be in 1..{len(_LETTERS)} (single-letter ids), got {v}")
            return v

    def setup(self, ctx: RunContext) -> None:
        """Load the backend and check every identifier is one token (``ValueError`` otherwise)."""
        super().setup(ctx)
        self.id_tokens, self.prefill = single_token_ids(self.backend.encode, letter_ids(self.params.top_n))

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Rerank by identifier logits; ``rerank_incomplete`` is always False (every id gets a score)."""
        self._require_setup()
        be = self.backend
        with timed(batch, self.key):
            items = [(s.question.question, [p.text for p in s.passages[: self.params.top_n]]) for s in batch]
            todo = [k for k, (_, t) in enumerate(items) if len(t) > 1]
            # Prefill (e.g. "[") so the next token is the identifier of the top passage.
            prompts = [
                be.render(listwise_messages(items[k][0], items[k][1], word_budget=self.params.word_budget,
                                            ids=letter_ids(len(items[k][1])))) + self.prefill
                for k in todo
            ]
            logits = be.next_token_logits(prompts) if prompts else []
            row = {k: j for j, k in enumerate(todo)}
            for k, s in enumerate(batch):
                n = len(items[k][1])
                if k in row:
                    sc = [float(logits[row[k]][t]) for t in self.id_tokens[:n]]
                    order = sorted(range(n), key=lambda i: (-sc[i], i))
                    self._usage(s, 1, be.count_tokens(prompts[row[k]]))
                else:
                    order = list(range(n))
                    self._usage(s, 0)
                _apply_order(s, self.key, order, n, self.params.keep)
                _record(s, self.key, n, n, 0, 0, 0, False)
        return batch


def pointwise_messages(query: str, text: str, word_budget: int) -> list[dict[str, str]]:
    """Chat messages asking whether ``text`` answers ``query``, to be answered Yes or No."""
    return [
        {
            "role": "user",
            "content": f"Passage: {truncate_words(text, word_budget)}\nQuery: {query}\n"
            "Does the passage answer the query? Answer only 'Yes' or 'No'.",
        }
    ]


@register
class PointwiseReranker(_LLMStage):
    """Score each passage by logit("Yes") - logit("No") of the first answer token; batched."""

    key: ClassVar[str] = "reranker.pointwise"

    class Params(_RerankParams):
        """``batch_size`` (default 8) counts (question, passage) prompts per forward pass. Needs a
        backend with logits (``hf`` or ``llamacpp``)."""

        needs = frozenset({"logits"})
        stage_key = "reranker.pointwise"
        default_batch_size = 8

    def setup(self, ctx: RunContext) -> None:
        """Load the backend and find the first tokens of "Yes" and "No" (``ValueError`` if they coincide)."""
        super().setup(ctx)
        # Real chat models have one token each; for others the first token still tells them apart.
        toks = [self.backend.encode(w)[0] for w in ("Yes", "No")]
        if toks[0] == toks[1]:
            raise ValueError(f"'Yes' and 'No' start with the same token {toks[0]} for this tokenizer")
        self.yes_no = toks

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Rerank by the yes/no log-odds; the usage record counts one forward pass per passage."""
        self._require_setup()
        be = self.backend
        with timed(batch, self.key):
            prompts, owner = [], []
            for k, s in enumerate(batch):
                for p in s.passages[: self.params.top_n]:
                    prompts.append(be.render(pointwise_messages(s.question.question, p.text, self.params.word_budget)))
                    owner.append(k)
            logits = be.next_token_logits(prompts) if prompts else []
            scores: list[list[float]] = [[] for _ in batch]
            tokens = [0] * len(batch)
            yes, no = self.yes_no
            for j, k in enumerate(owner):
                scores[k].append(float(logits[j][yes]) - float(logits[j][no]))
                tokens[k] += be.count_tokens(prompts[j])
            for k, s in enumerate(batch):
                sc = scores[k]
                n = len(sc)
                order = sorted(range(n), key=lambda i: (-sc[i], i))
                self._usage(s, n, tokens[k])
                head = [s.passages[i] for i in order]
                new = head + s.passages[n:]
                if self.params.keep is not None:
                    new = new[: self.params.keep]
                low = min(sc, default=0.0)
                out = []
                for pos, p in enumerate(new):
                    # Ranked passages get their log-odds; the unranked tail stays below them.
                    score = sc[order[pos]] if pos < n else low - (pos - n + 1)
                    out.append(Passage(chunk=p.chunk, text=p.text, score=score, scores={**p.scores, self.key: score}))
                s.passages = out
                _record(s, self.key, n, n, 0, 0, 0, False)
        return batch
