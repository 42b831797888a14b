"""Synthetic long-context suites: needles land at the asked depth, lengths are near the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from longread.synth import load_babi, load_filler, make_needle_suite, ruler_score

FILLER = ("The quick brown fox jumps over the lazy dog. " * 3 + "Startups grow fast or die. ") * 400


def _words() -> list[str]:
    return FILLER.split()


@pytest.mark.parametrize("depth", [0, 50, 100])
def test_needle_lands_at_its_depth(depth: float) -> None:
    docs, qs = make_needle_suite(_words(), lengths=[2000], depths=[depth])
    (d,), (q,) = docs, qs
    number = q.answers[0]
    pos = d.text.index(number) / len(d.text)
    assert abs(pos - depth / 100) < 0.05, pos
    assert q.doc_ids == [d.id] and number in d.text and "magic number" in q.question
    assert abs(len(d.text.split()) * 1.3 - 2000) < 40


def test_multi_needles_all_present_and_ordered() -> None:
    docs, qs = make_needle_suite(_words(), lengths=[3000], depths=[10], kind="multi", n_needles=3)
    text = docs[0].text
    positions = [text.index(a) for a in qs[0].answers]
    assert positions == sorted(positions) and len(qs[0].answers) == 3


def test_babi_in_filler(tmp_path: Path) -> None:
    f = tmp_path / "qa1.txt"
    f.write_text("1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n")
    stories = load_babi(f)
    assert stories == [(["Mary moved to the bathroom.", "John went to the hallway."], "Where is Mary?", "bathroom")]
    docs, qs = make_needle_suite(_words(), lengths=[1000], depths=[30], kind="babi", babi_stories=stories)
    assert "Mary moved to the bathroom." in docs[0].text and qs[0].answers == ["bathroom"]
    (tmp_path / "bad.txt").write_text("x Mary\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_babi(tmp_path / "bad.txt")


def test_ruler_scoring_and_bad_args(tmp_path: Path) -> None:
    assert ruler_score("It is 123 and 456.", ["123", "456"]) == 1.0
    assert ruler_score("It is 123.", ["123", "456"], "part") == 0.5
    assert ruler_score(None, ["1"]) == 0.0
    with pytest.raises(ValueError):
        ruler_score("x", ["1"], "most")
    with pytest.raises(ValueError, match="depths"):
        make_needle_suite(_words(), depths=[150])
    with pytest.raises(FileNotFoundError):
        load_filler(tmp_path)
    (tmp_path / "a.txt").write_text("one two three")
    assert load_filler(tmp_path) == ["one", "two", "three"]


def test_cli_synth_writes_loadable_files(tmp_path: Path) -> None:
    from longread.cli import main
    from longread.data import load_corpus, load_questions

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "e.txt").write_text(FILLER)
    assert main(["synth", "--filler", str(tmp_path / "f"), "--out", str(tmp_path / "s"), "--lengths", "500", "--depths", "0", "100"]) == 0
    assert len(load_corpus(tmp_path / "s" / "corpus.jsonl")) == 2 and len(load_questions(tmp_path / "s" / "questions.jsonl")) == 2
