"""``Pipeline``: a validated config's stages, indexing a corpus once and answering questions.

```python
pipe = Pipeline.from_yaml("configs/rag_bm25.yaml")
pipe.index(documents, "index/")
states = pipe.answer(questions, index_dir="index/")
```
"""

from __future__ import annotations

import hashlib
import resource
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..config import ConfigError, PipelineConfig, load_config, parse_config
from ..stage import RunContext, Stage
from ..types import Document, QAState, Question
from .indexdir import INDEX_FORMAT, MANIFEST, VERIFY_MODES, Verify, read_manifest
from .indexing import IndexMismatchError
from .store import SHARD_BYTES, docs_digest_lines

__all__ = ["Pipeline", "IndexMismatchError", "INDEX_FORMAT"]


def corpus_digest(documents: Iterable[Document]) -> str:
    """sha256 over the documents' canonical JSON, in order."""
    h = hashlib.sha256()
    for line in docs_digest_lines(documents):
        h.update(line)
    return h.hexdigest()


def changed_file_message(index_dir: Path, documents: Iterable[Document] | Mapping[str, str]) -> str | None:
    """One line naming the first document whose file changed since ``index_dir`` was built, or None.

    ``documents``: the documents, or ``{doc id: file sha256}``. Compares the ``meta["sha256"]``
    that ``longread.loaders`` records per file with the one in the index's store (read document
    by document, without their texts).
    """
    from .store import open_store

    if isinstance(documents, Mapping):
        new = dict(documents)
    else:
        new = {d.id: d.meta.get("sha256") for d in documents if d.meta.get("sha256")}
    if not new:
        return None
    try:
        store = open_store(index_dir)
    except (OSError, ValueError):
        return None
    for doc_id, meta in store.iter_doc_meta():
        before, now = meta.get("sha256"), new.get(doc_id)
        if before and now and before != now:
            return (
                f"{meta.get('source') or doc_id}: the file changed since the index {str(index_dir)!r} was built "
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
        executor: str = "local",
        address: str | None = None,
        shard_size: int | str = SHARD_BYTES,
    ) -> Path:
        """Chunk ``documents`` and build every index part the stages need into ``index_dir``.

        ``documents`` is read once, as a stream (a list, a :func:`longread.loaders.load_documents`
        stream, any iterable): memory holds one shard of about ``shard_size`` characters of text
        (e.g. ``"8MB"``), not the corpus. ``executor``: ``local`` (this process) or ``ray``
        (chunking and model-free parts as Ray Data tasks, encoders as actor pools sized by the
        stage's ``resources``; ``address`` joins a cluster); both write the same index.

        An existing index of the same corpus and chunker is reused (only missing parts are built);
        one of a different corpus or chunker raises ``IndexMismatchError`` unless ``rebuild``.
        A part is renamed into place only when complete, and the manifest records each file's size
        and sha256. A killed build keeps its finished shards in ``.NAME.build`` beside the index:
        run it again and only the rest is done. Building holds the index dir's writer lock: a
        second builder raises :class:`longread.errors.LockedError` naming the first one's pid.
        ``corpus_path`` is recorded for the rebuild command that error messages print. Raises
        ``ValueError`` for an empty corpus or a duplicate document id.
        """
        from ..cache import parse_size
        from .indexing import IndexBuild

        try:
            shard_bytes = parse_size(shard_size)
        except ValueError as e:
            raise ValueError(f"shard_size: {e}") from None
        build = IndexBuild(self, Path(index_dir), executor=executor, address=address, shard_bytes=shard_bytes,
                           show_progress=show_progress)
        return build.run(documents, rebuild=rebuild, corpus_path=corpus_path)

    def _built_with(self, corpus_path: str | Path | None) -> dict[str, Any]:
        src = self.source if self.source != "<config>" else self.config.name
        if src != self.config.name and Path(src).is_file():
            src = str(Path(src).resolve())
        return {"config": src, "corpus": str(Path(corpus_path).resolve()) if corpus_path else None}

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

