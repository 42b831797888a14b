"""What one question cost, read from its typed usage records (and, for older runs, its trace).

Stages record cost as :class:`~longread.types.Usage` records (``QAState.usage`` /
``Prediction.usage``). Run dirs written before that, and stages not moved yet, put it in the trace
instead: ``timings`` {stage: seconds}, ``reader_tokens``, ``ttft_s``, ``new_tokens``, ``llm_calls``
{stage: n} and ``llm_tokens`` {stage: n}. :func:`question_costs` reads both and adds them up
(a stage writes one or the other, never both), so old run dirs and mixed pipelines evaluate alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..types import Usage

__all__ = ["Costs", "CostError", "question_costs", "LEGACY_TRACE_KEYS"]

LEGACY_TRACE_KEYS = ("timings", "reader_tokens", "ttft_s", "new_tokens", "llm_calls", "llm_tokens")
"""Trace keys older runs carried cost in (read as a fallback, never written)."""


class CostError(ValueError):
    """A legacy trace cost field has the wrong shape."""


@dataclass
class Costs:
    """One question's cost.

    - ``stage_seconds``: seconds per stage key (parts of a stage summed).
    - ``reader_tokens``: prompt tokens of every ``reader.*`` usage (all parts: Self-Route's RAG and
      fallback steps), ``None`` when no reader counted tokens.
    - ``new_tokens``: tokens the readers' model calls generated, likewise.
    - ``ttft_s``: time to first token of the reader call that gave the answer (the last one).
    - ``llm_calls`` / ``llm_tokens``: model calls and tokens (prompt + new + prefill) per stage,
      for stages that use a model.
    """

    stage_seconds: dict[str, float] = field(default_factory=dict)
    reader_tokens: float | None = None
    new_tokens: float | None = None
    ttft_s: float | None = None
    llm_calls: dict[str, float] = field(default_factory=dict)
    llm_tokens: dict[str, float] = field(default_factory=dict)


def _number(trace: Mapping[str, Any], key: str, who: str) -> float | None:
    value = trace.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CostError(f"{who}: trace[{key!r}] must be a number, got {value!r}")
    return float(value)


def _counts(trace: Mapping[str, Any], key: str, who: str) -> dict[str, float]:
    value = trace.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        raise CostError(f"{who}: trace[{key!r}] must map stage names to numbers, got {value!r}")
    return {str(k): float(v) for k, v in value.items()}


def _add(into: dict[str, float], stage: str, value: float) -> None:
    into[stage] = into.get(stage, 0.0) + value


def _uses_model(u: Usage) -> bool:
    return u.backend is not None or u.calls > 0


def question_costs(usage: Sequence[Usage], trace: Mapping[str, Any], who: str = "prediction") -> Costs:
    """The :class:`Costs` of one question from its ``usage`` records plus the legacy ``trace`` keys.

    ``who`` names the question in errors. Raises :class:`CostError` for a malformed legacy field.
    """
    c = Costs()
    readers = [u for u in usage if u.kind == "reader" and (u.calls or u.prompt_tokens or u.new_tokens)]
    for u in usage:
        _add(c.stage_seconds, u.stage, u.seconds)
        if _uses_model(u):
            _add(c.llm_calls, u.stage, float(u.calls))
            _add(c.llm_tokens, u.stage, float(u.total_tokens))
    legacy_reader = _number(trace, "reader_tokens", who)
    legacy_new = _number(trace, "new_tokens", who)
    if readers or legacy_reader is not None:
        c.reader_tokens = float(sum(u.prompt_tokens for u in readers)) + (legacy_reader or 0.0)
    callers = [u for u in readers if u.calls]  # a reader without a model call generated nothing to count
    if callers or legacy_new is not None:
        c.new_tokens = float(sum(u.new_tokens for u in callers)) + (legacy_new or 0.0)
    ttfts = [u.ttft_s for u in readers if u.ttft_s is not None]
    legacy_ttft = _number(trace, "ttft_s", who)
    # A reader still writing the trace runs last where it is mixed with typed ones (Self-Route's
    # RetroLM/REFRAG fallback), so its TTFT is the answer's.
    c.ttft_s = legacy_ttft if legacy_ttft is not None else (ttfts[-1] if ttfts else None)
    for stage, s in _counts(trace, "timings", who).items():
        if stage not in c.stage_seconds:  # a migrated stage's timed() already wrote it
            c.stage_seconds[stage] = s
    for key, into in (("llm_calls", c.llm_calls), ("llm_tokens", c.llm_tokens)):
        for stage, v in _counts(trace, key, who).items():
            _add(into, stage, v)
    return c
