"""Params shared by every LLM stage: the ``llm`` spec (with the ``model:`` shorthand) and, for
readers, the answer ``prompt`` and ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from ..stage import Params
from .prompts import PromptSpec, resolve_prompt
from .spec import LLMSpec, check_capabilities, coerce_llm

__all__ = ["LLMParams", "ReaderLLMParams", "DEFAULT_MODEL"]

DEFAULT_MODEL = "qwen2.5-0.5b-instruct"


class LLMParams(Params):
    """``llm``: the model and backend (:class:`LLMSpec`). ``model: NAME`` in a config is shorthand
    for ``llm: {backend: hf, model: NAME}``, and ``batch_size: N`` for ``llm.batch_size`` (prompts
    per forward batch, ``hf`` only; ``default_batch_size`` is the stage's default). Subclasses set
    ``needs`` (``logits``, ``kv``) and the config is refused at load, at field ``llm``, when the
    backend cannot give them."""

    default_model: ClassVar[str] = DEFAULT_MODEL
    default_batch_size: ClassVar[int | None] = None
    needs: ClassVar[frozenset[str]] = frozenset()
    #: The stage's registry key, for messages (``needs`` errors name it).
    stage_key: ClassVar[str] = "this stage"

    llm: LLMSpec

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("llm"), LLMSpec):
            spec = data["llm"]
            data = {**data, "llm": {**spec.model_dump(exclude_unset=True), "backend": spec.backend, "model": spec.model}}
        data = coerce_llm(data, cls.default_model)
        if isinstance(data, dict) and isinstance(data.get("llm"), dict):
            data = _batch_size_into_llm(data, cls.default_batch_size)
        return data

    @field_validator("llm")
    @classmethod
    def _capabilities(cls, v: LLMSpec) -> LLMSpec:
        check_capabilities(v, cls.needs, cls.stage_key)
        return v

    @property
    def model(self) -> str:
        """The model name (``llm.model``)."""
        return self.llm.model


def _batch_size_into_llm(data: dict[str, Any], default: int | None) -> dict[str, Any]:
    data = dict(data)
    llm = dict(data["llm"])
    if "batch_size" in data:
        bs = data.pop("batch_size")
        if isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0:
            raise ValueError(f"batch_size must be > 0, got {bs!r}")
        if "batch_size" in llm and llm["batch_size"] != bs:
            raise ValueError(f"give the batch size once: batch_size={bs} and llm.batch_size={llm['batch_size']} disagree")
        llm["batch_size"] = bs
    elif default is not None and "batch_size" not in llm and llm.get("backend", "hf") == "hf":
        llm["batch_size"] = default
    data["llm"] = llm
    return data


class ReaderLLMParams(LLMParams):
    """Reader params: ``prompt`` (answer style ``short``/``span``/``free``/``cite`` or a template
    with ``{context}`` and ``{question}``) and ``max_new_tokens`` (default: the style's)."""

    prompt: str = Field(default="short", description="answer style or template")
    max_new_tokens: int | None = Field(default=None, description="answer length cap (default: the style's)")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        resolve_prompt(v)
        return v

    @field_validator("max_new_tokens")
    @classmethod
    def _mnt(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 8192:
            raise ValueError(f"max_new_tokens must be in 1..8192 or null (the style's default), got {v}")
        return v

    @property
    def prompt_spec(self) -> PromptSpec:
        """The resolved style or template."""
        return resolve_prompt(self.prompt)

    @property
    def answer_tokens(self) -> int:
        """``max_new_tokens``, or the style's default."""
        return self.max_new_tokens or self.prompt_spec.default_max_new_tokens
