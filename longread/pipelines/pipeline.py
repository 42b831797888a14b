"""``Pipeline``: a validated config's stages, indexing a corpus once and answering questions.

```python
pipe = Pipeline.from_yaml("configs/rag_bm25.yaml")
pipe.index(documents, "index/")
states = pipe.answer(questions, index_dir="index/")
```
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..config import ConfigError, PipelineConfig, load_config, parse_config
from ..io import atomic_dir, atomic_write_json
from ..stage import RunContext, Stage
from ..types import Document, QAState, Question

__all__ = ["Pipeline", "IndexMismatchError", "INDEX_FORMAT"]

INDEX_FORMAT = 1
MANIFEST = "manifest.json"


class IndexMismatchError(ValueError):
    """The index dir holds a different corpus or chunking than asked for."""


def corpus_digest(documents: Sequence[Document]) -> str:
    """sha256 over the documents' canonical JSON, in order."""
    h = hashlib.sha256()
    for d in documents:
        h.update(d.model_dump_json().encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def changed_file_message(index_dir: Path, documents: Sequence[Document]) -> str | None:
    """One line naming the first document whose file changed since ``index_dir`` was built, or None.

    Compares the ``meta["sha256"]`` that ``longread.loaders`` records per file with the one in
    the index's ``documents.jsonl`` (read line by line; only ids and hashes are kept).
    """
    new = {d.id: d.meta.get("sha256") for d in documents if d.meta.get("sha256")}
    path = index_dir / "documents.jsonl"
    if not new or not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            old = json.loads(line)
            meta = old.get("meta") or {}
            before, now = meta.get("sha256"), new.get(old.get("id"))
            if before and now and before != now:
                return (
                    f"{meta.get('source') or old['id']}: the file changed since the index {str(index_dir)!r} was built "
                    f"(sha256 {before[:12]}… now {now[:12]}…); rebuild it (longread index --rebuild) or use another --index"
                )
    return None


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0


class Pipeline:
    """A pipeline built from a validated :class:`PipelineConfig`.

    Construction is cheap (no model loads). ``index`` builds or reuses an index dir; ``answer``
    runs the query stages on questions with the ``local`` or ``ray`` executor.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        source: str = "<config>",
        cache_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.source = source
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.stages: list[Stage] = config.build_stages(source)
        self._ctx: RunContext | None = None
        self._executor = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> "Pipeline":
        """Load and validate a YAML config; raise ``ConfigError`` naming file, stage and field."""
        return cls(load_config(path), source=str(path), **kwargs)

    @classmethod
    def from_config(cls, config: PipelineConfig | dict, **kwargs: Any) -> "Pipeline":
        """Build from a ``PipelineConfig`` or a plain mapping (validated)."""
        if not isinstance(config, PipelineConfig):
            config = parse_config(config)
        return cls(config, **kwargs)

    # -- indexing -----------------------------------------------------------------------------
    def _hub(self):
        from ..models.hub import ModelHub

        return ModelHub(cache_dir=self.cache_dir, device=self.device)

    def index(
        self,
        documents: Iterable[Document],
        index_dir: str | Path,
        *,
        show_progress: bool = True,
        rebuild: bool = False,
    ) -> Path:
        """Chunk ``documents`` and build every index part the stages need into ``index_dir``.

        An existing index of the same corpus and chunker is reused (only missing parts are built);
        one of a different corpus or chunker raises ``IndexMismatchError`` unless ``rebuild``.
        Every part is written to a temp dir and renamed into place when complete.
        """
        from .chunking import chunk_documents
        from .store import CorpusStore

        report = getattr(documents, "report", None)  # a load_documents() stream or LoadedCorpus
        docs = list(documents)
        loader = report.to_manifest() if hasattr(report, "to_manifest") else None  # complete once consumed
        if not docs:
            raise ValueError("cannot index an empty corpus")
        seen: set[str] = set()
        for d in docs:
            if d.id in seen:
                raise ValueError(f"duplicate document id {d.id!r}")
            seen.add(d.id)
        index_dir = Path(index_dir)
        digest = corpus_digest(docs)
        chunker = self.config.chunker.model_dump(mode="json")
        manifest_path = index_dir / MANIFEST
        hub = self._hub()
        manifest: dict[str, Any] | None = None
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            same = manifest.get("corpus_sha256") == digest and manifest.get("chunker") == chunker
            if not same and not rebuild:
                changed = changed_file_message(index_dir, docs)
                if changed:
                    raise IndexMismatchError(changed)
                what = "corpus" if manifest.get("corpus_sha256") != digest else "chunker settings"
                raise IndexMismatchError(
                    f"index dir {str(index_dir)!r} was built for a different {what}; "
                    "use another --index dir or rebuild it (--rebuild)"
                )
            if not same:
                manifest = None
        elif index_dir.exists() and any(index_dir.iterdir()):
            raise IndexMismatchError(f"{str(index_dir)!r} is not empty and holds no {MANIFEST}; refusing to write into it")

        if manifest is None:
            t0 = time.perf_counter()
            chunks = chunk_documents(docs, self.config.chunker, hub=hub, show_progress=show_progress)
            store = CorpusStore(docs, chunks)
            manifest = {
                "format": INDEX_FORMAT,
                "corpus_sha256": digest,
                "chunker": chunker,
                "n_documents": len(docs),
                "n_chunks": len(chunks),
                "parts": {},
                "chunk_seconds": round(time.perf_counter() - t0, 3),
            }
            if loader is not None:
                manifest["loader"] = loader
            with atomic_dir(index_dir) as tmp:
                store.save(tmp)
                atomic_write_json(tmp / MANIFEST, manifest)
        else:
            store = CorpusStore.load(index_dir)

        ctx = RunContext(models=hub, index_dir=index_dir, store=store, cache_dir=self.cache_dir, seed=self.config.seed, device=self.device)
        for stage in self.stages:
            for name, builder in stage.indexes().items():
                if (index_dir / name).is_dir():
                    continue
                t0 = time.perf_counter()
                with atomic_dir(index_dir / name) as tmp:
                    builder(ctx, tmp)
                manifest["parts"][name] = {"stage": stage.key, "seconds": round(time.perf_counter() - t0, 3)}
                atomic_write_json(manifest_path, manifest)
        return index_dir

    # -- answering ----------------------------------------------------------------------------
    def context(self, index_dir: str | Path | None) -> RunContext:
        """The run context for ``index_dir`` (opened once and reused by later calls)."""
        idx = Path(index_dir) if index_dir is not None else None
        if self._ctx is None or self._ctx.index_dir != idx:
            from .executors import make_context

            if idx is not None and not (idx / MANIFEST).is_file():
                raise FileNotFoundError(f"{str(idx)!r} is not a longread index (no {MANIFEST}); run `longread index` first")
            self._ctx = make_context(idx, cache_dir=self.cache_dir, seed=self.config.seed, device=self.device)
            self._executor = None
        return self._ctx

    def iter_answers(
        self,
        questions: Sequence[Question],
        *,
        index_dir: str | Path | None = None,
        executor: str = "local",
        address: str | None = None,
        fail_fast: bool = False,
    ) -> Iterator[QAState]:
        """Yield one finished ``QAState`` per question (errors recorded in ``trace['error']``)."""
        from .executors import LocalExecutor, RayExecutor

        if executor not in {"local", "ray"}:
            raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
        ctx = self.context(index_dir)
        states = []
        for q in questions:
            st = QAState(question=q)
            if q.doc_ids is not None and ctx.store is not None:
                missing = [d for d in q.doc_ids if d not in ctx.store.documents]
                if missing:
                    st.trace["error"] = f"input: question {q.id!r} is scoped to documents not in the index: {missing}"
            states.append(st)
        if executor == "local":
            if self._executor is None:
                self._executor = LocalExecutor(
                    self.stages, [s.resources.batch_size for s in self.config.stages], ctx, fail_fast=fail_fast
                )
            self._executor.fail_fast = fail_fast
            it = self._executor.run(states)
        else:
            it = RayExecutor(
                self.config.stages,
                ctx.index_dir,
                cache_dir=self.cache_dir,
                seed=self.config.seed,
                device=self.device,
                address=address,
                fail_fast=fail_fast,
            ).run(states)
        for st in it:
            self._finish_trace(st)
            yield st

    def answer(self, questions: Sequence[Question], **kwargs: Any) -> list[QAState]:
        """Answer every question; same keyword arguments as :meth:`iter_answers`."""
        return list(self.iter_answers(questions, **kwargs))

    @staticmethod
    def _finish_trace(state: QAState) -> None:
        from ..eval.metrics import answer_in_texts

        state.trace["passage_doc_ids"] = [p.chunk.doc_id for p in state.passages]
        if state.question.doc_ids is not None:
            state.trace["scope_doc_ids"] = list(state.question.doc_ids)
        if state.question.answers and state.passages:
            state.trace["answer_in_passages"] = bool(answer_in_texts(state.question.answers, [p.chunk.text for p in state.passages]))
        else:
            state.trace["answer_in_passages"] = None
        state.trace["peak_rss_mb"] = round(_peak_rss_mb(), 1)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config path, or the name of a built-in config (e.g. ``rag_hybrid``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = Path(__file__).resolve().parent.parent / "configs" / f"{Path(str(name_or_path)).stem}.yaml"
    if builtin.is_file() and (p.suffix in {"", ".yaml", ".yml"}) and len(p.parts) == 1:
        return builtin
    names = sorted(x.stem for x in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found; give a YAML path or a built-in name: {', '.join(names)}")

