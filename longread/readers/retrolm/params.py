"""Params of ``reader.retrolm``: :class:`RetroLMParams`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ...llm.params import ReaderLLMParams
from ...llm.prompts import STYLES
from .prompt import check_order
from .scoring import TRAINING_FREE_SCORERS

__all__ = ["RetroLMParams", "DEFAULT_INSTRUCTION"]

# The `short` style's instruction: reader.long_context's wording, so the two readers differ only
# in what the model attends to.
DEFAULT_INSTRUCTION = STYLES["short"].instruction.format(source="document")


class RetroLMParams(ReaderLLMParams):
    """Params of ``reader.retrolm`` (the method: :mod:`longread.readers.retrolm`).

    ``llm`` (or the ``model:`` shorthand) must be an ``hf`` model with rotary positions: the reader
    needs its KV cache. ``prompt``: an answer style (``short``, ``span``, ``free``) or a template
    with ``{context}`` before ``{question}``; ``instruction`` (older configs) replaces the
    ``short`` style's instruction text.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"kv"})

    page_size: int = Field(default=128, description="tokens per page")
    budget_tokens: int = Field(default=2048, description="document tokens kept in KV at decode (sink doc tokens + pages)")
    sink_tokens: int = Field(default=0, description="first document tokens always kept with the prompt prefix")
    local_pages: int = Field(default=4, description="previous pages each page attends to during prefill")
    recent_pages: int = Field(default=1, description="last pages of the document always selected")
    follow_pages: int = Field(
        default=1, description="pages after each selected page also kept (budget permitting): facts cross page ends"
    )
    positions: Literal["compact", "original"] = Field(default="compact", description="decode positions of pages")
    # quest by default: on a 4k-token needle the mean key missed the page holding the fact and the
    # channel-wise upper bound found it (benchmarks/kv_readers.py).
    scorer: str = Field(
        default="quest",
        description="page scorer: 'quest' or 'mean_key' (training-free), 'trained' (the scorer shipped for "
        "this model and page_size) or the path of a .safetensors scorer from `longread train retrolm`",
    )
    score_layers: list[int] | None = Field(
        default=None, description="layers whose queries score pages; None = all (a trained scorer brings its own)"
    )
    instruction: str | None = Field(default=None, description="instruction before the document (short answers)")
    cache: bool = Field(default=True, description="reuse page KV across questions (disk under cache_dir, else memory)")
    precompute: bool = Field(default=False, description="build page KV for every document at index time")
    memory_docs: int = Field(
        default=2, description="documents whose page KV (in a temp dir) is reused when there is no cache dir"
    )
    max_input_tokens: int = Field(default=262_144, description="refuse longer scoped inputs")

    @field_validator("page_size")
    @classmethod
    def _page(cls, v: int) -> int:
        if not 1 <= v <= 8192:
            raise ValueError(f"page_size must be in [1, 8192], got {v}")
        return v

    @field_validator("budget_tokens", "max_input_tokens", "memory_docs")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("sink_tokens", "local_pages", "recent_pages", "follow_pages")
    @classmethod
    def _non_negative(cls, v: int, info: Any) -> int:
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v}")
        return v

    @field_validator("score_layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("score_layers must be None (all layers) or a non-empty list, got []")
        return v

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("instruction must be non-empty text or unset (the prompt style's)")
        return v

    @field_validator("scorer")
    @classmethod
    def _scorer(cls, v: str) -> str:
        if v in TRAINING_FREE_SCORERS or v == "trained":
            return v
        if not v.endswith(".safetensors"):
            raise ValueError(
                f"scorer must be one of {list(TRAINING_FREE_SCORERS)}, 'trained' (the shipped scorer) or the path "
                f"of a trained scorer (.safetensors, from `longread train retrolm`), got {v!r}"
            )
        if not Path(v).expanduser().is_file():
            raise ValueError(f"scorer file {v!r} does not exist; train one with `longread train retrolm --out {v}`")
        return v

    @property
    def trained_scorer(self) -> Path | None:
        """The trained scorer's file, or None for a training-free scorer.

        Raises ``FileNotFoundError`` for ``"trained"`` when no scorer ships for this model and page size.
        """
        if self.scorer in TRAINING_FREE_SCORERS:
            return None
        from .trained import resolve_scorer_path

        return resolve_scorer_path(self.scorer, model=self.model, page_size=self.page_size)

    @property
    def instruction_text(self) -> str:
        """The instruction (or template) the prompt prefix is made of (names the index part)."""
        spec = self.prompt_spec
        if self.instruction is not None:
            return self.instruction
        return spec.template if spec.style is None else spec.style.instruction.format(source="document")

    def message(self, context: str, question: str) -> str:
        """The user message for ``question`` over ``context`` (``short`` with no ``instruction``:
        exactly reader.long_context's wording)."""
        if self.instruction is not None:
            return f"{self.instruction}\n\n{context}\n\nQuestion: {question}\nAnswer:"
        return self.prompt_spec.message(context, question, source="document")

    @property
    def cleaner(self) -> str:
        """The answer cleaner of the style (``short`` with ``instruction``)."""
        return "short" if self.instruction is not None else self.prompt_spec.cleaner

    @model_validator(mode="after")
    def _budget(self) -> "RetroLMParams":
        if self.instruction is not None and self.prompt != "short":
            raise ValueError(f"give either instruction (older configs) or prompt, not both (prompt={self.prompt!r})")
        if self.prompt_spec.cites:
            raise ValueError("prompt 'cite' needs numbered passages; reader.retrolm reads one document: use short, span, free or a template")
        check_order(self.message)
        if self.scorer == "trained":
            try:
                self.trained_scorer  # noqa: B018 (raises, naming what ships, when none does)
            except FileNotFoundError as e:
                raise ValueError(str(e)) from None
        if self.scorer not in TRAINING_FREE_SCORERS and self.score_layers is not None:
            raise ValueError("score_layers must be unset with a trained scorer: the scorer file names its layers")
        if self.budget_tokens < self.page_size:
            raise ValueError(
                f"budget_tokens ({self.budget_tokens}) must be >= page_size ({self.page_size}): no page would fit"
            )
        forced = self.sink_tokens + self.recent_pages * self.page_size
        if forced > self.budget_tokens:
            raise ValueError(
                f"sink_tokens + recent_pages * page_size = {forced} exceeds budget_tokens ({self.budget_tokens})"
            )
        return self
