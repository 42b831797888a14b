"""HTML to readable text with the standard library's tolerant parser.

Block elements (paragraphs, list items, table rows, headings…) become lines, with a blank line
between paragraphs; inline whitespace collapses to one space as a browser shows it; ``<pre>``
keeps its own. Scripts, styles, templates and ``<head>`` (except ``<title>``) are dropped.
Headings ``<h1>``–``<h6>`` become lines of their own and are recorded with their offset.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text", "declared_charset"]

_SKIP = {"script", "style", "noscript", "template", "head", "svg", "math", "iframe", "object"}
_PARA = {
    "p", "div", "section", "article", "header", "footer", "nav", "aside", "main", "table", "ul", "ol", "dl",
    "blockquote", "pre", "figure", "figcaption", "form", "fieldset", "address", "details", "summary", "hr",
    "h1", "h2", "h3", "h4", "h5", "h6", "body", "html",
}
_LINE = {"br", "li", "tr", "dt", "dd", "caption", "option"}
_CELL = {"td", "th"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr", "param"}
_WS = re.compile(r"\s+")
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def declared_charset(data: bytes) -> str | None:
    """The charset an HTML file declares in a ``<meta>`` tag of its first 4 KiB, if any."""
    m = _CHARSET.search(data[:4096])
    return m.group(1).decode("ascii") if m else None


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.length = 0
        self.pending = 0  # 0: nothing, 1: newline, 2: blank line, before the next text
        self.space = False  # a collapsed space is owed before the next inline text
        self.skip: list[str] = []
        self.pre = 0
        self.title: list[str] | None = None
        self.title_text: str | None = None
        self.heading: tuple[int, int | None, list[str]] | None = None  # (level, offset, parts)
        self.headings: list[list] = []

    # -- output ------------------------------------------------------------------------------
    def _emit(self, s: str) -> None:
        if not s:
            return
        sep = ""
        if self.length:
            sep = "\n" * self.pending if self.pending else (" " if self.space else "")
        self.pending, self.space = 0, False
        if self.heading is not None and self.heading[1] is None:
            self.heading = (self.heading[0], self.length + len(sep), self.heading[2])
        self.out.append(sep + s)
        self.length += len(sep) + len(s)

    def _break(self, n: int) -> None:
        self.pending = max(self.pending, n)
        self.space = False

    # -- parser callbacks ----------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "title" and self.title_text is None and "svg" not in self.skip:
            self.title = []
            return
        if self.skip and self.skip[0] == "head" and (tag == "body" or tag in _PARA or tag in _LINE):
            self.skip.clear()  # a body tag ends an unclosed <head>, as in a browser
        if self.skip or tag in _SKIP:
            if tag not in _VOID:
                self.skip.append(tag)
            return
        if tag in _PARA:
            self._break(2)
        elif tag in _LINE:
            self._break(1)
        elif tag in _CELL:
            self.space = True  # cells of a row: one line, words apart
        if tag == "pre":
            self.pre += 1
        if tag == "li":
            self._emit("- ")
            self.space = False
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.heading = (int(tag[1]), None, [])
        if tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.handle_data(alt)

    def handle_startendtag(self, tag: str, attrs) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.title is not None:
            self.title_text = _WS.sub(" ", "".join(self.title)).strip() or None
            self.title = None
            return
        if self.skip:
            if tag in self.skip:  # close up to the matching open tag (tolerates unclosed children)
                while self.skip and self.skip.pop() != tag:
                    pass
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
        if self.heading is not None and tag == f"h{self.heading[0]}":
            level, offset, parts = self.heading
            text = _WS.sub(" ", "".join(parts)).strip()
            if text and offset is not None:
                self.headings.append([offset, level, text])
            self.heading = None
        if tag in _PARA:
            self._break(2)
        elif tag in _LINE:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.title is not None:
            self.title.append(data)
            return
        if self.skip:
            return
        if self.pre:
            self._emit(data)
            if self.heading is not None:
                self.heading[2].append(data)
            return
        if data[:1].isspace():
            self.space = True
        words = _WS.sub(" ", data).strip()
        if words:
            self._emit(words)
            if self.heading is not None:
                self.heading[2].append(words + " ")
        if data[-1:].isspace():
            self.space = True


def html_to_text(html: str) -> tuple[str, str | None, list[list]]:
    """Convert HTML to ``(text, title, headings)``.

    ``title`` is the ``<title>`` text (None if absent or empty); ``headings`` is a list of
    ``[offset, level, text]`` with ``offset`` the character where the heading line starts in
    ``text``. Never raises on malformed markup (the parser is tolerant).
    """
    p = _Text()
    p.feed(html)
    p.close()
    return "".join(p.out), p.title_text, p.headings
