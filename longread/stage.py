"""The stage contract shared by every retriever, reranker, compressor, reorderer and reader.

A stage is a class with a registry ``key``, a pydantic ``Params`` model, a cheap ``__init__``,
a ``setup(ctx)`` that loads models or opens the index once per worker, and a batched
``__call__``. Stages that need something built at index time (a BM25 index, vectors,
page KV) return builders from ``indexes()``; the pipeline runs each builder into a temporary
directory and renames it into ``INDEX_DIR/<name>`` only when it finished, so an index dir
never holds half-written parts. A :class:`ShardedBuilder` splits that work into a per-shard
``map`` (run in parallel on Ray, resumed shard by shard after a kill) and a ``reduce``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict

from .types import QAState

if TYPE_CHECKING:  # pragma: no cover
    from .models.hub import ModelHub
    from .pipelines.store import BaseStore

__all__ = ["Params", "Stage", "RunContext", "IndexBuilder", "ShardedBuilder", "ChunkShard", "timed"]


class Params(BaseModel):
    """Base for stage params: unknown fields are errors, values are validated on assignment, and
    types are strict — ``top_k: true`` or ``top_k: "3"`` is refused, not turned into an int (an
    int is still accepted for a float field)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), strict=True)


IndexBuilder = Callable[["RunContext", Path], None]
"""Builds one index part into the given (temporary, empty) directory."""


@dataclass(frozen=True)
class ChunkShard:
    """The chunks of one store shard: ``texts[j]`` is chunk number ``start + j``."""

    index: int
    start: int
    texts: list[str]


@dataclass(frozen=True)
class ShardedBuilder:
    """An index part built shard by shard, so indexing streams, runs on Ray and resumes.

    ``map(ctx, shard, out)`` writes what one :class:`ChunkShard` contributes into the empty dir
    ``out``; it runs once per shard, in any process and any order, and must depend only on the
    shard and the stage's params (its output is kept across a killed build and reused).
    ``reduce(ctx, shard_dirs, out)`` combines the shards' dirs, in index order, into the part.
    ``uses_model``: ``map`` loads a model, so Ray runs it on an actor pool sized by the stage's
    ``resources`` (one model per actor) instead of as plain tasks.
    ``check(ctx)``, when given, runs once in the calling process before any shard is mapped (the
    store is open, no model need be loaded); it raises ``ValueError`` for params that cannot fit
    this corpus, so a doomed build fails before hours of work.

    Calling the builder like a plain :data:`IndexBuilder` runs the steps over ``ctx.store`` here.
    """

    map: Callable[["RunContext", ChunkShard, Path], None]
    reduce: Callable[["RunContext", Sequence[Path], Path], None]
    uses_model: bool = False
    check: Callable[["RunContext"], None] | None = None

    def __call__(self, ctx: "RunContext", out: Path) -> None:
        if self.check is not None:
            self.check(ctx)
        work = Path(tempfile.mkdtemp(prefix=".shards.", suffix=".tmp", dir=out.parent))  # cleaned as a stale temp if killed
        try:
            dirs = []
            for shard in ctx.require_store().iter_chunk_shards():
                d = work / f"{shard.index:05d}"
                d.mkdir()
                self.map(ctx, shard, d)
                dirs.append(d)
            self.reduce(ctx, dirs, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class RunContext:
    """What a stage may use in ``setup``: the opened index, model loader, caches, seed.

    ``cache_dir`` is where a stage keeps what is worth reusing across runs (page KV, chunk
    embeddings): by default the bounded, LRU-evicted KV cache ``<cache root>/kv`` (see
    :mod:`longread.cache`); None means keep it in memory only. A stage that reuses an entry
    there refreshes its last-use time (``Path.touch``) so eviction keeps it.
    One context per worker process; nothing in it is global.
    """

    models: "ModelHub"
    index_dir: Path | None = None
    store: "BaseStore | None" = None
    cache_dir: Path | None = None
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def index_part(self, name: str) -> Path:
        """Path of a built index part; raise ``FileNotFoundError`` naming what is missing."""
        if self.index_dir is None:
            raise FileNotFoundError(f"index part {name!r} needed but no index dir is open; run `longread index` first")
        path = self.index_dir / name
        if not path.is_dir():
            raise FileNotFoundError(f"index part {name!r} is missing from {self.index_dir}; rebuild the index")
        return path

    def progress(self, n: int) -> None:
        """Report that ``n`` more chunks of the shard a ``ShardedBuilder.map`` works on are done
        (moves the index build's progress bar within a long shard; a no-op elsewhere)."""
        report = self.extra.get("on_progress")
        if report is not None:
            report(n)

    def require_store(self) -> "BaseStore":
        """The opened corpus store; raise ``RuntimeError`` when no corpus was indexed."""
        if self.store is None:
            raise RuntimeError("this stage needs the indexed corpus, but no index is open")
        return self.store


class Stage:
    """Base class for every pipeline stage. Subclasses set ``key`` and ``Params``."""

    key: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = Params
    #: True when ``setup`` loads nothing (no model, no index): Ray runs such stages as plain
    #: tasks instead of a pool of long-lived actors.
    stateless: ClassVar[bool] = False

    def __init__(self, params: BaseModel | None = None) -> None:
        # Cheap by contract: validate params, load nothing.
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            params = self.Params.model_validate(params if isinstance(params, dict) else params.model_dump())
        self.params = params

    def setup(self, ctx: RunContext) -> None:
        """Load models and open index parts. Called once per worker before any batch."""

    def indexes(self) -> dict[str, IndexBuilder]:
        """Index parts this stage needs, by directory name: plain builders or
        :class:`ShardedBuilder` s. Default: none."""
        return {}

    def __call__(self, batch: list[QAState]) -> list[QAState]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class timed:
    """Context manager that adds the elapsed seconds, shared evenly by the batch's states, to each
    state's ``Usage`` record of stage ``name`` (``Usage.seconds``; see :mod:`longread.llm.usage`)."""

    def __init__(self, batch: list[QAState], name: str) -> None:
        self.batch = batch
        self.name = name

    def __enter__(self) -> "timed":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        from .llm.usage import record

        # A batch's time is shared evenly: per-question cost is what the report needs.
        dt = (time.perf_counter() - self.t0) / max(1, len(self.batch))
        for s in self.batch:
            record(s, self.name, seconds=dt)
