"""Standard long-context benchmark files to longread's corpus + questions JSONL.

Users bring the files; nothing is downloaded. Layouts (one JSON object per line):

- **LongBench** (v1, ``data/<task>.jsonl``): ``{"input": question, "context": long text,
  "answers": [str], "_id": str, "dataset": str, "length", "language", "all_classes"}``. One
  document per record (id ``_id``); its question is scoped to it. Tasks without a question
  (summarisation, code completion) need ``instruction=`` or are skipped and counted.
- **L-Eval** (``LEval-data/*/<task>.jsonl``): ``{"input": long document, "instructions": [str],
  "outputs": [str], "source", "evaluation"}``. One document per line, one question per
  instruction (ids ``<task>-<line>`` and ``<task>-<line>-q<j>``).
- **RULER** (``<task>/validation.jsonl`` from its ``prepare.py``): ``{"index": int, "input":
  prompt, "outputs": [str], "length"}``; the prompt holds the context and ends with the question
  (the last ``Question:`` part, else the last line), which is split off. Records that already
  carry ``context`` and ``question``/``query`` (and ``answers``) are used as they are.
- **LoCoV1** (``hazyresearch/LoCoV1-Documents`` and ``-Queries`` as JSONL):
  documents ``{"pid", "dataset", "passage"}``, queries ``{"qid", "dataset", "query",
  "answer_pids": [pid]}``. A retrieval benchmark: questions get ``gold_ids`` and no answers;
  retrieval is within one dataset's pool, so one dataset is converted at a time.

Every problem raises :class:`~longread.data.DataError` naming the file, line and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..data import DataError, _iter_objects, safe_id, write_jsonl
from ..types import Document, Question

__all__ = ["FORMATS", "Converted", "convert", "convert_longbench", "convert_leval", "convert_ruler", "convert_loco", "split_ruler_prompt"]


@dataclass
class Converted:
    """Documents and questions made from benchmark files, and what was left out."""

    documents: list[Document] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    out: Path | None = None

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def summary(self) -> str:
        """One line: counts, where they were written, and what was skipped."""
        s = f"converted {len(self.documents)} documents and {len(self.questions)} questions"
        if self.out is not None:
            s += f" into {self.out} (corpus.jsonl, questions.jsonl)"
        if self.skipped:
            s += "; skipped " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return s


def _field(path: Path, lineno: int, obj: dict, *names: str, kind: type | tuple = str, required: bool = True) -> Any:
    for n in names:
        if n in obj and obj[n] is not None:
            v = obj[n]
            if not isinstance(v, kind):
                raise DataError(f"{path}, line {lineno}: field {n!r} must be {_kind_name(kind)}, got {type(v).__name__}")
            return v
    if required:
        raise DataError(f"{path}, line {lineno}: missing field {' or '.join(repr(n) for n in names)}")
    return None


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", list: "a list", int: "an integer"}.get(k, k.__name__) for k in kinds)


def _answers(path: Path, lineno: int, value: Any, name: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise DataError(f"{path}, line {lineno}: field {name!r} must hold strings, got {type(v).__name__}")
        if v.strip():
            out.append(v.strip())
    return list(dict.fromkeys(out))


def _records(paths: Sequence[Path], limit: int | None) -> Iterator[tuple[Path, int, dict]]:
    n = 0
    for p in paths:
        for lineno, obj in _iter_objects(p):
            if limit is not None and n >= limit:
                return
            n += 1
            yield p, lineno, obj


def _add_doc(res: Converted, seen: dict[str, str], where: str, doc: Document) -> None:
    if doc.id in seen:
        raise DataError(f"{where}: duplicate document id {doc.id!r} (first seen at {seen[doc.id]})")
    seen[doc.id] = where
    res.documents.append(doc)


def convert_longbench(paths: Sequence[Path], *, dataset: str | None = None, instruction: str | None = None,
                      limit: int | None = None) -> Converted:
    """LongBench v1 records to documents + scoped questions (see the module docstring)."""
    res, seen = Converted(), {}
    for path, lineno, obj in _records(paths, limit):
        where = f"{path}, line {lineno}"
        ds = _field(path, lineno, obj, "dataset", required=False) or path.stem
        if dataset is not None and ds != dataset:
            continue
        context = _field(path, lineno, obj, "context")
        question = _field(path, lineno, obj, "input") or ""
        answers = _answers(path, lineno, _field(path, lineno, obj, "answers", kind=(list, str)), "answers")
        if not question.strip():
            if instruction is None:
                res.skip("records without a question (give --instruction)")
                continue
            question = instruction
        if not context.strip():
            res.skip("records with an empty context")
            continue
        rid = _field(path, lineno, obj, "_id", required=False) or f"{ds}-{lineno}"
        did = safe_id(str(rid))
        meta = {"format": "longbench", "dataset": ds, "source": f"{path.name}:{lineno}"}
        for k in ("language", "length", "all_classes"):
            if obj.get(k) is not None:
                meta[k] = obj[k]
        _add_doc(res, seen, where, Document(id=did, text=context, meta=meta))
        res.questions.append(Question(id=did, question=question, answers=answers, doc_ids=[did], gold_ids=[did]))
    return res


def convert_leval(paths: Sequence[Path], *, dataset: str | None = None, instruction: str | None = None,
                  limit: int | None = None) -> Converted:
    """L-Eval records (one document, several instructions/outputs) to documents + questions."""
    res, seen = Converted(), {}
    for path, lineno, obj in _records(paths, limit):
        where = f"{path}, line {lineno}"
        task = path.stem
        if dataset is not None and task != dataset:
            continue
        text = _field(path, lineno, obj, "input")
        instructions = _field(path, lineno, obj, "instructions", kind=(list, str))
        outputs = _field(path, lineno, obj, "outputs", kind=(list, str))
        instructions = instructions if isinstance(instructions, list) else [instructions]
        outputs = outputs if isinstance(outputs, list) else [outputs]
        if len(instructions) != len(outputs):
            raise DataError(f"{where}: {len(instructions)} instructions but {len(outputs)} outputs")
        if not text.strip():
            res.skip("records with an empty input")
            continue
        did = safe_id(f"{task}-{lineno}")
        meta = {"format": "leval", "dataset": task, "source": f"{path.name}:{lineno}"}
        for k in ("source", "evaluation"):
            if isinstance(obj.get(k), str):
                meta["leval_" + k] = obj[k]
        _add_doc(res, seen, where, Document(id=did, text=text, meta=meta))
        for j, (q, a) in enumerate(zip(instructions, outputs)):
            if not isinstance(q, str) or not q.strip():
                res.skip("instructions that are empty")
                continue
            res.questions.append(Question(id=f"{did}-q{j}", question=q.strip(), answers=_answers(path, lineno, a, "outputs"),
                                          doc_ids=[did], gold_ids=[did]))
    return res


_QUESTION = re.compile(r"(?:^|\n)\s*Question:\s*", re.IGNORECASE)


def split_ruler_prompt(prompt: str) -> tuple[str, str] | None:
    """Split a RULER prompt into ``(context, question)``: at the last ``Question:``, else the last line.

    Returns None when neither exists (a one-line prompt).
    """
    matches = list(_QUESTION.finditer(prompt))
    if matches:
        m = matches[-1]
        ctx, q = prompt[: m.start()], prompt[m.end():]
    else:
        body = prompt.rstrip()
        cut = body.rfind("\n")
        if cut < 0:
            return None
        ctx, q = body[:cut], body[cut + 1:]
    ctx, q = ctx.strip(), q.strip()
    return (ctx, q) if ctx and q else None


def convert_ruler(paths: Sequence[Path], *, dataset: str | None = None, instruction: str | None = None,
                  limit: int | None = None) -> Converted:
    """RULER-style records to one document + one scoped question each."""
    res, seen = Converted(), {}
    for path, lineno, obj in _records(paths, limit):
        where = f"{path}, line {lineno}"
        task = path.parent.name if path.stem in {"validation", "test", "train"} else path.stem
        if dataset is not None and task != dataset:
            continue
        context = _field(path, lineno, obj, "context", required=False)
        question = _field(path, lineno, obj, "question", "query", required=False)
        if context is None or question is None:
            prompt = _field(path, lineno, obj, "input")
            split = split_ruler_prompt(prompt)
            if split is None:
                raise DataError(f"{where}: cannot find the question in 'input' (no 'Question:' part and no last line); "
                                "give records with 'context' and 'question'")
            context, question = (context or split[0]), (question or split[1])
        answers = _answers(path, lineno, _field(path, lineno, obj, "outputs", "answers", kind=(list, str)), "outputs")
        index = obj.get("index", lineno - 1)
        did = safe_id(f"{task}-{index}")
        meta = {"format": "ruler", "dataset": task, "source": f"{path.name}:{lineno}"}
        if obj.get("length") is not None:
            meta["length"] = obj["length"]
        _add_doc(res, seen, where, Document(id=did, text=context, meta=meta))
        res.questions.append(Question(id=did, question=question, answers=answers, doc_ids=[did], gold_ids=[did]))
    return res


def _loco_files(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Sort the given files (or the .jsonl files in given folders) into documents and queries by their fields."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.rglob("*.jsonl")) if p.is_dir() else [p])
    docs, queries = [], []
    for f in files:
        first = next(_iter_objects(f), None)
        if first is None:
            continue
        obj = first[1]
        if "passage" in obj and "pid" in obj:
            docs.append(f)
        elif "query" in obj and "qid" in obj:
            queries.append(f)
        else:
            raise DataError(f"{f}, line {first[0]}: neither a LoCoV1 document (pid, passage) nor query (qid, query) record")
    if not docs or not queries:
        raise DataError(f"LoCoV1 needs a documents file (pid, passage) and a queries file (qid, query, answer_pids); "
                        f"found {len(docs)} and {len(queries)} in {', '.join(map(str, paths))}")
    return docs, queries


def convert_loco(paths: Sequence[Path], *, dataset: str | None = None, instruction: str | None = None,
                 limit: int | None = None) -> Converted:
    """One LoCoV1 dataset: its documents, and its queries with ``gold_ids`` = ``answer_pids``."""
    doc_files, query_files = _loco_files(paths)
    if dataset is None:
        names = sorted({str(o.get("dataset")) for f in doc_files for _, o in _iter_objects(f)})
        if len(names) > 1:
            raise DataError(f"the LoCoV1 files hold {len(names)} datasets ({', '.join(names)}); pick one with --dataset "
                            "(retrieval is within one dataset's documents)")
        dataset = names[0] if names else None
    res, seen = Converted(), {}
    for path, lineno, obj in _records(doc_files, None):
        if obj.get("dataset") != dataset:
            continue
        pid = _field(path, lineno, obj, "pid", kind=(str, int))
        text = _field(path, lineno, obj, "passage")
        if not text.strip():
            res.skip("documents with an empty passage")
            continue
        did = safe_id(str(pid))
        _add_doc(res, seen, f"{path}, line {lineno}", Document(id=did, text=text, meta={"format": "loco", "dataset": dataset, "pid": str(pid)}))
    if not res.documents:
        raise DataError(f"no LoCoV1 documents of dataset {dataset!r} in {', '.join(map(str, doc_files))}")
    qseen: dict[str, str] = {}
    for path, lineno, obj in _records(query_files, limit):
        if obj.get("dataset") != dataset:
            continue
        qid = safe_id(str(_field(path, lineno, obj, "qid", kind=(str, int))))
        query = _field(path, lineno, obj, "query")
        gold = [safe_id(str(x)) for x in _field(path, lineno, obj, "answer_pids", kind=list)]
        missing = [g for g in gold if g not in seen]
        if missing:
            raise DataError(f"{path}, line {lineno}: query {qid!r} names answer_pids not in the documents: {missing[:3]}")
        if qid in qseen:
            raise DataError(f"{path}, line {lineno}: duplicate query id {qid!r} (first seen at {qseen[qid]})")
        qseen[qid] = f"{path}, line {lineno}"
        if not query.strip() or not gold:
            res.skip("queries without text or answer_pids")
            continue
        res.questions.append(Question(id=qid, question=query, gold_ids=list(dict.fromkeys(gold))))
    return res


FORMATS = {"longbench": convert_longbench, "leval": convert_leval, "ruler": convert_ruler, "loco": convert_loco}


def convert(fmt: str, inputs: Sequence[str | Path], out_dir: str | Path, *, dataset: str | None = None,
            instruction: str | None = None, limit: int | None = None) -> Converted:
    """Convert benchmark files of format ``fmt`` and write ``out_dir/corpus.jsonl`` and ``questions.jsonl``.

    Everything is read and checked before either file is written (each write is atomic).
    Raises ``ValueError`` for an unknown format, ``FileNotFoundError`` for a missing input and
    :class:`~longread.data.DataError` for bad records or nothing to convert.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"file not found: {p}")
    if fmt != "loco":
        paths = [f for p in paths for f in (sorted(p.rglob("*.jsonl")) if p.is_dir() else [p])]
    res = FORMATS[fmt](paths, dataset=dataset, instruction=instruction, limit=limit)
    if not res.documents or not res.questions:
        extra = f" of dataset {dataset!r}" if dataset else ""
        raise DataError(f"no {fmt} records{extra} to convert in {', '.join(map(str, inputs))}"
                        + (f" ({res.summary().split('; ', 1)[-1]})" if res.skipped else ""))
    out = Path(out_dir)
    write_jsonl(out / "corpus.jsonl", res.documents)
    write_jsonl(out / "questions.jsonl", res.questions)
    res.out = out
    return res
