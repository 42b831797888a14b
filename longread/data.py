"""Load corpora and questions: the generic JSONL formats, SQuAD JSON, HotpotQA, and the demo set.

Generic formats (one JSON object per line, blank lines skipped):

- corpus: ``{"id": str, "text": str, "title"?: str, "meta"?: {}}``
- questions: ``{"id": str, "question": str, "answers": [str], "doc_ids"?: [str], "gold_ids"?: [str]}``

Every problem in a file raises :class:`DataError` whose message names the file and the 1-based
line, so a user can open the file at the right place.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pydantic import ValidationError

from .errors import clip
from .io import atomic_write_text
from .types import Document, Question

__all__ = [
    "DataError",
    "DEFAULT_MAX_DOC_CHARS",
    "load_corpus",
    "iter_corpus",
    "load_questions",
    "check_question_scopes",
    "load_squad",
    "load_hotpotqa",
    "write_jsonl",
    "demo_paths",
    "safe_id",
    "spread",
]

DEFAULT_MAX_DOC_CHARS = 5_000_000


class DataError(ValueError):
    """A corpus or questions file is malformed; the message names the file and line."""


def _iter_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line, streaming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # tolerate a UTF-8 byte-order mark written by some editors
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}, line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                    "re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                hint = " (truncated line?)" if e.pos >= len(line.rstrip()) else ""
                raise DataError(f"{path}, line {lineno}: invalid JSON{hint}: {e.msg} (column {e.colno})") from None
            except RecursionError:
                raise DataError(f"{path}, line {lineno}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif err.get("type") == "missing":
            parts.append(f"missing field {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _duplicate(path: Path, lineno: int, what: str, rid: str, first: int, unit: str = "line") -> DataError:
    return DataError(f"{path}, {unit} {lineno}: duplicate {what} id {rid!r} (first seen on {unit} {first})")


CORPUS_COLUMNS = ("id", "text", "title", "meta")


def _iter_parquet_rows(path: Path, batch_rows: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` of a corpus Parquet file, one record batch in memory at a time.

    Columns: ``id``, ``text`` (strings), ``title`` and ``meta`` (optional; ``meta`` a struct/map or a
    JSON object as a string). Nulls in the optional columns mean "absent".
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with ray[data]
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged or foreign file
        raise DataError(f"{path}: not a readable Parquet file ({_short_message(e)})") from None
    names = pf.schema_arrow.names
    unknown = [n for n in names if n not in CORPUS_COLUMNS]
    missing = [n for n in ("id", "text") if n not in names]
    if unknown or missing:
        what = f"unknown column(s) {unknown}" if unknown else f"missing column(s) {missing}"
        raise DataError(f"{path}: {what}; a corpus Parquet file has columns id, text, title?, meta?")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows):
            for obj in batch.to_pylist():
                row += 1
                for k in ("title", "meta"):
                    if obj.get(k, 0) is None:
                        del obj[k]
                meta = obj.get("meta")
                if isinstance(meta, list):  # a Parquet map column reads as [(key, value), ...]
                    obj["meta"] = dict(meta)
                elif isinstance(meta, str):
                    try:
                        obj["meta"] = json.loads(meta)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}, row {row}: meta is not a JSON object ({e.msg})") from None
                yield row, obj
    except DataError:
        raise
    except Exception as e:  # a truncated or corrupt page is found only when read
        raise DataError(f"{path}, after row {row}: cannot read the file ({_short_message(e)})") from None


def _short_message(e: BaseException) -> str:
    return clip(" ".join(str(e).split()) or type(e).__name__, 200)


def iter_corpus(path: str | Path, *, max_doc_chars: int = DEFAULT_MAX_DOC_CHARS) -> Iterator[Document]:
    """Stream the documents of a corpus JSONL file (one line at a time) or Parquet file (one
    record batch at a time; columns ``id``, ``text``, ``title``?, ``meta``?).

    Raises :class:`DataError` as :func:`load_corpus` does, when the bad line (row) is reached (an
    empty file yields nothing: the caller decides whether that is an error).
    """
    path = Path(path)
    if max_doc_chars <= 0:
        raise ValueError(f"max_doc_chars must be > 0, got {max_doc_chars}")
    parquet = path.suffix.lower() == ".parquet"
    unit = "row" if parquet else "line"
    seen: dict[str, int] = {}
    for lineno, obj in (_iter_parquet_rows(path) if parquet else _iter_objects(path)):
        text = obj.get("text")
        if isinstance(text, str) and len(text) > max_doc_chars:
            raise DataError(
                f"{path}, {unit} {lineno}: document {obj.get('id')!r} has {len(text):,} characters, over the limit "
                f"max_doc_chars={max_doc_chars:,}; split it, or raise the limit "
                "(load_corpus(..., max_doc_chars=N) / --max-doc-chars N)"
            )
        try:
            doc = Document.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{path}, {unit} {lineno}: bad document: {_validation_message(e)}") from None
        if doc.id in seen:
            raise _duplicate(path, lineno, "document", doc.id, seen[doc.id], unit)
        seen[doc.id] = lineno
        yield doc


def load_corpus(path: str | Path, *, max_doc_chars: int = DEFAULT_MAX_DOC_CHARS) -> list[Document]:
    """Read a corpus JSONL (or Parquet, see :func:`iter_corpus`) file into documents.

    Raises :class:`DataError` (naming the file and line) for non-UTF-8 bytes, invalid JSON, a line
    that is not an object, missing or unknown fields, empty text, bad or duplicate ids, a document
    longer than ``max_doc_chars``, or a file with no documents; ``FileNotFoundError`` if absent.
    Folders, globs and PDF/HTML/Markdown/text files: :func:`longread.loaders.load_documents`.
    """
    docs = list(iter_corpus(path, max_doc_chars=max_doc_chars))
    if not docs:
        raise DataError(f"{path}: no documents (the file is empty or only blank lines)")
    return docs


def _check_id_list(path: Path, lineno: int, qid: str, field: str, value: list[str] | None) -> None:
    if value is None:
        return
    if not value:
        raise DataError(f"{path}, line {lineno}: question {qid!r}: {field} is an empty list; omit the field instead")
    if len(set(value)) != len(value):
        dup = next(v for v in value if value.count(v) > 1)
        raise DataError(f"{path}, line {lineno}: question {qid!r}: {field} repeats {dup!r}")


def load_questions(path: str | Path, *, doc_ids: Iterable[str] | None = None) -> list[Question]:
    """Read a questions JSONL file.

    With ``doc_ids`` (the corpus ids), a question scoped to a document not in it is an error that
    names the line. Raises :class:`DataError` for the same kinds of problems as :func:`load_corpus`,
    plus empty answers and empty or repeating ``doc_ids``/``gold_ids``.
    """
    path = Path(path)
    known = None if doc_ids is None else set(doc_ids)
    out: list[Question] = []
    seen: dict[str, int] = {}
    for lineno, obj in _iter_objects(path):
        try:
            q = Question.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{path}, line {lineno}: bad question: {_validation_message(e)}") from None
        if q.id in seen:
            raise _duplicate(path, lineno, "question", q.id, seen[q.id])
        seen[q.id] = lineno
        for i, a in enumerate(q.answers):
            if not a.strip():
                raise DataError(f"{path}, line {lineno}: question {q.id!r}: answers[{i}] is empty")
        _check_id_list(path, lineno, q.id, "doc_ids", q.doc_ids)
        _check_id_list(path, lineno, q.id, "gold_ids", q.gold_ids)
        if known is not None:
            _check_scope(q, known, where=f"{path}, line {lineno}: ")
        out.append(q)
    if not out:
        raise DataError(f"{path}: no questions (the file is empty or only blank lines)")
    return out


def _check_scope(q: Question, known: set[str], where: str = "") -> None:
    for d in q.doc_ids or ():
        if d not in known:
            raise DataError(f"{where}question {q.id!r} is scoped to document {d!r}, which is not in the corpus")


def check_question_scopes(questions: Iterable[Question], doc_ids: Iterable[str]) -> None:
    """Raise :class:`DataError` naming the first question whose ``doc_ids`` name a document not in ``doc_ids``."""
    known = set(doc_ids)
    for q in questions:
        _check_scope(q, known)


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Write records (pydantic models or JSON-able dicts) one per line, atomically."""
    lines = []
    for r in records:
        if hasattr(r, "model_dump_json"):
            lines.append(r.model_dump_json(exclude_defaults=True) + "\n")
        else:
            lines.append(json.dumps(r, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


# --------------------------------------------------------------------------- public datasets

_UNSAFE = re.compile(r"[\x00-\x1f/\\]+")


def safe_id(title: str, taken: set[str] | None = None) -> str:
    """A record id made from a title: path characters become ``_``; a taken id gets ``~2``, ``~3``…"""
    base = _UNSAFE.sub("_", title).strip() or "untitled"
    if base in {".", ".."}:
        base = f"_{base}"
    base = base[:480]
    if taken is None:
        return base
    rid, n = base, 1
    while rid in taken:
        n += 1
        rid = f"{base}~{n}"
    taken.add(rid)
    return rid


def spread(items: Sequence[Any], n: int | None) -> list[Any]:
    """Up to ``n`` items evenly spaced over ``items`` (all when ``n`` is None), keeping order.

    Evenly spaced rather than the first ``n`` so questions cover the whole of a long document,
    not only its head (which would flatter readers that keep the head).
    """
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    return [items[(i * len(items)) // n] for i in range(n)]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None


def load_squad(
    path: str | Path,
    *,
    as_long_documents: bool = True,
    max_articles: int | None = None,
    max_questions: int | None = None,
    questions_per_article: int | None = None,
    scope_to_article: bool = True,
) -> tuple[list[Document], list[Question]]:
    """Read SQuAD JSON (v1.1 layout; v2 unanswerable questions are skipped) into ``(docs, questions)``.

    ``as_long_documents=True``: each article is one document (paragraphs joined by a blank line,
    id from the title); questions get ``doc_ids=gold_ids=[article_id]``.
    ``as_long_documents=False``: each paragraph is a document ``<article_id>#p<i>``; questions get
    ``gold_ids=[paragraph_id]`` and, with ``scope_to_article``, ``doc_ids`` = the article's paragraphs.
    ``questions_per_article`` keeps that many questions evenly spread over each article;
    ``max_questions`` then keeps the first that many overall. Raises :class:`DataError` for a file
    that is not SQuAD-shaped.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a 'data' list of articles)")
    articles = data["data"] if max_articles is None else data["data"][:max_articles]
    docs: list[Document] = []
    questions: list[Question] = []
    taken: set[str] = set()
    for ai, art in enumerate(articles):
        try:
            title = str(art["title"])
            paragraphs = art["paragraphs"]
            contexts = [p["context"] for p in paragraphs]
        except (KeyError, TypeError):
            raise DataError(f"{path}: article #{ai} lacks 'title' or 'paragraphs[].context'") from None
        aid = safe_id(title, taken)
        para_ids = [f"{aid}#p{i}" for i in range(len(paragraphs))]
        if as_long_documents:
            docs.append(Document(id=aid, text="\n\n".join(contexts), title=title.replace("_", " ")))
        else:
            for pid, ctx in zip(para_ids, contexts):
                docs.append(Document(id=pid, text=ctx, title=title.replace("_", " ")))
        art_qs: list[Question] = []
        for pi, p in enumerate(paragraphs):
            for qa in p.get("qas", []):
                if qa.get("is_impossible"):
                    continue
                answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", []) if a["text"].strip()))
                if not answers:
                    continue
                if as_long_documents:
                    doc_ids, gold = ([aid] if scope_to_article else None), [aid]
                else:
                    doc_ids, gold = (para_ids if scope_to_article else None), [para_ids[pi]]
                try:
                    art_qs.append(
                        Question(id=qa["id"], question=qa["question"], answers=answers, doc_ids=doc_ids, gold_ids=gold)
                    )
                except (ValidationError, KeyError) as e:
                    raise DataError(f"{path}: article {title!r}: bad question {qa.get('id')!r}: {e}") from None
        questions.extend(spread(art_qs, questions_per_article))
    if max_questions is not None:
        questions = questions[:max_questions]
    return docs, questions


def load_hotpotqa(path: str | Path) -> tuple[list[Document], list[Question]]:
    """Read the HotpotQA explorer sample (``_id, question, answer, title_a/b, para_a/b,
    supporting_facts, distractors``) into ``(docs, questions)``.

    Documents are paragraphs, de-duplicated by (title, text); ids come from titles. Each question
    is scoped to its own paragraphs (gold + distractors), listed in title order so the gold ones are
    not always first, and ``gold_ids`` are its two gold paragraphs. Raises :class:`DataError` for a
    record that does not have this shape.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of HotpotQA records")
    docs: list[Document] = []
    by_key: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    questions: list[Question] = []
    seen_q: set[str] = set()

    def doc_id(title: str, sentences: list[str]) -> str:
        text = "".join(sentences).strip()
        key = (title, text)
        if key not in by_key:
            did = safe_id(title, taken)
            by_key[key] = did
            docs.append(Document(id=did, text=text, title=title))
        return by_key[key]

    for i, rec in enumerate(data):
        try:
            qid = rec["_id"]
            gold = [doc_id(rec["title_a"], rec["para_a"]), doc_id(rec["title_b"], rec["para_b"])]
            others = [doc_id(t, sents) for t, sents, *_ in rec["distractors"]]
            question, answer = rec["question"], rec["answer"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: record #{i} is not a HotpotQA record ({type(e).__name__}: {e})") from None
        if qid in seen_q:
            raise DataError(f"{path}: record #{i}: duplicate question id {qid!r}")
        seen_q.add(qid)
        scope = sorted(dict.fromkeys(gold + others))
        questions.append(Question(id=qid, question=question, answers=[answer], doc_ids=scope, gold_ids=list(dict.fromkeys(gold))))
    return docs, questions


def demo_paths() -> tuple[Path, Path]:
    """``(corpus.jsonl, questions.jsonl)`` of the demo set shipped inside the package."""
    base = Path(__file__).resolve().parent / "data" / "demo"
    corpus, questions = base / "corpus.jsonl", base / "questions.jsonl"
    for p in (corpus, questions):
        if not p.is_file():
            raise FileNotFoundError(f"demo data missing: {p}; reinstall longread or run benchmarks/make_demo_data.py")
    return corpus, questions
