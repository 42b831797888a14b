"""One entry point from a path to documents: :func:`load_documents`.

``PATH`` may be a corpus JSONL file, a folder (walked recursively), a glob (``docs/**/*.pdf``)
or one ``.pdf``/``.html``/``.htm``/``.md``/``.txt`` file. Documents are yielded one at a time
in a fixed order (names sorted at each level), so a folder of 10,000 files or a 1,000-page PDF
is never held whole by the loader.

A document's id is its path relative to the corpus root (the folder, the glob's fixed prefix,
or the single file's folder), with ``/`` separators and NFC-normalised; control characters and
``\\`` in file names become ``_``. Hidden files and folders (names starting with ``.``) are not
read; files of other types are ignored and counted.
"""

from __future__ import annotations

import errno
import glob as globlib
import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from ..data import DEFAULT_MAX_DOC_CHARS, DataError, iter_corpus
from ..types import Document, check_id

__all__ = [
    "SUFFIXES",
    "LoadError",
    "LoadReport",
    "DocumentStream",
    "LoadedCorpus",
    "load_documents",
]

log = logging.getLogger("longread.loaders")

SUFFIXES = {".pdf": "pdf", ".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}
_GLOB = re.compile(r"[*?\[]")
_ID_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")
# Text formats are read whole; a file this many times over the character limit is refused unread.
_BYTES_PER_CHAR = 4


class LoadError(DataError):
    """A file that cannot become a document; the message starts with the file's path.

    ``kind`` says why: ``encrypted``, ``corrupt``, ``binary``, ``mixed_encoding``,
    ``duplicate_id``, ``symlink_loop``, ``broken_link``, ``unreadable``, ``too_long``, ``bad_id``,
    ``unsupported``, ``no_text`` or ``empty`` (nothing to load at all).
    """

    def __init__(self, source: str, reason: str, kind: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source, self.reason, self.kind = source, reason, kind


@dataclass
class LoadReport:
    """What a :func:`load_documents` pass loaded, skipped and ignored (filled while iterating)."""

    root: str
    formats: Counter = field(default_factory=Counter)
    skipped: list[dict[str, str]] = field(default_factory=list)
    no_text: list[str] = field(default_factory=list)
    empty_pages: dict[str, list[int]] = field(default_factory=dict)
    unsupported: Counter = field(default_factory=Counter)
    hidden: int = 0

    @property
    def n_documents(self) -> int:
        """Documents yielded so far."""
        return sum(self.formats.values())

    def to_manifest(self) -> dict[str, Any]:
        """The JSON-able record an index manifest keeps under ``"loader"``."""
        return {
            "root": self.root,
            "n_documents": self.n_documents,
            "formats": dict(sorted(self.formats.items())),
            "skipped": list(self.skipped),
            "no_text": list(self.no_text),
            "unsupported": dict(sorted(self.unsupported.items())),
        }

    def summary(self) -> list[str]:
        """Human-readable lines for stderr: counts, then one line per skipped file."""
        fmts = ", ".join(f"{n} {k}" for k, n in sorted(self.formats.items()))
        lines = [f"loaded {self.n_documents} documents from {self.root}" + (f" ({fmts})" if fmts else "")]
        if self.unsupported:
            other = ", ".join(f"{k} {n}" for k, n in self.unsupported.most_common())
            lines.append(f"ignored {sum(self.unsupported.values())} files of unsupported types ({other})")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files:")
            lines.extend(f"  {s['source']}: {s['reason']}" for s in self.skipped)
        return lines


class LoadedCorpus(list):
    """A list of documents that also carries the :class:`LoadReport` of the pass that loaded it.

    ``Pipeline.index`` records ``report.to_manifest()`` in the index manifest when given one.
    """

    def __init__(self, docs, report: LoadReport) -> None:
        super().__init__(docs)
        self.report = report


class DocumentStream:
    """The documents of one :func:`load_documents` call: iterate once; ``report`` fills as you go."""

    def __init__(self, loader: "_Loader") -> None:
        self._loader = loader
        self._started = False
        self.report = loader.report

    def __iter__(self) -> Iterator[Document]:
        if self._started:
            raise RuntimeError("a DocumentStream can be iterated only once; call load_documents() again")
        self._started = True
        return self._loader.run()

    def collect(self) -> LoadedCorpus:
        """All documents as a :class:`LoadedCorpus` (a list with ``.report``)."""
        return LoadedCorpus(iter(self), self.report)


def load_documents(
    path: str | Path,
    *,
    skip_bad: bool = False,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    warn: Callable[[str], None] | None = None,
    show_progress: bool = False,
) -> DocumentStream:
    """Documents from a corpus JSONL or Parquet file, a folder, a glob or one PDF/HTML/Markdown/text file.

    Returns a :class:`DocumentStream`: iterate it (once) to get :class:`~longread.types.Document`
    s one at a time, or ``.collect()`` them; its ``report`` says what was loaded, skipped and
    ignored. ``meta`` of each document holds ``source`` (path relative to the root), ``title``,
    ``format``, ``sha256`` (of the file's bytes), ``headings`` (``[offset, level, text]``) and,
    for PDFs, ``page_starts`` (offset where each page starts) and ``n_pages``.

    A bad file (encrypted or corrupted PDF, binary data, mixed encodings, a symlink loop, two
    files with one id, a document over ``max_doc_chars``) raises :class:`LoadError` naming it
    when it is reached; with ``skip_bad`` it is recorded in ``report.skipped`` and loading goes
    on. A file with no text (a scanned PDF without OCR, an empty file) is never an error: it is
    skipped with a warning (``warn``, default: the ``longread.loaders`` logger) and listed in
    ``report.no_text``. Raises ``FileNotFoundError`` for a missing path and :class:`LoadError`
    (kind ``empty``) when nothing at all could be loaded. JSONL and Parquet corpora keep
    :func:`longread.data.load_corpus`'s checks (every bad line is an error).
    """
    if max_doc_chars <= 0:
        raise ValueError(f"max_doc_chars must be > 0, got {max_doc_chars}")
    return DocumentStream(_Loader(Path(path).expanduser(), skip_bad, max_doc_chars, warn or log.warning, show_progress))


class _Loader:
    def __init__(self, path: Path, skip_bad: bool, max_doc_chars: int, warn: Callable[[str], None], show_progress: bool) -> None:
        self.path, self.skip_bad, self.max_doc_chars, self.warn = path, skip_bad, max_doc_chars, warn
        self.show_progress = show_progress
        self.root, self.files, self.single = self._resolve(path)
        self.report = LoadReport(root=str(self.root if not self.single else path))
        self.ids: dict[str, str] = {}

    # -- what to read ---------------------------------------------------------------------------
    def _resolve(self, path: Path) -> tuple[Path, Callable[[], Iterator[Path]] | None, bool]:
        s = str(path)
        if path.is_dir():
            return path, lambda: self._walk(path), False
        if path.is_file() or path.is_symlink():
            return path.parent, None, True
        if _GLOB.search(s):
            parts = PurePosixPath(s.replace(os.sep, "/")).parts
            fixed = []
            for p in parts:
                if _GLOB.search(p):
                    break
                fixed.append(p)
            root = Path(*fixed) if fixed else Path(".")
            return root, lambda: self._glob(s, root), False
        raise FileNotFoundError(f"corpus not found: {s} (give a JSONL file, a folder, a glob or a .pdf/.html/.md/.txt file)")

    def _glob(self, pattern: str, root: Path) -> Iterator[Path]:
        paths = sorted(p for p in globlib.glob(pattern, recursive=True) if not Path(p).is_dir())
        if not paths:
            raise LoadError(pattern, "the pattern matches no files", "empty")
        for p in paths:
            yield Path(p)

    def _walk(self, top: Path) -> Iterator[Path]:
        """Files under ``top``, depth first, names sorted; follows folder symlinks except into an ancestor."""
        def visit(folder: Path, ancestors: dict[tuple[int, int], Path]) -> Iterator[Path]:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                self._bad(folder, f"cannot list the folder ({e.strerror})", "unreadable")
                return
            for e in entries:
                if e.name.startswith("."):
                    self.report.hidden += 1
                    continue
                p = Path(e.path)
                try:
                    st = p.stat()  # follows links
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        self._bad(p, "symlink loop (the link never resolves to a file)", "symlink_loop")
                    elif e.is_symlink():
                        self._bad(p, "broken symlink (its target does not exist)", "broken_link")
                    else:
                        self._bad(p, f"cannot read it ({err.strerror})", "unreadable")
                    continue
                if e.is_dir():
                    key = (st.st_dev, st.st_ino)
                    if key in ancestors:
                        self._bad(p, f"symlink loop: it leads back to {self._rel_str(ancestors[key])}", "symlink_loop")
                        continue
                    yield from visit(p, {**ancestors, key: p})
                elif e.is_file():
                    yield p

        st = top.stat()
        yield from visit(top, {(st.st_dev, st.st_ino): top})

    # -- helpers ----------------------------------------------------------------------------------
    def _rel_str(self, p: Path) -> str:
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            return str(p)
        return rel.as_posix() if str(rel) != "." else str(self.root)

    def _bad(self, p: Path | str, reason: str, kind: str) -> None:
        src = self._rel_str(p) if isinstance(p, Path) else p
        shown = str(p) if isinstance(p, Path) else p
        if not self.skip_bad:
            raise LoadError(shown, reason + "; --skip-bad (skip_bad=True) skips such files and goes on", kind)
        self.report.skipped.append({"source": src, "kind": kind, "reason": reason})

    def _doc_id(self, p: Path) -> str:
        rel = self._rel_str(p) if not self.single else p.name
        did = _ID_UNSAFE.sub("_", unicodedata.normalize("NFC", rel))
        check_id(did, "document id")
        return did

    # -- the pass ---------------------------------------------------------------------------------
    def run(self) -> Iterator[Document]:
        if self.single and self.path.suffix.lower() in (".jsonl", ".parquet"):
            fmt = self.path.suffix.lower()[1:]
            for doc in iter_corpus(self.path, max_doc_chars=self.max_doc_chars):
                self.report.formats[fmt] += 1
                yield doc
            if not self.report.n_documents:
                raise LoadError(str(self.path), "no documents (the file is empty or only blank lines)", "empty")
            return
        from tqdm.auto import tqdm

        bar = tqdm(desc="loading documents", unit="file", disable=not self.show_progress, leave=False)
        try:
            for p in ([self.path] if self.single else self.files()):
                bar.update(1)
                fmt = SUFFIXES.get(p.suffix.lower())
                if fmt is None:
                    if self.single:
                        raise LoadError(str(p), f"unsupported file type {p.suffix or '(none)'!r}; supported: .jsonl, .parquet, "
                                        + ", ".join(SUFFIXES), "unsupported")
                    self.report.unsupported[p.suffix.lower() or "(no extension)"] += 1
                    continue
                doc = self._one(p, fmt)
                if doc is not None:
                    self.report.formats[fmt] += 1
                    yield doc
        finally:
            bar.close()
        if not self.report.n_documents:
            if self.report.skipped:
                raise LoadError(self.report.root, f"no documents loaded: all {len(self.report.skipped)} readable-looking "
                                "files were skipped (see the lines above)", "empty")
            found = f" (ignored {sum(self.report.unsupported.values())} files of other types)" if self.report.unsupported else ""
            raise LoadError(self.report.root, f"no {'/'.join(SUFFIXES)} files{found}", "empty")

    def _one(self, p: Path, fmt: str) -> Document | None:
        from .formats import FileText, NoTextError, read_file

        try:
            did = self._doc_id(p)
        except ValueError as e:
            self._bad(p, f"its path cannot be a document id ({e})", "bad_id")
            return None
        if did in self.ids:
            self._bad(p, f"maps to document id {did!r}, as {self.ids[did]} does; rename one of them", "duplicate_id")
            return None
        try:
            ft: FileText = read_file(p, fmt, max_bytes=self.max_doc_chars * _BYTES_PER_CHAR)
        except NoTextError as e:
            src = self._rel_str(p)
            self.warn(f"{p}: {e}; skipped (no text, no OCR)")
            self.report.no_text.append(src)
            self.report.skipped.append({"source": src, "kind": "no_text", "reason": str(e)})
            return None
        except LoadError as e:
            self._bad(p, e.reason, e.kind)
            return None
        if len(ft.text) > self.max_doc_chars:
            self._bad(p, f"{len(ft.text):,} characters, over the limit max_doc_chars={self.max_doc_chars:,} "
                      "(--max-doc-chars N raises it)", "too_long")
            return None
        source = self._rel_str(p) if not self.single else p.name
        if ft.empty_pages:
            self.report.empty_pages[source] = ft.empty_pages
            which = f"page {ft.empty_pages[0]} has" if len(ft.empty_pages) == 1 else f"pages {_ranges(ft.empty_pages)} have"
            self.warn(f"{p}: {which} no text layer (scanned?); loaded the other pages")
        self.ids[did] = str(p)
        title = ft.title or (ft.headings[0][2] if ft.headings else None) or p.stem
        meta: dict[str, Any] = {"source": source, "title": title, "format": fmt, "sha256": ft.sha256, "headings": ft.headings}
        if ft.page_starts is not None:
            meta["page_starts"] = ft.page_starts
            meta["n_pages"] = len(ft.page_starts)
        if ft.encoding is not None:
            meta["encoding"] = ft.encoding
        return Document(id=did, text=ft.text, title=title, meta=meta)


def _ranges(pages: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"``."""
    out, i = [], 0
    while i < len(pages):
        j = i
        while j + 1 < len(pages) and pages[j + 1] == pages[j] + 1:
            j += 1
        out.append(str(pages[i]) if i == j else f"{pages[i]}-{pages[j]}")
        i = j + 1
    return ", ".join(out)
