"""The encoder protocol every dense retriever relies on."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["Encoder", "EncodeKind", "check_kind"]

EncodeKind = Literal["query", "document"]


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into unit vectors.

    Attributes: ``name`` (where it came from), ``dim`` (vector size), ``max_tokens`` (longer
    inputs are truncated), ``tokenizer`` (the HF tokenizer, for token counting).
    """

    name: str
    dim: int
    max_tokens: int
    tokenizer: Any

    def encode(
        self,
        texts: list[str],
        *,
        kind: EncodeKind = "document",
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Return float32 vectors of shape ``(len(texts), dim)``, each L2-normalised."""
        ...


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is ``"query"`` or ``"document"``; raise ``ValueError`` otherwise."""
    if kind not in ("query", "document"):
        raise ValueError(f"encode kind must be 'query' or 'document', got {kind!r}")
    return kind
