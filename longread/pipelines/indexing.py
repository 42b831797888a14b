"""Building an index dir: the corpus streamed into store shards, chunked, and each part built shard by shard.

The steps, the same files with either executor (``local``: this process; ``ray``: Ray Data):

1. **read**: the documents stream into ``corpus/docs/`` shards of a build dir beside the index
   (``.NAME.build``), hashed as they pass; memory holds one shard of documents at a time.
2. **chunk**: each shard's documents become ``corpus/chunks/`` (Ray: one task per shard).
3. **commit**: the store's lookups are written; the store and ``manifest.json`` become ``NAME/``.
4. **parts**: a :class:`~longread.stage.ShardedBuilder` maps every shard into
   ``.NAME.build/_map/PART/NNNNN`` (Ray: tasks, or an actor pool sized by the stage's ``resources``
   when it loads a model) and reduces them here into ``NAME/PART``; a plain builder runs here.

Every shard's output is renamed into place complete and records what it was made from (the hash
of its documents, the chunker, the part's params), so running a killed build again keeps its
finished shards and redoes only the rest; the build dir is removed when the index is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..config import ChunkerSpec, StageSpec
from ..io import atomic_dir, atomic_write_json, remove_stale_temps
from ..stage import IndexBuilder, RunContext, ShardedBuilder, Stage
from ..types import Document
from .indexdir import INDEX_FORMAT, MANIFEST, check_index, file_table, index_lock, read_manifest, rebuild_command
from .store import SHARD_BYTES, SHARD_DOCS, STORE_DIR, ShardedStore, StoreWriter, docs_digest_lines, open_store, shard_batches, shard_name

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

__all__ = ["IndexBuild", "build_dir_for", "concat_npy", "EXECUTORS"]

EXECUTORS = ("local", "ray")
MAP_DONE = "_source.json"
"""Written last into a part's per-shard output: the store shard it was made from."""


class IndexMismatchError(ValueError):
    """The index dir holds a different corpus or chunking than asked for."""


def build_dir_for(index_dir: Path) -> Path:
    """Where a build of ``index_dir`` keeps its finished shards until the index is complete."""
    return index_dir.parent / f".{index_dir.name}.build"


def concat_npy(paths: Sequence[Path], out: Path) -> np.ndarray:
    """Concatenate ``.npy`` arrays (same dtype and trailing shape) along axis 0 into ``out``,
    one input at a time; return ``out`` as a read-only memory map. Raises ``ValueError`` for
    no inputs or mismatched shapes."""
    if not paths:
        raise ValueError("concat_npy needs at least one input")
    heads = [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]
    tail, dtype = heads[0].shape[1:], heads[0].dtype
    for p, a in zip(paths, heads):
        if a.shape[1:] != tail or a.dtype != dtype:
            raise ValueError(f"{p}: shape {a.shape} / {a.dtype} does not match {tail} / {dtype}")
    n = sum(a.shape[0] for a in heads)
    dst = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(n, *tail))
    i = 0
    for a in heads:
        dst[i : i + len(a)] = a
        i += len(a)
    dst.flush()
    del dst
    return np.load(out, mmap_mode="r", allow_pickle=False)


def chunk_source(docs_sha256: str, spec: ChunkerSpec) -> dict[str, Any]:
    """What a chunk shard is made from (its identity: see :meth:`StoreWriter.chunks_id`)."""
    return {"docs_sha256": docs_sha256, "chunker": spec.model_dump(mode="json")}


def chunk_shard(corpus_dir: Path, k: int, spec: ChunkerSpec, tools: tuple[Any, Any]) -> int:
    """Chunk the documents of shard ``k`` of the store being built in ``corpus_dir``; return their number."""
    from .chunking import chunk_document

    w = StoreWriter(corpus_dir)
    info = w.docs_info(k)
    if info is None:
        raise FileNotFoundError(f"{corpus_dir}: shard {k} has no documents")
    tokenizer, splitter = tools
    docs = w.documents(k)
    w.write_chunks(k, [chunk_document(d, spec, tokenizer=tokenizer, splitter=splitter) for d in docs], chunk_source(info["sha256"], spec))
    return len(docs)


def map_done(map_root: Path, k: int, source: str) -> bool:
    """True when ``map_root`` holds shard ``k``'s finished output made from chunk shard ``source``."""
    try:
        return json.loads((map_root / shard_name(k) / MAP_DONE).read_text(encoding="utf-8")).get("source") == source
    except (OSError, ValueError, AttributeError):
        return False


def map_shard(builder: ShardedBuilder, ctx: RunContext, store: ShardedStore, k: int, map_root: Path) -> int:
    """Run ``builder.map`` on shard ``k`` into ``map_root/NNNNN`` (atomically); return its chunks."""
    shard = store.chunk_shard(k)
    with atomic_dir(map_root / shard_name(k)) as tmp:
        builder.map(ctx, shard, tmp)
        atomic_write_json(tmp / MAP_DONE, {"source": store.shard_source(k)})
    return len(shard.texts)


def stage_builder(key: str, params: dict, part: str) -> ShardedBuilder:
    """Rebuild a stage from its registry key and params (in a worker) and return its builder of ``part``."""
    from .. import registry

    cls = registry.get(key)
    builder = cls(cls.Params.model_validate(params)).indexes().get(part)
    if not isinstance(builder, ShardedBuilder):
        raise TypeError(f"stage {key!r} declares no sharded builder for index part {part!r}")
    return builder


@dataclass
class PartJob:
    """One index part to build: its name, builder, and the stage (and spec) that declared it."""

    name: str
    builder: IndexBuilder | ShardedBuilder
    stage: Stage
    spec: StageSpec


# ---------------------------------------------------------------------------------------------
# Executors: who runs the per-shard work


class _Bar:
    def __init__(self, show: bool, desc: str, total: int | None, unit: str, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class LocalRunner:
    """Runs the per-shard work in this process, one shard after another."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.worker_peak_mb: float | None = None  # no workers

    def chunk(self, corpus_dir: Path, shards: list[int], spec: ChunkerSpec, bar: _Bar) -> None:
        from .chunking import chunker_tools

        tools = chunker_tools(spec, self.ctx.models)
        for k in shards:
            bar.update(chunk_shard(corpus_dir, k, spec, tools))

    def map_part(self, job: PartJob, store: ShardedStore, shards: list[int], map_root: Path, bar: _Bar) -> None:
        assert isinstance(job.builder, ShardedBuilder)
        for k in shards:
            reported = [0]

            def report(n: int) -> None:  # a map that reports as it goes moves the bar within its shard
                reported[0] += n
                bar.update(n)

            self.ctx.extra["on_progress"] = report
            try:
                n = map_shard(job.builder, self.ctx, store, k, map_root)
            finally:
                self.ctx.extra.pop("on_progress", None)
            bar.update(max(0, n - reported[0]))


def _ray_chunk(batch: dict[str, Any], corpus_dir: str, spec: dict, cache_dir: str | None, device: str) -> dict[str, Any]:
    """Ray task body: chunk the shards of ``batch``."""
    from ..models.hub import ModelHub
    from .chunking import chunker_tools

    def work(k: int) -> int:
        sp = ChunkerSpec.model_validate(spec)
        return chunk_shard(Path(corpus_dir), k, sp, chunker_tools(sp, ModelHub(cache_dir=cache_dir, device=device)))

    return _rows(batch, work)


def _rows(batch: dict[str, Any], work: Callable[[int], int]) -> dict[str, Any]:
    """Run ``work`` on each shard of ``batch``: its count, the worker's peak RSS, and the pickled
    exception if it raised. Ray Data would replace the exception with its own wrapper and the
    user's message would be lost; the driver raises this one instead."""
    from .executors import memory_mb

    shards = [int(k) for k in batch["shard"]]
    counts, errors = [], []
    for k in shards:
        try:
            counts.append(work(k))
            errors.append(b"")
        except Exception as e:  # noqa: BLE001 - sent to the driver, raised there
            counts.append(0)
            try:
                errors.append(pickle.dumps(e))
            except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its text
                errors.append(pickle.dumps(RuntimeError(f"shard {k}: {type(e).__name__}: {e}")))
    peak = memory_mb().get("peak", 0.0)
    return {"shard": np.asarray(shards), "n": np.asarray(counts), "peak_mb": np.asarray([peak] * len(shards)),
            "error": np.asarray(errors, dtype=object)}


class _RayMapActor:
    """Ray actor (or task body) that runs one part's ``map`` on shards: the stage and its models
    are built once per worker."""

    def __init__(
        self, key: str, params: dict, part: str, store_dir: str, map_root: str, cache_dir: str | None,
        kv_dir: str | None, seed: int, device: str, num_cpus: float = 1.0,
    ) -> None:
        from ..models.hub import ModelHub
        from .executors import _seed_all, set_worker_threads

        set_worker_threads(num_cpus)
        self.builder = stage_builder(key, params, part)
        self.store = ShardedStore(Path(store_dir))
        self.map_root = Path(map_root)
        self.ctx = RunContext(
            models=ModelHub(cache_dir=cache_dir, device=device), index_dir=Path(store_dir).parent, store=self.store,
            cache_dir=Path(kv_dir) if kv_dir else None, seed=seed, device=device,
        )
        _seed_all(seed)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _rows(batch, lambda k: map_shard(self.builder, self.ctx, self.store, k, self.map_root))


def _ray_map_task(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Ray task body for a part whose map loads no model."""
    return _RayMapActor(**kwargs)(batch)


class RayRunner:
    """Runs the per-shard work as Ray Data steps: chunking and model-free maps as tasks (one shard
    each), a map that loads a model on an actor pool of ``resources.concurrency`` actors with
    ``num_cpus``/``num_gpus`` each. Joins the cluster at ``address`` or starts a local one.

    The build dir and the model cache must be at the same path on every node (a shared filesystem).
    """

    def __init__(self, *, address: str | None, cache_dir: Path | None, kv_dir: Path | None, seed: int, device: str) -> None:
        self.address, self.cache_dir, self.kv_dir, self.seed, self.device = address, cache_dir, kv_dir, seed, device
        self.worker_peak_mb: float | None = None
        """The highest peak RSS a worker reported in the last step (MiB)."""

    def _dataset(self, shards: list[int]):
        import ray.data

        from .executors import init_ray

        init_ray(self.address)
        return ray.data.from_items([{"shard": k} for k in shards], override_num_blocks=max(1, len(shards)))

    def _drain(self, ds, bar: _Bar) -> None:
        self.worker_peak_mb = 0.0
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])  # the shard's own exception, from our worker
            bar.update(int(row["n"]))
            self.worker_peak_mb = max(self.worker_peak_mb, float(row["peak_mb"]))

    def chunk(self, corpus_dir: Path, shards: list[int], spec: ChunkerSpec, bar: _Bar) -> None:
        if not shards:
            return
        ds = self._dataset(shards).map_batches(
            _ray_chunk, batch_size=1, num_cpus=1, batch_format="numpy",
            fn_kwargs={"corpus_dir": str(corpus_dir), "spec": spec.model_dump(mode="json"),
                       "cache_dir": str(self.cache_dir) if self.cache_dir else None, "device": self.device},
        )
        self._drain(ds, bar)

    def map_part(self, job: PartJob, store: ShardedStore, shards: list[int], map_root: Path, bar: _Bar) -> None:
        import ray.data

        if not shards:
            return
        r = job.spec.resources
        kwargs = {
            "key": job.spec.key, "params": job.spec.params, "part": job.name, "store_dir": str(store.dir),
            "map_root": str(map_root), "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "kv_dir": str(self.kv_dir) if self.kv_dir else None, "seed": self.seed, "device": self.device,
            "num_cpus": r.num_cpus,
        }
        assert isinstance(job.builder, ShardedBuilder)
        ds = self._dataset(shards)
        if job.builder.uses_model:
            ds = ds.map_batches(
                _RayMapActor, fn_constructor_kwargs=kwargs, batch_size=1, num_cpus=r.num_cpus, num_gpus=r.num_gpus or None,
                # No more actors than shards: an idle actor would load its model for nothing.
                compute=ray.data.ActorPoolStrategy(size=min(r.concurrency, len(shards))), batch_format="numpy",
            )
        else:
            ds = ds.map_batches(_ray_map_task, fn_kwargs=kwargs, batch_size=1, num_cpus=r.num_cpus, batch_format="numpy")
        self._drain(ds, bar)


# ---------------------------------------------------------------------------------------------
# The build


def _digest_pass(documents: Iterable[Document]) -> tuple[str, int, dict[str, str]]:
    """Corpus digest, document count and ``{id: file sha256}`` of a stream, keeping nothing else."""
    h = hashlib.sha256()
    n = 0
    shas: dict[str, str] = {}
    for d in documents:
        h.update(next(docs_digest_lines([d])))
        n += 1
        sha = d.meta.get("sha256")
        if isinstance(sha, str):
            shas[d.id] = sha
    return h.hexdigest(), n, shas


class IndexBuild:
    """One ``Pipeline.index`` call (see :meth:`longread.pipelines.pipeline.Pipeline.index`)."""

    def __init__(
        self, pipeline: "Pipeline", index_dir: Path, *, executor: str = "local", address: str | None = None,
        shard_bytes: int = SHARD_BYTES, shard_docs: int = SHARD_DOCS, show_progress: bool = True,
    ) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
        if shard_bytes <= 0 or shard_docs <= 0:
            raise ValueError(f"shard size must be > 0, got {shard_bytes} bytes / {shard_docs} documents")
        self.pipe = pipeline
        self.index_dir = Path(index_dir)
        self.build_dir = build_dir_for(self.index_dir)
        self.executor = executor
        self.address = address
        self.shard_bytes, self.shard_docs = shard_bytes, shard_docs
        self.show = show_progress
        self.chunker = pipeline.config.chunker.model_dump(mode="json")
        self.jobs = [
            PartJob(name, builder, stage, spec)
            for spec, stage in zip(pipeline.config.stages, pipeline.stages)
            for name, builder in stage.indexes().items()
        ]
        self._hub = None

    # -- entry point --------------------------------------------------------------------------
    def run(self, documents: Iterable[Document], *, rebuild: bool, corpus_path: str | Path | None) -> Path:
        """Build or extend the index dir; see ``Pipeline.index``."""
        idx = self.index_dir
        if idx.exists() and not idx.is_dir():
            raise NotADirectoryError(f"index dir {str(idx)!r} is a file, not a directory")
        if (idx / MANIFEST).is_file() and not rebuild:
            return self._extend(documents, corpus_path)
        with index_lock(idx):
            self._clean_temps()
            if not (idx / MANIFEST).is_file() and idx.exists() and any(idx.iterdir()):
                raise IndexMismatchError(f"{str(idx)!r} is not empty and holds no {MANIFEST}; refusing to write into it")
            manifest = self._build_store(documents, corpus_path)
            self._build_parts(manifest)
        return idx

    def _extend(self, documents: Iterable[Document], corpus_path: str | Path | None) -> Path:
        """An index is there: only the corpus' digest is needed (the same corpus gets the parts it
        lacks, another is refused), so the stream is hashed, not stored."""
        idx = self.index_dir
        digest, n, shas = _digest_pass(documents)
        if n == 0:
            raise ValueError("cannot index an empty corpus")
        if self._complete(digest, [j.name for j in self.jobs]):
            return idx  # nothing to write: no lock needed, concurrent runs may share it
        with index_lock(idx):
            self._clean_temps()
            manifest = self._reusable_manifest(digest, shas)
            check_index(idx, manifest, "sizes")  # never build new parts on a damaged store
            manifest = self._upgrade_store(manifest, corpus_path)
            self._build_parts(manifest)
        return idx

    def _build_store(self, documents: Iterable[Document], corpus_path: str | Path | None) -> dict[str, Any]:
        """Read, chunk and commit the store as a new index dir (replacing one there); return its manifest."""
        report = getattr(documents, "report", None)  # a load_documents() stream or LoadedCorpus
        t0 = time.perf_counter()
        writer = StoreWriter(self.build_dir / STORE_DIR)
        digest, n_docs, n_shards = self._read(documents, writer)
        if n_docs == 0:
            shutil.rmtree(self.build_dir, ignore_errors=True)
            raise ValueError("cannot index an empty corpus")
        writer.finish_documents(n_shards)  # duplicate ids fail here, before any chunking
        chunk_peak = self._chunk(writer, n_shards, n_docs)
        store = writer.finish(n_shards)
        manifest = {
            "format": INDEX_FORMAT,
            "corpus_sha256": digest,
            "chunker": self.chunker,
            "n_documents": store["n_documents"],
            "n_chunks": store["n_chunks"],
            "store": {"format": store["format"], "shards": n_shards},
            "parts": {},
            "chunk_seconds": round(time.perf_counter() - t0, 3),
            "built_with": self.pipe._built_with(corpus_path),
        }
        if chunk_peak is not None:
            manifest["chunk_worker_peak_rss_mb"] = chunk_peak
        if report is not None and hasattr(report, "to_manifest"):
            manifest["loader"] = report.to_manifest()  # complete once the stream is consumed
        with atomic_dir(self.index_dir) as tmp:
            os.replace(self.build_dir / STORE_DIR, tmp / STORE_DIR)
            manifest["files"] = file_table(tmp, STORE_DIR)
            atomic_write_json(tmp / MANIFEST, manifest)
        return manifest

    # -- helpers ------------------------------------------------------------------------------
    def hub(self):
        """The model hub of this process (built on first use)."""
        if self._hub is None:
            self._hub = self.pipe._hub()
        return self._hub

    def _ctx(self, store: Any) -> RunContext:
        p = self.pipe
        return RunContext(models=self.hub(), index_dir=self.index_dir, store=store, cache_dir=p.kv_dir, seed=p.config.seed, device=p.device)

    def _runner(self, ctx: RunContext) -> LocalRunner | RayRunner:
        if self.executor == "local":
            return LocalRunner(ctx)
        p = self.pipe
        return RayRunner(address=self.address, cache_dir=p.cache_dir, kv_dir=p.kv_dir, seed=p.config.seed, device=p.device)

    def _clean_temps(self) -> None:
        idx = self.index_dir
        remove_stale_temps(idx.parent, [idx.name])
        remove_stale_temps(idx)
        for sub in ("", "docs", "chunks"):
            remove_stale_temps(self.build_dir / STORE_DIR / sub)
        if (self.build_dir / "_map").is_dir():
            for d in (self.build_dir / "_map").iterdir():
                remove_stale_temps(d)

    def _complete(self, digest: str, names: list[str]) -> bool:
        """True when the index dir already holds this corpus, chunker and every part."""
        idx = self.index_dir
        try:
            m = json.loads((idx / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(m, dict) and m.get("format") == INDEX_FORMAT and m.get("corpus_sha256") == digest
            and m.get("chunker") == self.chunker and all(n in (m.get("parts") or {}) and (idx / n).is_dir() for n in names)
        )

    def _reusable_manifest(self, digest: str, shas: dict[str, str]) -> dict[str, Any]:
        """The manifest to extend; raise when the index holds another corpus or chunker."""
        from .pipeline import changed_file_message

        idx = self.index_dir
        manifest = read_manifest(idx)
        if manifest.get("corpus_sha256") != digest or manifest.get("chunker") != self.chunker:
            changed = changed_file_message(idx, shas)
            if changed:
                raise IndexMismatchError(changed)
            what = "corpus" if manifest.get("corpus_sha256") != digest else "chunker settings"
            raise IndexMismatchError(
                f"index dir {str(idx)!r} was built for a different {what}; use another --index dir or rebuild it (--rebuild)"
            )
        return manifest

    def _upgrade_store(self, manifest: dict[str, Any], corpus_path: str | Path | None) -> dict[str, Any]:
        """An index of format 1 or 2 (JSONL store): convert its store to shards in place, keep its parts."""
        idx = self.index_dir
        if manifest.get("format") == INDEX_FORMAT:
            return manifest
        legacy = open_store(idx, rebuild_hint=rebuild_command(idx, manifest))
        with atomic_dir(idx / STORE_DIR) as tmp:
            legacy.save(tmp, shard_bytes=self.shard_bytes, shard_docs=self.shard_docs)  # type: ignore[attr-defined]
        old = ("documents.jsonl", "chunks.jsonl")
        if "files" in manifest:
            files = {k: v for k, v in manifest["files"].items() if k not in old}
        else:  # format 1: record what is there now, from here on checked
            files = {k: v for name in manifest["parts"] for k, v in file_table(idx, name).items()}
        files.update(file_table(idx, STORE_DIR))
        manifest.update(format=INDEX_FORMAT, files=files, store={"format": 1, "shards": ShardedStore(idx / STORE_DIR).n_shards})
        manifest.setdefault("built_with", self.pipe._built_with(corpus_path))
        atomic_write_json(idx / MANIFEST, manifest)
        for name in old:
            (idx / name).unlink(missing_ok=True)
        return manifest

    def _read(self, documents: Iterable[Document], writer: StoreWriter) -> tuple[str, int, int]:
        """Stream the documents into shards (keeping shards a stopped build already wrote)."""
        h = hashlib.sha256()
        n_docs = k = 0
        bar = _Bar(self.show, "reading corpus", None, "doc")
        try:
            for batch in shard_batches(documents, self.shard_bytes, self.shard_docs):
                lines = list(docs_digest_lines(batch))
                for line in lines:
                    h.update(line)
                sha = hashlib.sha256(b"".join(lines)).hexdigest()
                if not writer.docs_done(k, sha):
                    writer.write_docs(k, batch, sha)
                n_docs += len(batch)
                k += 1
                bar.update(len(batch))
        finally:
            bar.close()
        return h.hexdigest(), n_docs, k

    def _chunk(self, writer: StoreWriter, n_shards: int, n_docs: int) -> float | None:
        """Chunk every shard not chunked yet; return the workers' peak RSS (Ray) or None."""
        spec = self.pipe.config.chunker
        infos = [writer.docs_info(k) or {} for k in range(n_shards)]
        todo = [k for k in range(n_shards) if not writer.chunks_done(k, chunk_source(infos[k].get("sha256", ""), spec))]
        done = n_docs - sum(infos[k].get("n_documents", 0) for k in todo)
        bar = _Bar(self.show, f"chunking ({spec.kind})", n_docs, "doc", initial=done)
        runner = self._runner(self._ctx(None))
        try:
            runner.chunk(writer.dir, todo, spec, bar)
        finally:
            bar.close()
        return runner.worker_peak_mb

    def _build_parts(self, manifest: dict[str, Any]) -> None:
        idx = self.index_dir
        store = ShardedStore(idx / STORE_DIR)
        ctx = self._ctx(store)
        runner = self._runner(ctx)
        todo = [job for job in self.jobs if not (job.name in manifest["parts"] and (idx / job.name).is_dir())]
        # Every part's params are checked against the corpus before any part is built: an
        # impossible dense index must not fail after the BM25 part took an hour.
        for job in todo:
            if isinstance(job.builder, ShardedBuilder) and job.builder.check is not None:
                job.builder.check(ctx)
        for job in todo:
            t0 = time.perf_counter()
            map_root = self.build_dir / "_map" / job.name
            with atomic_dir(idx / job.name) as tmp:
                if isinstance(job.builder, ShardedBuilder):
                    map_root.mkdir(parents=True, exist_ok=True)
                    todo = [k for k in range(store.n_shards) if not map_done(map_root, k, store.shard_source(k))]
                    done = len(store) - sum(int(store.meta["shards"][k]["n_chunks"]) for k in todo)
                    bar = _Bar(self.show, job.name, len(store), "chunk", initial=done)
                    try:
                        runner.map_part(job, store, todo, map_root, bar)
                    finally:
                        bar.close()
                    job.builder.reduce(ctx, [map_root / shard_name(k) for k in range(store.n_shards)], tmp)
                else:
                    job.builder(ctx, tmp)
            manifest["parts"][job.name] = {"stage": job.stage.key, "seconds": round(time.perf_counter() - t0, 3)}
            if isinstance(job.builder, ShardedBuilder) and runner.worker_peak_mb is not None:
                manifest["parts"][job.name]["worker_peak_rss_mb"] = runner.worker_peak_mb
            runner.worker_peak_mb = None
            manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(f"{job.name}/")}
            manifest["files"].update(file_table(idx, job.name))
            atomic_write_json(idx / MANIFEST, manifest)
            shutil.rmtree(map_root, ignore_errors=True)
        shutil.rmtree(self.build_dir, ignore_errors=True)
