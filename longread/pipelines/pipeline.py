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
from ..io import atomic_dir, atomic_write_json, remove_stale_temps
from ..stage import RunContext, Stage
from ..types import Document, QAState, Question
from .indexdir import INDEX_FORMAT, MANIFEST, VERIFY_MODES, Verify, file_table, index_lock, read_manifest

__all__ = ["Pipeline", "IndexMismatchError", "INDEX_FORMAT"]


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

    ``cache_dir`` is the model cache root (default ``$LONGREAD_CACHE`` or ``~/.cache/longread``).
    ``kv_cache``: where stages keep page KV and chunk embeddings across runs — True (default)
    for ``<cache root>/kv``, a path, or False for memory only; ``kv_max`` bounds it (bytes or
    ``"20GB"``; default ``$LONGREAD_KV_MAX`` or 20 GB; 0 means memory only), least recently used
    entries go first (see :mod:`longread.cache`). ``verify`` is how an index is checked when
    opened: ``sizes`` (every file's size against the manifest) or ``full`` (also every sha256).
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        source: str = "<config>",
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        kv_cache: bool | str | Path = True,
        kv_max: int | str | None = None,
        verify: Verify = "sizes",
    ) -> None:
        from ..cache import kv_max_bytes, kv_root

        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {list(VERIFY_MODES)}, got {verify!r}")
        self.config = config
        self.source = source
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.verify: Verify = verify
        self.kv_max = kv_max_bytes(kv_max)
        if kv_cache is True:
            kv_cache = kv_root(self.cache_dir)
        self.kv_dir: Path | None = Path(kv_cache) if kv_cache is not False and self.kv_max > 0 else None
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
        corpus_path: str | Path | None = None,
    ) -> Path:
        """Chunk ``documents`` and build every index part the stages need into ``index_dir``.

        An existing index of the same corpus and chunker is reused (only missing parts are built);
        one of a different corpus or chunker raises ``IndexMismatchError`` unless ``rebuild``.
        Every part is written to a temp dir and renamed into place when complete, and the manifest
        records each file's size and sha256. Building holds the index dir's writer lock: a second
        builder raises :class:`longread.errors.LockedError` naming the first one's pid; temp dirs a
        killed builder left are removed. ``corpus_path`` is recorded for the rebuild command that
        error messages print.
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
        if index_dir.exists() and not index_dir.is_dir():
            raise NotADirectoryError(f"index dir {str(index_dir)!r} is a file, not a directory")
        digest = corpus_digest(docs)
        chunker = self.config.chunker.model_dump(mode="json")
        needed = [(stage, name, builder) for stage in self.stages for name, builder in stage.indexes().items()]
        if not rebuild and self._complete(index_dir, digest, chunker, [n for _, n, _ in needed]):
            return index_dir  # nothing to write: no lock needed, concurrent runs may share it
        with index_lock(index_dir):
            remove_stale_temps(index_dir.parent, [index_dir.name])
            remove_stale_temps(index_dir)
            manifest = self._reusable_manifest(index_dir, digest, chunker, rebuild, docs)
            hub = self._hub()
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
                    "built_with": self._built_with(corpus_path),
                }
                if loader is not None:
                    manifest["loader"] = loader
                with atomic_dir(index_dir) as tmp:
                    store.save(tmp)
                    manifest["files"] = file_table(tmp)
                    atomic_write_json(tmp / MANIFEST, manifest)
            else:
                from .indexdir import check_index, rebuild_command

                check_index(index_dir, manifest, "sizes")  # never build new parts on a damaged store
                store = CorpusStore.load(index_dir, rebuild_hint=rebuild_command(index_dir, manifest))
                if "files" not in manifest:  # format 1: record what is there now, from here on checked
                    manifest["files"] = {k: v for name in [None, *manifest["parts"]] for k, v in file_table(index_dir, name).items()}
                    manifest["format"] = INDEX_FORMAT
                    manifest.setdefault("built_with", self._built_with(corpus_path))
                    atomic_write_json(index_dir / MANIFEST, manifest)

            kv = self.kv_dir
            ctx = RunContext(models=hub, index_dir=index_dir, store=store, cache_dir=kv, seed=self.config.seed, device=self.device)
            for stage, name, builder in needed:
                if name in manifest["parts"] and (index_dir / name).is_dir():
                    continue
                t0 = time.perf_counter()
                with atomic_dir(index_dir / name) as tmp:
                    builder(ctx, tmp)
                manifest["parts"][name] = {"stage": stage.key, "seconds": round(time.perf_counter() - t0, 3)}
                manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(f"{name}/")}
                manifest["files"].update(file_table(index_dir, name))
                atomic_write_json(index_dir / MANIFEST, manifest)
        return index_dir

    def _built_with(self, corpus_path: str | Path | None) -> dict[str, Any]:
        src = self.source if self.source != "<config>" else self.config.name
        if src != self.config.name and Path(src).is_file():
            src = str(Path(src).resolve())
        return {"config": src, "corpus": str(Path(corpus_path).resolve()) if corpus_path else None}

    @staticmethod
    def _complete(index_dir: Path, digest: str, chunker: dict, names: list[str]) -> bool:
        """True when ``index_dir`` already holds this corpus, chunker and every part (and checksums)."""
        try:
            m = json.loads((index_dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(m, dict) and m.get("format") == INDEX_FORMAT and m.get("corpus_sha256") == digest
            and m.get("chunker") == chunker and all(n in (m.get("parts") or {}) and (index_dir / n).is_dir() for n in names)
        )

    @staticmethod
    def _reusable_manifest(
        index_dir: Path, digest: str, chunker: dict, rebuild: bool, docs: Sequence[Document]
    ) -> dict[str, Any] | None:
        """The manifest to extend, None to build from scratch; raise when the dir is someone else's."""
        from ..errors import IndexCorruptError

        if (index_dir / MANIFEST).is_file():
            try:
                manifest = read_manifest(index_dir)
            except IndexCorruptError:
                if rebuild:
                    return None
                raise
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
            return manifest if same and not rebuild else None
        if index_dir.exists() and any(index_dir.iterdir()):
            raise IndexMismatchError(f"{str(index_dir)!r} is not empty and holds no {MANIFEST}; refusing to write into it")
        return None

    # -- answering ----------------------------------------------------------------------------
    def context(self, index_dir: str | Path | None) -> RunContext:
        """The run context for ``index_dir`` (opened once and reused by later calls).

        Opening checks the index against its manifest (``self.verify``) and raises
        ``FileNotFoundError`` for a dir that is no index, :class:`longread.errors.IndexCorruptError`
        naming the damaged file and the rebuild command.
        """
        idx = Path(index_dir) if index_dir is not None else None
        if self._ctx is None or self._ctx.index_dir != idx:
            from .executors import make_context

            self._ctx = make_context(
                idx, cache_dir=self.cache_dir, seed=self.config.seed, device=self.device, kv_dir=self.kv_dir, verify=self.verify
            )
            self._executor = None
        return self._ctx

    def evict_kv(self) -> None:
        """Trim the KV cache to ``kv_max`` (least recently used first); see :func:`longread.cache.evict`."""
        if self.kv_dir is not None:
            from ..cache import evict

            evict(self.kv_dir, self.kv_max)

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
        self.evict_kv()
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
                kv_dir=self.kv_dir,
            ).run(states)
        try:
            for st in it:
                self._finish_trace(st)
                yield st
        finally:
            self.evict_kv()

    def answer(self, questions: Sequence[Question], **kwargs: Any) -> list[QAState]:
        """Answer every question; same keyword arguments as :meth:`iter_answers`."""
        return list(self.iter_answers(questions, **kwargs))

    def ask(self, question: str, *, index_dir: str | Path | None = None, doc_ids: Sequence[str] | None = None,
            **kwargs: Any) -> QAState:
        """Answer one question: ``answer([Question(id="ask", question=question)])[0]`` (the code
        path ``longread ask`` takes). The answer is ``state.answer``, its sources ``state.citations``.

        ``doc_ids`` scopes the search to those documents. A stage error is recorded in
        ``state.trace["error"]`` as for :meth:`answer`; raises ``ValueError`` for an empty question.
        """
        q = Question(id="ask", question=question, doc_ids=list(doc_ids) if doc_ids is not None else None)
        return self.answer([q], index_dir=index_dir, **kwargs)[0]

    @staticmethod
    def _finish_trace(state: QAState) -> None:
        from ..eval.metrics import answer_in_texts

        state.trace["passage_doc_ids"] = [p.chunk.doc_id for p in state.passages]
        if state.question.doc_ids is not None:
            state.trace["scope_doc_ids"] = list(state.question.doc_ids)
        if state.question.answers and state.passages:
            state.trace["answer_in_passages"] = bool(answer_in_texts(state.question.answers, [p.text for p in state.passages]))
        else:
            state.trace["answer_in_passages"] = None
        state.trace["peak_rss_mb"] = round(_peak_rss_mb(), 1)


def index_config_path(index_dir: str | Path) -> Path:
    """The config an index was built with (its manifest's ``built_with.config``), when that file
    still exists. Raises ``FileNotFoundError`` for a dir that is no index and ``ValueError``
    (asking for ``--config``) when the manifest names no config or the file is gone."""
    index_dir = Path(index_dir)
    if not (index_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{str(index_dir)!r} is not an index dir (no {MANIFEST}); build one with longread index")
    built = read_manifest(index_dir).get("built_with") or {}
    src = built.get("config")
    if not isinstance(src, str) or not src:
        raise ValueError(f"index {str(index_dir)!r} does not record the config it was built with; pass --config")
    path = Path(src)
    if path.is_file():
        return path
    if len(path.parts) == 1:  # built from a config given as a mapping: its name, maybe a built-in one
        try:
            return resolve_config_path(src)
        except ConfigError:
            pass
    raise ValueError(f"index {str(index_dir)!r} was built with config {src!r}, which no longer exists (or never was a file); "
                     "pass --config")


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

