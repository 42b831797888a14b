"""Requests in, generations out: the records every backend speaks.

A :class:`GenRequest` is either chat ``messages`` (the backend applies the model's chat template)
or a finished ``prompt`` string (sent as is). Decoding is greedy when ``temperature == 0``;
otherwise it samples with ``seed`` (``None``: the run's seed). A :class:`Generation` reports what
came back and what it cost, so usage is recorded in one place (:mod:`longread.llm.usage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["GenRequest", "Generation", "FinishReason"]

FinishReason = Literal["stop", "length", "error"]


@dataclass
class GenRequest:
    """One generation request.

    Exactly one of ``messages`` (``[{"role", "content"}]``) and ``prompt`` is set.
    ``stop``: strings that end the answer (not included in it); end-of-sequence / end-of-turn
    tokens always stop. Raises ``ValueError`` on construction for inconsistent fields.
    """

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a GenRequest needs exactly one of messages and prompt")
        if self.messages is not None:
            if not self.messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in self.messages):
                raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.stop = tuple(s for s in self.stop if s)

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy (``temperature == 0``)."""
        return self.temperature == 0


@dataclass
class Generation:
    """What one request produced.

    ``text``: the generated text, stop string and end-of-turn token removed (not cleaned: the
    answer style's cleaner does that). ``finish_reason``: ``stop`` (a stop token or string),
    ``length`` (``max_new_tokens`` reached) or ``error`` (this request failed; ``error`` says
    why and ``text`` is empty). ``prompt_tokens``: tokens of the rendered prompt;
    ``new_tokens``: tokens generated; ``ttft_s``: seconds from the call to this request's first
    token (for batched backends, its batch's); ``seconds``: wall time until it finished.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    seconds: float
    error: str | None = None
    token_ids: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def failed(cls, error: str, seconds: float = 0.0) -> "Generation":
        """A generation for a request that failed (its question gets the error, the batch goes on)."""
        return cls(text="", finish_reason="error", prompt_tokens=0, new_tokens=0, ttft_s=seconds, seconds=seconds, error=error)
