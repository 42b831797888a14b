"""The backend interface every LLM stage talks to, and how a spec becomes a backend.

A backend turns a batch of :class:`~longread.llm.types.GenRequest` into
:class:`~longread.llm.types.Generation` s with one stop policy (end-of-turn tokens plus the
request's stop strings) and counts tokens for context budgets. Backends with the ``logits``
capability also give next-token logits; the ``hf`` backend's lower layer (prefill/decode over a
given KV cache or ``inputs_embeds``) is what the KV readers build on.

Backends are looked up lazily by name (``_BACKENDS``), so choosing ``openai`` never imports
torch and choosing ``hf`` never imports llama_cpp.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from .spec import BACKEND_CAPABILITIES, LLMSpec
from .types import GenRequest, Generation

if TYPE_CHECKING:  # pragma: no cover
    from ..stage import RunContext

__all__ = ["Backend", "load_backend", "backend_class"]

_BACKENDS = {
    "hf": "longread.llm.hf:HFBackend",
    "llamacpp": "longread.llm.llamacpp:LlamaCppBackend",
    "openai": "longread.llm.openai:OpenAIBackend",
    "vllm": "longread.llm.vllm:VLLMBackend",
}


class Backend(ABC):
    """A loaded model behind one backend. Construction loads it; ``close`` frees it.

    Subclasses set ``name``; ``capabilities`` comes from :data:`BACKEND_CAPABILITIES`.
    """

    name: ClassVar[str] = ""

    def __init__(self, spec: LLMSpec, ctx: "RunContext | None" = None) -> None:
        self.spec = spec
        self.ctx = ctx

    @property
    def capabilities(self) -> frozenset[str]:
        """What this backend gives besides text (``logits``, ``kv``)."""
        return BACKEND_CAPABILITIES[self.name]

    # -- generation ------------------------------------------------------------------------------
    @abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """One :class:`Generation` per request, in order. A request that fails alone (a server error
        after retries) comes back with ``finish_reason="error"``; a failure of the whole backend
        (unreachable server, bad model) raises."""

    # -- tokens ----------------------------------------------------------------------------------
    @abstractmethod
    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text ``messages`` become (chat template with the assistant turn opened; a
        model without a chat template gets the contents joined by blank lines)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (an estimate where the backend has no tokenizer)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (from :meth:`encode`)."""

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens)."""
        return len(self.encode(text))

    def prompt_tokens(self, request: GenRequest) -> int:
        """Tokens the rendered request takes."""
        text = request.prompt if request.prompt is not None else self.render(request.messages or [])
        return self.count_tokens(text)

    @property
    @abstractmethod
    def window(self) -> int:
        """Context window in tokens (prompt + answer)."""

    # -- logits (capability "logits") ------------------------------------------------------------
    def next_token_logits(self, prompts: Sequence[str]) -> Any:
        """Float32 next-token logits after each finished prompt string: array ``[n, vocab]``."""
        raise NotImplementedError(f"backend {self.name!r} does not give logits")

    def close(self) -> None:
        """Free the model (servers are left running: they are not ours)."""


def backend_class(name: str) -> type[Backend]:
    """The backend class for ``name``; ``ValueError`` lists the valid names."""
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(_BACKENDS)}") from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def load_backend(spec: LLMSpec, ctx: "RunContext | None" = None) -> Backend:
    """Load the backend ``spec`` names. With a ``ctx`` the worker's model hub caches it, so stages
    naming the same spec share one loaded model."""
    if ctx is not None and hasattr(ctx.models, "backend"):
        return ctx.models.backend(spec, ctx)
    return backend_class(spec.backend)(spec, ctx)
