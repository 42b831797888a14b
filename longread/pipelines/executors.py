"""Executors: run the query stages over questions, in-process or on Ray.

Both share :func:`run_stage_safely`, so a question that makes a stage fail is recorded with its
error and skipped by later stages while the rest of its batch goes on; both give the same answers
for the same config, seed and batch sizes.
"""

from __future__ import annotations

import itertools
import os
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import clip
from ..stage import RunContext, Stage
from ..types import QAState

__all__ = [
    "run_stage_safely", "LocalExecutor", "RayExecutor", "StageFailed", "make_context", "init_ray", "set_worker_threads", "memory_mb",
]

ERROR_KEY = "error"


class StageFailed(RuntimeError):
    """A stage raised on a question while ``fail_fast`` was set."""


def _error_text(stage: Stage, exc: BaseException) -> str:
    return f"{stage.key}: {type(exc).__name__}: {clip(str(exc), 1000)}"


def run_stage_safely(stage: Stage, batch: list[QAState], *, fail_fast: bool = False) -> list[QAState]:
    """Run ``stage`` on the states of ``batch`` that have no error yet.

    If the stage raises on the batch, each state is retried alone so that only the questions that
    fail get ``trace["error"]``; with ``fail_fast`` the first error is raised as ``StageFailed``.
    Returns the states in input order.
    """
    todo = [i for i, s in enumerate(batch) if ERROR_KEY not in s.trace]
    if not todo:
        return batch
    out = list(batch)
    try:
        done = stage([batch[i] for i in todo])
        if len(done) != len(todo):
            raise RuntimeError(f"stage returned {len(done)} states for a batch of {len(todo)}")
        for i, s in zip(todo, done):
            out[i] = s
        return out
    except Exception as exc:  # noqa: BLE001 - isolated per question below, or re-raised
        if fail_fast:
            ids = ", ".join(repr(batch[i].question.id) for i in todo[:5]) + (", ..." if len(todo) > 5 else "")
            raise StageFailed(f"stopped at the first failure (fail_fast): on question(s) {ids}: {_error_text(stage, exc)}") from exc
        if len(todo) == 1:
            _mark(out[todo[0]], stage, exc)
            return out
    for i in todo:
        try:
            (res,) = stage([batch[i]])
            out[i] = res
        except Exception as exc:  # noqa: BLE001 - recorded in the prediction and counted
            _mark(out[i], stage, exc)
    return out


def _mark(state: QAState, stage: Stage, exc: BaseException) -> None:
    state.trace[ERROR_KEY] = _error_text(stage, exc)
    state.trace["error_traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=6))


def make_context(
    index_dir: Path | None,
    *,
    cache_dir: Path | None,
    seed: int,
    device: str,
    kv_dir: Path | None = None,
    verify: str = "sizes",
) -> RunContext:
    """Open the index (if any) and build a fresh ``RunContext`` with its own model hub.

    ``cache_dir`` is the model cache, ``kv_dir`` the stages' cross-run cache (``ctx.cache_dir``;
    None: memory only). The index is checked against its manifest first (``verify``: ``sizes``
    or ``full``, see :func:`longread.pipelines.indexdir.check_index`), so a damaged file is one
    error naming it, not a numpy or JSON error from deep inside a stage. The corpus store is
    opened lazily (:class:`~longread.pipelines.store.ShardedStore`): every worker maps the same
    files, so the OS shares their pages instead of each process holding a copy of the corpus.
    """
    from ..models.hub import ModelHub
    from .indexdir import check_index, read_manifest, rebuild_command
    from .store import CorpusStore

    store = None
    if index_dir is not None:
        manifest = read_manifest(index_dir)
        check_index(index_dir, manifest, verify)  # type: ignore[arg-type]
        store = CorpusStore.load(index_dir, rebuild_hint=rebuild_command(index_dir, manifest))
    return RunContext(
        models=ModelHub(cache_dir=cache_dir, device=device),
        index_dir=index_dir,
        store=store,
        cache_dir=kv_dir,
        seed=seed,
        device=device,
    )


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


class LocalExecutor:
    """Runs every stage in this process and yields each state as soon as its reader batch finishes.

    The stages form a chain of lazy batchers: a stage takes ``batch_size`` states from the one
    before it only when the stage after it asks for more, so the first answers come out after one
    batch of each stage (not after the whole question set has passed every stage), a progress bar
    moves from the first reader batch on, and a kill loses at most the batches in flight.
    """

    def __init__(self, stages: Sequence[Stage], batch_sizes: Sequence[int], ctx: RunContext, *, fail_fast: bool = False):
        self.stages = list(stages)
        self.batch_sizes = list(batch_sizes)
        self.ctx = ctx
        self.fail_fast = fail_fast
        self._ready = False

    def setup(self) -> None:
        """Call ``setup`` on every stage once."""
        if not self._ready:
            _seed_all(self.ctx.seed)
            for st in self.stages:
                st.setup(self.ctx)
            self._ready = True

    def _batched(self, stage: Stage, batch_size: int, upstream: Iterator[QAState]) -> Iterator[QAState]:
        while True:
            batch = list(itertools.islice(upstream, batch_size))
            if not batch:
                return
            yield from run_stage_safely(stage, batch, fail_fast=self.fail_fast)

    def run(self, states: list[QAState]) -> Iterator[QAState]:
        """Yield finished states (errored ones included) in input order."""
        self.setup()
        it: Iterator[QAState] = iter(states)
        for st, bs in zip(self.stages, self.batch_sizes):
            it = self._batched(st, bs, it)
        yield from it


def memory_mb() -> dict[str, float]:
    """This process's memory from ``/proc/self/status``, in MiB: ``rss`` (resident now), ``anon``
    (private memory), ``file`` (mapped file pages, shared with every process mapping the same
    files: the corpus store, memory-mapped vectors) and ``peak`` (highest RSS). Empty off Linux."""
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "VmHWM:": "peak"}
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name = keys.get(line.split(":", 1)[0] + ":")
            if name:
                out[name] = round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        return {}
    return out


def set_worker_threads(num_cpus: float) -> None:
    """Give torch one intra-op thread per CPU granted to this Ray worker: actors must not
    oversubscribe cores."""
    try:
        import torch

        torch.set_num_threads(max(1, int(num_cpus)))
    except ImportError:  # pragma: no cover
        pass


def init_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one (of ``num_cpus`` CPUs; default all),
    once per process; Ray Data then runs without its own progress bars (longread shows one) and
    without INFO lines on the console (its logs stay in the Ray session's log dir)."""
    import logging

    import ray
    import ray.data

    dctx = ray.data.DataContext.get_current()
    dctx.enable_progress_bars = False
    dctx.print_on_execution_start = False
    # Ray Data says once per process that its progress bars are off, and logs each dataset's start
    # and end at INFO: noise on a longread run, which has its own progress bar.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING,
    }
    if address:
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)


class _RayStageActor:
    """Ray actor (or task body) that owns one stage: built and set up once per worker."""

    def __init__(
        self, key: str, params: dict, index_dir: str | None, cache_dir: str | None, seed: int, device: str, fail_fast: bool,
        num_cpus: float = 1.0, kv_dir: str | None = None,
    ):
        from .. import registry

        set_worker_threads(num_cpus)
        cls = registry.get(key)
        self.stage = cls(cls.Params.model_validate(params))
        ctx = make_context(
            Path(index_dir) if index_dir else None, cache_dir=Path(cache_dir) if cache_dir else None, seed=seed,
            device=device, kv_dir=Path(kv_dir) if kv_dir else None,
        )
        _seed_all(seed)
        self.stage.setup(ctx)
        self.fail_fast = fail_fast

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        states = [QAState.model_validate_json(s) for s in batch["state"]]
        states = run_stage_safely(self.stage, states, fail_fast=self.fail_fast)
        mem = memory_mb()
        for s in states:
            # What this worker holds after the batch: a corpus copy would show in anon, shared store pages in file.
            s.trace.setdefault("worker_memory_mb", {})[self.stage.key] = mem
        return {"state": [s.model_dump_json() for s in states]}


def _run_stateless(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Ray task body for a stateless stage: build it (cheap) and run one batch."""
    return _RayStageActor(**kwargs)(batch)


class RayExecutor:
    """Runs the stages as a ``ray.data`` pipeline: one actor pool per stage, sized from its resources.

    Starts a local Ray cluster unless ``address`` names an existing one.
    """

    def __init__(
        self,
        specs: Sequence[Any],
        index_dir: Path | None,
        *,
        cache_dir: Path | None,
        seed: int,
        device: str = "cpu",
        address: str | None = None,
        fail_fast: bool = False,
        kv_dir: Path | None = None,
    ) -> None:
        self.specs = list(specs)
        self.kv_dir = kv_dir
        self.index_dir = index_dir
        self.cache_dir = cache_dir
        self.seed = seed
        self.device = device
        self.address = address
        self.fail_fast = fail_fast

    def _init(self) -> None:
        init_ray(self.address)

    def run(self, states: list[QAState], on_progress: Callable[[int], None] | None = None) -> Iterator[QAState]:
        """Yield finished states; order follows the input (the dataset preserves order)."""
        import ray
        import ray.data

        self._init()
        dctx = ray.data.DataContext.get_current()
        dctx.execution_options.preserve_order = True
        ds = ray.data.from_items([{"state": s.model_dump_json()} for s in states], override_num_blocks=max(1, min(len(states), 64)))
        from .. import registry

        for spec in self.specs:
            r = spec.resources
            kwargs = {
                "key": spec.key,
                "params": spec.params,
                "index_dir": str(self.index_dir) if self.index_dir else None,
                "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "seed": self.seed,
                "device": self.device,
                "fail_fast": self.fail_fast,
                "num_cpus": r.num_cpus,
                "kv_dir": str(self.kv_dir) if self.kv_dir else None,
            }
            if registry.get(spec.key).stateless:
                # Nothing to load: plain tasks, retried by Ray if their worker dies.
                ds = ds.map_batches(_run_stateless, fn_kwargs=kwargs, batch_size=r.batch_size, num_cpus=r.num_cpus, batch_format="numpy")
                continue
            ds = ds.map_batches(
                _RayStageActor,
                fn_constructor_kwargs=kwargs,
                batch_size=r.batch_size,
                num_cpus=r.num_cpus,
                num_gpus=r.num_gpus or None,
                compute=ray.data.ActorPoolStrategy(size=r.concurrency),
                batch_format="numpy",
                # Fault tolerance comes from Ray Data's defaults: a dead actor is restarted and its batch
                # retried (actors: unbounded restarts; tasks: Ray's 3 retries). Passing them as remote
                # args is deprecated in Ray 2.60 and removed in 2.64.
            )
        for row in ds.iter_rows():
            yield QAState.model_validate_json(str(row["state"]))
