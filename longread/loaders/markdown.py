"""Markdown to readable text with markdown-it-py (CommonMark, so ``#`` inside code is no heading).

Headings become lines of their own (without the ``#`` marks) and are recorded with their
offset; paragraphs are separated by a blank line; list items start with ``- `` (or their number); code blocks
are kept verbatim; table cells of a row share a line; inline markup and link targets are
dropped (link text and image alt text stay). A YAML front-matter block is removed and its
``title`` used as the document title.
"""

from __future__ import annotations

import re

__all__ = ["markdown_to_text"]

_FRONT = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_parser = None


def _md():
    global _parser
    if _parser is None:
        from markdown_it import MarkdownIt

        _parser = MarkdownIt("commonmark").enable("table")
    return _parser


def _front_matter(text: str) -> tuple[str, str | None]:
    m = _FRONT.match(text)
    if not m:
        return text, None
    title = None
    try:
        import yaml

        meta = yaml.safe_load(m.group(1))
        if isinstance(meta, dict) and isinstance(meta.get("title"), (str, int, float)):
            title = str(meta["title"]).strip() or None
    except yaml.YAMLError:
        return text, None  # not front matter after all: keep the text as written
    return text[m.end():], title


def _inline(token) -> str:
    parts: list[str] = []
    for t in token.children or ():
        if t.type in {"text", "code_inline"}:
            parts.append(t.content)
        elif t.type == "softbreak":
            parts.append(" ")
        elif t.type == "hardbreak":
            parts.append("\n")
        elif t.type == "image":
            parts.append(t.content or "")  # the alt text
    return "".join(parts).strip()


def markdown_to_text(md: str) -> tuple[str, str | None, list[list]]:
    """Convert Markdown to ``(text, title, headings)``.

    ``title`` comes from YAML front matter (None without it); ``headings`` is a list of
    ``[offset, level, text]`` with ``offset`` where the heading line starts in ``text``.
    """
    from .html import html_to_text

    md, title = _front_matter(md)
    tokens = _md().parse(md)
    out: list[str] = []
    length = 0
    headings: list[list] = []
    pending = ""  # separator owed before the next block
    row: list[str] | None = None
    item_start = False
    bullet = "- "
    heading_level: int | None = None
    list_depth = 0

    def emit(s: str, sep: str = "\n\n") -> int:
        nonlocal length, pending
        s = s.strip("\n")
        if not s:
            return -1
        lead = (pending or sep) if length else ""
        out.append(lead + s)
        at = length + len(lead)
        length += len(lead) + len(s)
        pending = ""
        return at

    for tok in tokens:
        typ = tok.type
        if typ == "heading_open":
            heading_level = int(tok.tag[1])
        elif typ == "heading_close":
            heading_level = None
        elif typ == "list_item_open":
            item_start = True
            bullet = f"{tok.info}{tok.markup} " if tok.info else "- "  # "3. " in ordered lists
        elif typ == "tr_open":
            row = []
        elif typ == "tr_close":
            if row is not None:
                emit(" | ".join(c for c in row), sep="\n")
            row = None
        elif typ == "inline":
            text = _inline(tok)
            if row is not None:
                row.append(text)
            elif heading_level is not None:
                at = emit(text)
                if at >= 0:
                    headings.append([at, heading_level, text])
            elif item_start:
                emit(bullet + text, sep="\n")
                item_start = False
            else:
                emit(text, sep="\n" if list_depth else "\n\n")
        elif typ in {"fence", "code_block"}:
            emit(tok.content.rstrip("\n"))
        elif typ == "html_block":
            emit(html_to_text(tok.content)[0])
        elif typ in {"bullet_list_open", "ordered_list_open"}:
            list_depth += 1
            if list_depth == 1:
                pending = "\n\n"
        elif typ in {"bullet_list_close", "ordered_list_close"}:
            list_depth -= 1
            if not list_depth:
                pending = "\n\n"
        elif typ in {"table_open", "table_close", "blockquote_open", "blockquote_close"}:
            pending = "\n\n"
    return "".join(out), title, headings
