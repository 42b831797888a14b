"""Pipeline configuration: YAML → validated pydantic models, before any model loads.

Errors are ``ConfigError`` and name the file, the stage (position and key) and the field,
and list valid choices where there are any. A quoted bad value is cut to a few hundred
characters (:func:`longread.errors.short_repr`).

What a config means must be what it says, so these are errors rather than guesses:

- duplicate keys in a mapping (YAML would keep the last one silently);
- YAML aliases (``*name``, also inside ``<<`` merge keys): a config is a few lines, and an alias
  chain of 400 bytes can expand to billions of values, so they are refused outright;
- a value of the wrong type, even one pydantic could convert (``top_k: true`` or ``"3"`` for an
  int): every config model and every stage's ``Params`` is strict (an int is still fine for a
  float);
- stages out of order: retrieve → rerank → compress → reorder → read, each kind known from its
  registry key's ``kind.`` prefix, at most one reader and it comes last. Readers over whole
  documents (``reader.long_context``, ``reader.retrolm``, ``reader.refrag``) need no retriever.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import registry
from .errors import clip, short_repr

__all__ = ["ConfigError", "Resources", "ChunkerSpec", "StageSpec", "PipelineConfig", "load_config"]

MAX_CONFIG_BYTES = 1_000_000


class ConfigError(ValueError):
    """A config that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


STAGE_ORDER = ("retriever", "reranker", "compressor", "reorder", "reader")
"""Stage kinds (the ``kind.`` prefix of a registry key) in the order a pipeline runs them."""
_ORDER_TEXT = "retrieve → rerank → compress → reorder → read (one reader, last)"


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

        # The name is a run-dir and index-dir name (`longread compare --configs`): one path part.
        if "/" in v:
            raise ValueError(f"pipeline name must not contain '/', got {v!r}")
        return check_id(v, "pipeline name")

    def validate_stages(self, source: str = "<config>") -> list:
        """Every stage's validated params, importing only their ``Params`` (never torch: see
        ``longread.registry``); raise ``ConfigError`` on bad keys/params/order."""
        self.check_order(source)
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
                raise ConfigError(f"{source}: stages[{i}] ({spec.key}): {clip(str(e), 500)}") from None
        return out

    def build_stages(self, source: str = "<config>") -> list:
        """Instantiate every stage (cheap: no model loads); raise ``ConfigError`` on bad keys/params."""
        out = []
        for i, (spec, params) in enumerate(zip(self.stages, self.validate_stages(source))):
            cls = registry.get(spec.key)
            try:
                out.append(cls(params))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{source}: stages[{i}] ({spec.key}): {clip(str(e), 500)}") from None
        return out

    def check_order(self, source: str = "<config>") -> None:
        """Raise ``ConfigError`` when stages are out of :data:`STAGE_ORDER` or a reader is not last.

        Stages whose key has another kind prefix (third-party kinds) are not ordered.
        """
        last: tuple[int, int] | None = None  # (rank, position) of the latest ordered stage
        for i, spec in enumerate(self.stages):
            kind = spec.key.split(".", 1)[0]
            if kind not in STAGE_ORDER:
                continue
            rank = STAGE_ORDER.index(kind)
            if last is not None and (rank < last[0] or (rank == last[0] == len(STAGE_ORDER) - 1)):
                j = last[1]
                what = "a second reader" if rank == last[0] else f"a {kind} stage"
                raise ConfigError(
                    f"{source}: stages[{i}] ({spec.key}) is {what} after stages[{j}] ({self.stages[j].key}); "
                    f"stages must run in the order {_ORDER_TEXT}"
                )
            last = (rank, i)
        for i, spec in enumerate(self.stages):
            if spec.key.startswith("reader.") and i != len(self.stages) - 1:
                raise ConfigError(
                    f"{source}: stages[{i}] ({spec.key}) is a reader but not the last stage; "
                    f"stages must run in the order {_ORDER_TEXT}"
                )

    def to_yaml(self) -> str:
        """The config as YAML (what a run dir records; never uses aliases, so it loads back)."""
        return yaml.dump(self.model_dump(mode="json"), Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


class _NoAliasDumper(yaml.SafeDumper):
    """SafeDumper that writes a value shared by two fields twice instead of as an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate mapping keys (see the module docstring)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{clip(str(event.anchor), 40)}) are not allowed in longread configs; "
                "write the value out", event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except (TypeError, yaml.YAMLError):
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {short_repr(key, 80)} (first on line {seen[key].line + 1})", key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _explain(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    parts = []
    for e in err.errors():
        loc = clip(".".join(str(x) for x in e["loc"]) or "<root>", 100)
        msg = clip(e["msg"], 300)
        if e["type"] == "extra_forbidden" and model is not None:
            msg += f"; valid fields: {', '.join(sorted(model.model_fields))}"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg += f" (got {short_repr(e.get('input'))})"
        else:
            inp = e.get("input")
            if not isinstance(inp, dict) and e["type"] != "missing":
                msg += f" (got {short_repr(inp)})"
        parts.append(f"field {loc!r}: {msg}")
        if len(parts) == 5:
            break
    more = len(err.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


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
        stream = io.StringIO(text)
        stream.name = str(p)  # type: ignore[misc]  # so YAML errors say "in <file>, line N"
        data = yaml.load(stream, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {clip(' '.join(str(e).split()), 500)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply") from None
    return parse_config(data, str(p))
