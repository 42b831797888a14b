"""One file to text, by format: plain text, Markdown, HTML, PDF.

Each reader returns a :class:`FileText`; problems raise :class:`~longread.loaders.core.LoadError`
(with a ``kind``) or :class:`NoTextError` for a file that holds no text at all.
"""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .text import TextDecodeError, decode_text, normalize_newlines

__all__ = ["FileText", "NoTextError", "read_file"]


class NoTextError(ValueError):
    """The file has no text to index (a scan without OCR, an empty file)."""


@dataclass
class FileText:
    """A file's text and what the loaders know about its structure."""

    text: str
    sha256: str
    title: str | None = None
    headings: list[list] = field(default_factory=list)
    page_starts: list[int] | None = None
    empty_pages: list[int] = field(default_factory=list)
    encoding: str | None = None


def _os_error(p: Path, e: OSError):
    from .core import LoadError

    if e.errno == errno.ELOOP:
        return LoadError(str(p), "symlink loop (the link never resolves to a file)", "symlink_loop")
    return LoadError(str(p), f"cannot read it ({e.strerror or e})", "unreadable")


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_file(p: Path, fmt: str, *, max_bytes: int) -> FileText:
    """Read ``p`` as ``fmt`` (``text``, ``markdown``, ``html`` or ``pdf``).

    Text formats larger than ``max_bytes`` are refused unread (kind ``too_long``). Raises
    ``LoadError`` or :class:`NoTextError`.
    """
    from .core import LoadError

    try:
        if fmt == "pdf":
            return _read_pdf(p)
        size = p.stat().st_size
        if size > max_bytes:
            raise LoadError(str(p), f"{size:,} bytes, too large for the character limit (--max-doc-chars N raises it)", "too_long")
        data = p.read_bytes()
    except OSError as e:
        raise _os_error(p, e) from None
    digest = hashlib.sha256(data).hexdigest()
    declared = None
    if fmt == "html":
        from .html import declared_charset

        declared = declared_charset(data)
    try:
        raw, encoding = decode_text(data, declared=declared)
    except TextDecodeError as e:
        raise LoadError(str(p), str(e), e.kind) from None
    raw = normalize_newlines(raw)
    title, headings = None, []
    if fmt == "markdown":
        from .markdown import markdown_to_text

        text, title, headings = markdown_to_text(raw)
    elif fmt == "html":
        from .html import html_to_text

        text, title, headings = html_to_text(raw)
    else:
        text = raw
    if not text.strip():
        raise NoTextError("the file has no text" if data.strip() else "the file is empty")
    return FileText(text=text, sha256=digest, title=title, headings=headings, encoding=encoding)


def _read_pdf(p: Path) -> FileText:
    from .core import LoadError
    from .pdf import PdfReadError, read_pdf

    digest = _sha256_file(p)
    try:
        pt = read_pdf(p)
    except PdfReadError as e:
        raise LoadError(str(p), str(e), e.kind) from None
    if not pt.text.strip():
        raise NoTextError(f"PDF with no text layer on any of its {pt.n_pages} pages (a scan?)")
    return FileText(text=pt.text, sha256=digest, title=pt.title, headings=pt.headings,
                    page_starts=pt.page_starts, empty_pages=pt.empty_pages)
