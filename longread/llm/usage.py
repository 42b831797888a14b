"""The one place model usage is recorded on a question: :func:`record`.

Stages never write token counts into ``trace``; they call :func:`record` with the generations
they got, and the evaluator and report read :class:`~longread.types.Usage` records.
"""

from __future__ import annotations

from typing import Sequence

from ..types import QAState, Usage
from .spec import LLMSpec
from .types import Generation

__all__ = ["record", "record_generations", "record_error", "relabel"]


def record(
    state: QAState,
    stage: str,
    *,
    part: str | None = None,
    spec: LLMSpec | None = None,
    calls: int = 0,
    prompt_tokens: int = 0,
    new_tokens: int = 0,
    prefill_tokens: int = 0,
    seconds: float = 0.0,
    ttft_s: float | None = None,
) -> Usage:
    """Add to ``state``'s usage record of ``(stage, part)``; returns it.

    Counts and seconds add up over calls; ``ttft_s`` keeps the first call's value.
    """
    u = state.usage_for(stage, part)
    if spec is not None:
        u.backend, u.model = spec.backend, spec.model
    u.calls += calls
    u.prompt_tokens += prompt_tokens
    u.new_tokens += new_tokens
    u.prefill_tokens += prefill_tokens
    u.seconds += seconds
    if ttft_s is not None and u.ttft_s is None:
        u.ttft_s = ttft_s
    return u


def record_generations(
    state: QAState, stage: str, gens: Sequence[Generation], *, part: str | None = None, spec: LLMSpec | None = None
) -> Usage:
    """Record the calls behind ``gens`` (all for ``state``) on its ``(stage, part)`` usage."""
    u = state.usage_for(stage, part)
    for g in gens:
        record(state, stage, part=part, spec=spec, calls=1, prompt_tokens=g.prompt_tokens,
               new_tokens=g.new_tokens, ttft_s=g.ttft_s)
    if spec is not None:
        u.backend, u.model = spec.backend, spec.model
    return u


def relabel(state: QAState, stage: str, to_stage: str, part: str | None) -> None:
    """Move ``state``'s usage of ``stage`` (no part) to ``(to_stage, part)``, adding it to a record
    that is already there.

    A composite stage uses it for the stages it runs inside (``reader.route`` records its RAG
    reader as part ``rag`` and its fallback as part ``fallback``), whichever reader those are.
    """
    src = next((u for u in state.usage if u.stage == stage and u.part is None), None)
    if src is None:
        return
    state.usage.remove(src)
    record(state, to_stage, part=part, calls=src.calls, prompt_tokens=src.prompt_tokens, new_tokens=src.new_tokens,
           prefill_tokens=src.prefill_tokens, seconds=src.seconds, ttft_s=src.ttft_s)
    dst = state.usage_for(to_stage, part)
    if src.backend is not None:
        dst.backend, dst.model = src.backend, src.model


def record_error(state: QAState, stage: str, error: str | None, *, part: str | None = None,
                 spec: LLMSpec | None = None) -> None:
    """Record a failed call (a :class:`Generation` with ``finish_reason == "error"``) and mark
    ``state`` failed with its ``error``: later stages skip it and its prediction carries the error
    (``--resume`` retries it), while the rest of its batch goes on."""
    record(state, stage, part=part, spec=spec, calls=1)
    state.trace["error"] = f"{stage}: generation failed: {error or 'unknown error'}"
