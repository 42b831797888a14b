"""Generic JSONL loaders: every bad input gets one clear DataError naming the file and the line."""

from __future__ import annotations

import json
import re

import pytest

from longread.data import DataError, check_question_scopes, load_corpus, load_questions, write_jsonl
from longread.types import Document, Question


def write_lines(path, *lines: str | bytes):
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines))
    return path


DOC1 = json.dumps({"id": "d1", "text": "Paris is the capital of France.", "title": "Paris"})
DOC2 = json.dumps({"id": "d2", "text": "Berlin is in Germany."})
Q1 = json.dumps({"id": "q1", "question": "Capital of France?", "answers": ["Paris"], "doc_ids": ["d1"]})


def where(path, line):
    return re.escape(f"{path}, line {line}")


def test_good_corpus_skips_blank_lines_and_bom(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", b"\xef\xbb\xbf" + DOC1.encode(), "", "   ", DOC2)
    docs = load_corpus(path)
    assert [d.id for d in docs] == ["d1", "d2"] and docs[0].title == "Paris" and docs[1].meta == {}


@pytest.mark.parametrize(
    "lines, line, message",
    [
        ((DOC1, b'{"id": "d2", "text": "caf\xe9"}'), 2, "not valid UTF-8"),
        ((DOC1, "", '{"id": "d2", "text": "Berlin is'), 3, r"invalid JSON \(truncated line\?\)"),
        ((DOC1, '["d2", "text"]'), 2, "expected a JSON object, got list"),
        ((DOC1, '{"id": "d2"}'), 2, "missing field 'text'"),
        ((DOC1, '{"id": "d2", "text": "x", "body": "y"}'), 2, "unknown field 'body'"),
        ((DOC1, '{"id": "d2", "text": "  \\n "}'), 2, "document text must not be empty"),
        (('{"id": "", "text": "x"}',), 1, "document id must be a non-empty string"),
        (('{"id": "../etc", "text": "x"}',), 1, r"no '\.' or '\.\.' part"),
        (('{"id": 7, "text": "x"}',), 1, "id: Input should be a valid string"),
        ((DOC1, DOC2, DOC1), 3, r"duplicate document id 'd1' \(first seen on line 1\)"),
    ],
)
def test_bad_corpus_lines(tmp_path, lines, line, message):
    path = write_lines(tmp_path / "corpus.jsonl", *lines)
    with pytest.raises(DataError, match=where(path, line) + ".*" + message):
        load_corpus(path)


def test_document_over_limit_says_how_to_raise_it(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", DOC1, json.dumps({"id": "big", "text": "x" * 101}))
    with pytest.raises(DataError, match=where(path, 2) + r".*'big' has 101 characters.*max_doc_chars=100.*raise the limit"):
        load_corpus(path, max_doc_chars=100)
    assert len(load_corpus(path, max_doc_chars=101)) == 2
    with pytest.raises(ValueError, match="max_doc_chars must be > 0"):
        load_corpus(path, max_doc_chars=0)


def test_ten_megabyte_document(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", DOC1, json.dumps({"id": "huge", "text": "word " * 2_000_000}))
    with pytest.raises(DataError, match=where(path, 2) + r".*10,000,000 characters.*max_doc_chars=5,000,000"):
        load_corpus(path)
    assert len(load_corpus(path, max_doc_chars=20_000_000)[1].text) == 10_000_000


def test_empty_and_missing_files(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", "", "  ")
    with pytest.raises(DataError, match="no documents"):
        load_corpus(path)
    with pytest.raises(DataError, match="no questions"):
        load_questions(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_corpus(tmp_path / "nope.jsonl")


def test_good_questions(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", Q1, json.dumps({"id": "q2", "question": "Where?", "answers": []}))
    qs = load_questions(path, doc_ids=["d1"])
    assert qs[0].doc_ids == ["d1"] and qs[1].answers == [] and qs[1].doc_ids is None


@pytest.mark.parametrize(
    "lines, line, message",
    [
        ((Q1, b'{"id": "q2", "question": "\xff"}'), 2, "not valid UTF-8"),
        ((Q1, '{"id": "q2", "question": "W'), 2, "invalid JSON"),
        (('"just a string"',), 1, "expected a JSON object, got str"),
        ((Q1, '{"id": "q2", "answers": ["x"]}'), 2, "missing field 'question'"),
        ((Q1, '{"id": "q2", "question": "x", "answer": "y"}'), 2, "unknown field 'answer'"),
        ((Q1, '{"id": "q2", "question": "  "}'), 2, "question text must not be empty"),
        ((Q1, '{"id": "q2", "question": "x", "answers": ["ok", " "]}'), 2, r"answers\[1\] is empty"),
        ((Q1, '{"id": "q2", "question": "x", "answers": "Paris"}'), 2, "answers: Input should be a valid list"),
        ((Q1, '{"id": "q2", "question": "x", "doc_ids": []}'), 2, "doc_ids is an empty list"),
        ((Q1, '{"id": "q2", "question": "x", "gold_ids": ["a", "a"]}'), 2, "gold_ids repeats 'a'"),
        ((Q1, "", Q1), 3, r"duplicate question id 'q1' \(first seen on line 1\)"),
    ],
)
def test_bad_question_lines(tmp_path, lines, line, message):
    path = write_lines(tmp_path / "questions.jsonl", *lines)
    with pytest.raises(DataError, match=where(path, line) + ".*" + message):
        load_questions(path)


def test_question_scoped_to_missing_doc(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", Q1, json.dumps({"id": "q2", "question": "x", "doc_ids": ["d1", "d9"]}))
    with pytest.raises(DataError, match=where(path, 2) + r".*question 'q2' is scoped to document 'd9'.*not in the corpus"):
        load_questions(path, doc_ids=["d1", "d2"])
    qs = load_questions(path)
    with pytest.raises(DataError, match="question 'q2' is scoped to document 'd9'"):
        check_question_scopes(qs, ["d1"])
    check_question_scopes(qs, ["d1", "d9"])


def test_write_jsonl_round_trip_and_atomic(tmp_path):
    docs = [Document(id="a", text="x y", title="T"), Document(id="b", text="z", meta={"k": 1})]
    qs = [Question(id="q", question="?", answers=["x"], gold_ids=["a"])]
    write_jsonl(tmp_path / "c.jsonl", docs)
    write_jsonl(tmp_path / "q.jsonl", [q.model_dump() for q in qs])
    assert load_corpus(tmp_path / "c.jsonl") == docs
    assert load_questions(tmp_path / "q.jsonl") == qs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "q.jsonl"]  # no temp files left


# --- Parquet corpora ---------------------------------------------------------------------------


def write_parquet(path, columns: dict, row_group_size: int | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_corpus_streams_by_batches_with_title_and_meta(tmp_path):
    from longread.data import iter_corpus
    from longread.loaders import load_documents

    n = 2500  # over one record batch (1,024 rows)
    path = write_parquet(tmp_path / "c.parquet", {
        "id": [f"d{i}" for i in range(n)],
        "text": [f"Document number {i} says hello." for i in range(n)],
        "title": ["First" if i == 0 else None for i in range(n)],
        "meta": [{"lang": "en", "page": i} for i in range(n)],  # a struct column
    }, row_group_size=700)
    docs = list(iter_corpus(path))
    assert len(docs) == n and docs[0].title == "First" and docs[1].title is None
    assert docs[2].meta == {"lang": "en", "page": 2} and docs[-1].text == f"Document number {n - 1} says hello."
    stream = load_documents(path)
    assert [d.id for d in stream] == [d.id for d in docs] and stream.report.formats == {"parquet": n}

    as_json = write_parquet(tmp_path / "j.parquet", {"id": ["a"], "text": ["x y"], "meta": ['{"source": "a.txt"}']})
    assert list(iter_corpus(as_json))[0].meta == {"source": "a.txt"}


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"id": ["a"], "text": ["t"], "body": ["b"]}, r"unknown column\(s\) \['body'\]; a corpus Parquet file has columns id, text"),
        ({"id": ["a"]}, r"missing column\(s\) \['text'\]"),
        ({"id": ["a", "b", "a"], "text": ["t", "u", "v"]}, r", row 3: duplicate document id 'a' \(first seen on row 1\)"),
        ({"id": ["a", "b"], "text": ["t", None]}, r", row 2: bad document: "),
        ({"id": ["a"], "text": ["t"], "meta": ["{not json"]}, r", row 1: meta is not a JSON object"),
    ],
)
def test_bad_parquet_corpus_is_one_error_naming_file_and_row(tmp_path, columns, message):
    path = write_parquet(tmp_path / "c.parquet", columns)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
        load_corpus(path)


def test_damaged_parquet_file_is_a_data_error(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", {"id": [f"d{i}" for i in range(50)], "text": ["words " * 40] * 50})
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(str(bad)) + ": not a readable Parquet file"):
        load_corpus(bad)
    (tmp_path / "text.parquet").write_text("id,text\na,b\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_corpus(tmp_path / "text.parquet")


def test_cli_indexes_a_parquet_corpus_like_the_same_jsonl(tmp_path, capsys):
    import json as _json

    from longread.cli import main

    ids = [f"d{i}" for i in range(30)]
    texts = [f"Fact {i}: the river number {i} flows past town {i * 7}. " * 5 for i in range(30)]
    write_parquet(tmp_path / "c.parquet", {"id": ids, "text": texts})
    write_jsonl(tmp_path / "c.jsonl", [Document(id=i, text=t) for i, t in zip(ids, texts)])
    for name in ("c.parquet", "c.jsonl"):
        assert main(["index", "--config", "rag_bm25", "--corpus", str(tmp_path / name), "--out", str(tmp_path / f"idx-{name}"),
                     "--quiet"]) == 0
    capsys.readouterr()
    a, b = (_json.loads((tmp_path / f"idx-{n}" / "manifest.json").read_text()) for n in ("c.parquet", "c.jsonl"))
    assert a["n_documents"] == b["n_documents"] == 30 and a["n_chunks"] == b["n_chunks"]
    assert a["corpus_sha256"] == b["corpus_sha256"]
    assert a["files"] == b["files"]  # the same bytes: store and BM25 part
