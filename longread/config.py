"""Pipeline configuration: YAML → validated pydantic models, before any model loads.

Errors are ``ConfigError`` and name the file, the stage (position and key) and the field,
and list valid choices where there are any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import registry

__all__ = ["ConfigError", "Resources", "ChunkerSpec", "StageSpec", "PipelineConfig", "load_config"]

MAX_CONFIG_BYTES = 1_000_000


class ConfigError(ValueError):
    """A config that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """How a stage runs under Ray: per-actor CPUs/GPUs, batch size and actor count."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=8, gt=0, le=100_000)
    concurrency: int = Field(default=1, gt=0, le=1024)


class ChunkerSpec(_Strict):
    """How documents are cut into chunks at index time.

    ``tokens``: windows of ``size`` tokens with ``overlap``, counted with ``tokenizer``
    (a model name; default: a whitespace-and-punctuation tokenizer). ``sentences``: llama-index
    ``SentenceSplitter`` with ``size``/``overlap`` in tokens. ``whole``: one chunk per document.
    """

    kind: Literal["tokens", "sentences", "whole"] = "tokens"
    size: int = Field(default=256, gt=0, le=1_000_000)
    overlap: int = Field(default=32, ge=0)
    tokenizer: str | None = None

    @model_validator(mode="after")
    def _overlap(self) -> "ChunkerSpec":
        if self.kind != "whole" and self.overlap >= self.size:
            raise ValueError(f"overlap must be < size, got overlap={self.overlap} size={self.size}")
        return self


class StageSpec(_Strict):
    """One stage in a config: registry key, its params, and its Ray resources."""

    key: str
    params: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)


class PipelineConfig(_Strict):
    """A whole pipeline: name, chunker and the ordered query stages."""

    name: str = Field(min_length=1, max_length=200)
    chunker: ChunkerSpec = Field(default_factory=ChunkerSpec)
    stages: list[StageSpec] = Field(min_length=1)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from .types import check_id

        return check_id(v, "pipeline name")

    def validate_stages(self, source: str = "<config>") -> list:
        """Every stage's validated params, importing only their ``Params`` (never torch: see
        ``longread.registry``); raise ``ConfigError`` on bad keys/params."""
        out = []
        for i, spec in enumerate(self.stages):
            try:
                model = registry.params(spec.key)
            except registry.UnknownStageError as e:
                raise ConfigError(f"{source}: stages[{i}]: {e}") from None
            try:
                out.append(model.model_validate(spec.params))
            except ValidationError as e:
                raise ConfigError(f"{source}: stages[{i}] ({spec.key}): {_explain(e, model)}") from None
            except (ValueError, TypeError) as e:  # raised by a validator outside pydantic's wrapping
                raise ConfigError(f"{source}: stages[{i}] ({spec.key}): {e}") from None
        return out

    def build_stages(self, source: str = "<config>") -> list:
        """Instantiate every stage (cheap: no model loads); raise ``ConfigError`` on bad keys/params."""
        out = []
        for i, (spec, params) in enumerate(zip(self.stages, self.validate_stages(source))):
            cls = registry.get(spec.key)
            try:
                out.append(cls(params))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{source}: stages[{i}] ({spec.key}): {e}") from None
        return out

    def to_yaml(self) -> str:
        """The config as YAML (what a run dir records)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _explain(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and model is not None:
            msg += f"; valid fields: {', '.join(sorted(model.model_fields))}"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg += f" (got {e.get('input')!r})"
        else:
            inp = e.get("input")
            if not isinstance(inp, dict) and e["type"] != "missing":
                msg += f" (got {inp!r})"
        parts.append(f"field {loc!r}: {msg}")
    return "; ".join(parts)


def parse_config(data: Any, source: str = "<config>") -> PipelineConfig:
    """Validate a config mapping, its stage keys and every stage's params."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping with name/chunker/stages, got {type(data).__name__}")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_explain(e, PipelineConfig)}") from None
    cfg.validate_stages(source)  # keys and params now, before anything loads or imports torch
    return cfg


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML config file; raise ``ConfigError`` naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    raw = p.read_bytes()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: config is {len(raw)} bytes, more than the {MAX_CONFIG_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply") from None
    return parse_config(data, str(p))
