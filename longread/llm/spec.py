"""Which model a stage talks to, and through which backend: :class:`LLMSpec`.

Every LLM stage's params hold one under ``llm:``; the older ``model: NAME`` is shorthand for
``llm: {backend: hf, model: NAME}``::

    - key: reader.hf
      params:
        llm: {backend: openai, model: smollm2, base_url: "http://127.0.0.1:8080/v1", api_key_env: MY_KEY}
        prompt: short

Fields a backend does not use are refused (``base_url`` with ``hf``, ``n_threads`` with ``openai``)
so a typo cannot silently fall back to another backend's default.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BACKENDS", "LLMSpec", "Capability", "BACKEND_CAPABILITIES", "check_capabilities"]

BACKENDS = ("hf", "llamacpp", "openai", "vllm")

Capability = Literal["logits", "kv"]

# What each backend can give besides text. Declared here (not on the backend classes) so a
# config is checked without importing torch, llama_cpp or vllm.
BACKEND_CAPABILITIES: dict[str, frozenset[str]] = {
    "hf": frozenset({"logits", "kv"}),
    "llamacpp": frozenset({"logits"}),
    "openai": frozenset(),
    "vllm": frozenset(),
}

# Fields only some backends read; everything else is common.
_ONLY: dict[str, tuple[str, ...]] = {
    "base_url": ("openai",),
    "api_key_env": ("openai",),
    "max_retries": ("openai",),
    "tokenizer": ("openai",),
    "n_threads": ("llamacpp",),
    "n_ctx": ("llamacpp", "vllm"),
    "n_gpu_layers": ("llamacpp",),
    "gpu_memory_utilization": ("vllm",),
    "dtype": ("hf", "vllm"),
    "batch_size": ("hf",),
}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LLMSpec(BaseModel):
    """A model and the backend that runs it.

    - ``backend``: ``hf`` (in-process transformers; logits and KV access), ``llamacpp``
      (in-process llama-cpp-python on a GGUF file; pack names resolve to the pack's GGUF),
      ``openai`` (any OpenAI-compatible server), ``vllm`` (offline vLLM engine, GPU).
    - ``model``: a pack name, a local directory (hf/vllm), a ``.gguf`` file (llamacpp) or the
      model name the server knows (openai).
    - ``base_url`` (openai, required): e.g. ``http://127.0.0.1:8080/v1``. ``api_key_env``: name of
      the environment variable holding the API key (the key itself is never in a config, run dir
      or log). ``tokenizer`` (openai): a pack or local model whose tokenizer counts tokens for
      context budgets (default: ``model`` when it is a pack or local dir, else an estimate).
    - ``concurrency``: requests in flight at once (openai) / engine batch (vllm).
    - ``timeout_s``: per-request timeout (openai). ``max_retries``: retries on 429/5xx/connection
      errors with exponential backoff (openai).
    - ``n_threads`` / ``n_ctx`` / ``n_gpu_layers`` (llamacpp): CPU threads (default: torch's
      thread count), context window (default: the model's, capped at 32768), layers on GPU.
    - ``dtype`` (hf, vllm): ``auto`` / ``float32`` / ``bfloat16`` / ``float16``.
    - ``batch_size`` (hf): prompts per forward batch.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backend: Literal["hf", "llamacpp", "openai", "vllm"] = "hf"
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = None
    tokenizer: str | None = None
    concurrency: int = Field(default=4, ge=1, le=256)
    timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    max_retries: int = Field(default=3, ge=0, le=20)
    n_threads: int | None = Field(default=None, ge=1, le=512)
    n_ctx: int | None = Field(default=None, ge=256, le=1_048_576)
    n_gpu_layers: int = Field(default=0, ge=-1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=4, ge=1, le=1024)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f"model must be a non-empty name or path, got {v!r}")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8080/v1, got {v!r}")
        return v.rstrip("/") if v else v

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(
                f"api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key; got "
                f"{v[:4] + '…' if len(v) > 4 else v!r}"
            )
        return v

    @model_validator(mode="after")
    def _backend_fields(self) -> "LLMSpec":
        for name, owners in _ONLY.items():
            # A field left at its default is fine (a dumped spec sets every field explicitly).
            if self.backend in owners or getattr(self, name) == type(self).model_fields[name].default:
                continue
            raise ValueError(f"{name} is used only by backend {' / '.join(owners)}, not {self.backend!r}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url, e.g. http://127.0.0.1:8080/v1 (a local llama.cpp server)")
        return self

    @property
    def capabilities(self) -> frozenset[str]:
        """What this backend gives besides text (``logits``, ``kv``)."""
        return BACKEND_CAPABILITIES[self.backend]

    def label(self) -> str:
        """Short human name, e.g. ``llamacpp:qwen2.5-0.5b-instruct``."""
        return f"{self.backend}:{self.model}"

    def cache_key(self) -> str:
        """Identity for sharing one loaded backend between stages of a worker."""
        return self.model_dump_json()


def check_capabilities(spec: LLMSpec, needs: frozenset[str] | set[str], stage: str) -> None:
    """Raise ``ValueError`` when ``spec``'s backend lacks something ``stage`` needs.

    The message names the stage, the backend, what is missing and the backends that work.
    """
    missing = set(needs) - spec.capabilities
    if not missing:
        return
    ok = [b for b in BACKENDS if set(needs) <= BACKEND_CAPABILITIES[b]]
    what = " and ".join(sorted(missing))
    raise ValueError(
        f"{stage} needs {what} from its model, which backend {spec.backend!r} cannot give; "
        f"use backend {' or '.join(repr(b) for b in ok)}"
    )


def coerce_llm(data: Any, default_model: str) -> Any:
    """Turn stage params' ``model:`` shorthand into ``llm:`` (used by :class:`longread.llm.params.LLMParams`)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    model = data.pop("model", None)
    llm = data.get("llm")
    if llm is None:
        data["llm"] = {"backend": "hf", "model": model if model is not None else default_model}
    elif model is not None:
        llm_model = llm.get("model") if isinstance(llm, dict) else getattr(llm, "model", None)
        if llm_model is not None and llm_model != model:
            raise ValueError(f"give the model once: model={model!r} and llm.model={llm_model!r} disagree")
        if isinstance(llm, dict) and "model" not in llm:
            data["llm"] = {**llm, "model": model}
    elif isinstance(llm, dict) and "model" not in llm:
        data["llm"] = {**llm, "model": default_model}
    return data
