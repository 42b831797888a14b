"""Fuzzing the loaders and the config parser: every bad input is one clear error, never a crash
from deep inside, and nothing is written outside the chosen dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longread.config import ConfigError, load_config, parse_config
from longread.data import DataError, load_corpus, load_questions
from longread.types import Document, Question

CLEAR = (DataError, ConfigError)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_as_corpus(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "c.jsonl"
    p.write_bytes(data)
    try:
        docs = load_corpus(p)
    except CLEAR as e:
        assert str(p) in str(e)
    else:
        assert all(isinstance(d, Document) for d in docs)


@FUZZ
@given(st.lists(st.fixed_dictionaries({"id": st.text(max_size=8), "question": st.text(max_size=20)}, optional={"answers": st.lists(st.text(max_size=5), max_size=2), "doc_ids": st.lists(st.text(max_size=5), max_size=2), "junk": st.integers()}), max_size=5), st.integers(min_value=0, max_value=60))
def test_truncated_and_odd_question_lines(tmp_path: Path, rows: list, cut: int) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    text = text[: max(0, len(text) - cut)]
    p = tmp_path / "q.jsonl"
    p.write_text(text, encoding="utf-8")
    try:
        qs = load_questions(p)
    except CLEAR as e:
        assert "line" in str(e) and str(p) in str(e)
    else:
        assert all(isinstance(q, Question) for q in qs)


def test_path_traversal_ids_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    for bad in ["../../etc/passwd", "a/../../b", "/etc/passwd", "a//b", "a/", "./a", "..", "x\\y", "a\x00b"]:
        p.write_text(json.dumps({"id": bad, "text": "t"}) + "\n")
        with pytest.raises(DataError, match="line 1"):
            load_corpus(p)
    # A relative path (what folder loaders make) is a valid id and stays inside any dir it is joined to.
    p.write_text(json.dumps({"id": "reports/2024/q1.pdf", "text": "t"}) + "\n")
    assert load_corpus(p)[0].id == "reports/2024/q1.pdf"
    assert (tmp_path / "reports/2024/q1.pdf").resolve().is_relative_to(tmp_path.resolve())


def _nest(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


@pytest.mark.parametrize("text", [_nest(5000), "name: x\nstages: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "a: &a [*a]\n"])
def test_deep_or_recursive_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        load_config(p)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=15))
def test_random_config_objects(data: object) -> None:
    try:
        parse_config(data)
    except ConfigError:
        pass


@FUZZ
@given(st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5))
def test_huge_or_odd_numbers_in_params(v: object) -> None:
    cfg = {"name": "x", "stages": [{"key": "retriever.bm25", "params": {"top_k": v}}], "chunker": {"size": v}}
    try:
        parse_config(cfg)
    except ConfigError as e:
        assert "stages[0]" in str(e) or "chunker" in str(e)
