"""PDF text with pypdfium2 (Google's PDFium; Apache-2.0/BSD-3-Clause), page by page.

Chosen over pypdf and pdfplumber by ``benchmarks/pdf_loaders.py``: on generated PDFs with
known text it reads the text as well as either (reading order of two-column pages included)
and is many times faster, since PDFium is C++. Pages are opened and closed one at a time, so a
1,000-page file never holds more than one page's objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .text import normalize_newlines

__all__ = ["PdfText", "PdfReadError", "read_pdf", "PAGE_SEPARATOR"]

# Pages are joined by a blank line, so a chunker's paragraph split falls on page ends.
PAGE_SEPARATOR = "\n\n"


class PdfReadError(ValueError):
    """A PDF that cannot be read; ``kind`` is ``encrypted`` or ``corrupt``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class PdfText:
    """The text of a PDF: ``page_starts[i]`` is where page ``i + 1`` starts in ``text``."""

    text: str
    page_starts: list[int]
    title: str | None
    headings: list[list] = field(default_factory=list)
    empty_pages: list[int] = field(default_factory=list)  # 1-based pages with no text layer

    @property
    def n_pages(self) -> int:
        return len(self.page_starts)


def _page_text(page) -> str:
    tp = page.get_textpage()
    try:
        raw = tp.get_text_bounded()
    finally:
        tp.close()
    # PDFium marks a hyphen it saw at a line end as \x02; a hard hyphen is what the page shows.
    return normalize_newlines(raw.replace("\x02", "-")).strip()


def read_pdf(path: str | Path) -> PdfText:
    """Extract the text of every page of ``path``.

    ``title`` is the PDF metadata title (None when empty); ``headings`` come from the
    bookmarks (``[offset of the bookmarked page, level, title]``). Raises :class:`PdfReadError`
    for a password-protected or unreadable file.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    try:
        doc = pdfium.PdfDocument(Path(path))
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) == raw.FPDF_ERR_PASSWORD or "password" in str(e).lower():
            raise PdfReadError("encrypted PDF (needs a password); decrypt it first, e.g. `qpdf --decrypt IN OUT`", "encrypted") from None
        raise PdfReadError(f"not a readable PDF ({e})", "corrupt") from None
    try:
        parts: list[str] = []
        starts: list[int] = []
        empty: list[int] = []
        at = 0
        for i in range(len(doc)):
            page = doc[i]
            try:
                text = _page_text(page)
            finally:
                page.close()
            if i:
                at += len(PAGE_SEPARATOR)
            starts.append(at)
            if not text:
                empty.append(i + 1)
            parts.append(text)
            at += len(text)
        title = (doc.get_metadata_value("Title") or "").strip() or None
        headings = []
        for bm in doc.get_toc():
            dest = bm.get_dest()
            idx = dest.get_index() if dest is not None else None
            name = " ".join((bm.get_title() or "").split())
            if idx is not None and 0 <= idx < len(starts) and name:
                headings.append([starts[idx], bm.level + 1, name])
        headings.sort(key=lambda h: h[0])
    except pdfium.PdfiumError as e:
        raise PdfReadError(f"not a readable PDF ({e})", "corrupt") from None
    finally:
        doc.close()
    return PdfText(PAGE_SEPARATOR.join(parts), starts, title, headings, empty)
