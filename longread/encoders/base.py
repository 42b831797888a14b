"""The encoder protocol every dense retriever relies on."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["Encoder", "EncodeKind", "check_kind", "bert_token_ids", "padded_batch"]

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


def bert_token_ids(
    tokenizer: Any, texts: list[str], max_tokens: int, *, truncate: bool = True, prefix: str = ""
) -> list[list[int]]:
    """Ids of ``prefix + text`` with ``[CLS]``/``[SEP]`` for each text; over-long rows keep their
    first ``max_tokens - 1`` ids and the final ``[SEP]``.

    Raises ``ValueError`` for an empty text, or one over ``max_tokens`` when ``truncate`` is off.
    """
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} is empty; every text to encode must have content")
    ids = tokenizer([prefix + t for t in texts], add_special_tokens=True, truncation=False)["input_ids"]
    out = []
    for i, row in enumerate(ids):
        if len(row) > max_tokens:
            if not truncate:
                with_prefix = " (with prefix)" if prefix else ""
                raise ValueError(
                    f"text {i} has {len(row)} tokens{with_prefix}, more than max_tokens={max_tokens}, and truncate=False"
                )
            row = row[: max_tokens - 1] + [row[-1]]
        out.append(row)
    return out


def padded_batch(ids: list[list[int]], rows: list[int], length: int, pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` long tensors for ``ids[rows]``, right-padded to ``length``."""
    import torch

    inp = torch.full((len(rows), length), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), length), dtype=torch.long)
    for r, i in enumerate(rows):
        inp[r, : len(ids[i])] = torch.tensor(ids[i])
        att[r, : len(ids[i])] = 1
    return inp, att
