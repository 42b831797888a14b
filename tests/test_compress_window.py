"""compressor.window: passages widened to whole sentences and their neighbours; chunks untouched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from longread.compressors.window import SentenceWindow, sentence_window
from longread.pipelines.pipeline import Pipeline
from longread.types import Document, Question

S = ["Alpha starts the text.", "Bravo is the second one.", "Charlie holds the answer 42.", "Delta follows it.",
     "Echo is next.", "Foxtrot ends it."]
TEXT = " ".join(S)


def _at(sentence: int) -> int:
    return TEXT.index(S[sentence])


def test_hand_worked_windows() -> None:
    # A chunk from the middle of Charlie to the middle of Delta.
    start, end = _at(2) + 8, _at(3) + 5
    s, e = sentence_window(TEXT, start, end, sentences=0)
    assert TEXT[s:e] == " ".join(S[2:4])  # whole sentences, no neighbours
    s, e = sentence_window(TEXT, start, end, sentences=1)
    assert TEXT[s:e] == " ".join(S[1:5])
    s, e = sentence_window(TEXT, start, end, sentences=5)
    assert (s, e) == (0, len(TEXT))  # clipped at the document's ends
    # A cap: the chunk's own sentences stay, then neighbours nearest first (before, then after).
    own = len(" ".join(S[2:4]).split())
    s, e = sentence_window(TEXT, start, end, sentences=2, max_tokens=own + len(S[1].split()))
    assert TEXT[s:e] == " ".join(S[1:4])
    s, e = sentence_window(TEXT, start, end, sentences=2, max_tokens=1)
    assert TEXT[s:e] == " ".join(S[2:4])


def test_sentences_cut_by_the_reach_are_not_added() -> None:
    long_before = "word " * 1000 + "ends here."  # one 5,000-character sentence before Alpha
    text = long_before + " " + TEXT
    start = text.index(S[2])
    s, e = sentence_window(text, start, start + len(S[2]), sentences=2)
    assert text[s:e] == " ".join(S[0:5])
    # Three on the left would take the long sentence, but the reach (600 characters a sentence)
    # cuts it: it is not whole, so the window stops at Alpha.
    s, e = sentence_window(text, start, start + len(S[2]), sentences=3)
    assert text[s:e] == " ".join(S)
    short = "A short one. " + TEXT
    s, _ = sentence_window(short, short.index(S[2]), short.index(S[2]) + len(S[2]), sentences=3)
    assert s == 0  # within reach it is taken


@settings(max_examples=200, deadline=None)
@given(hst.integers(0, len(TEXT) - 1), hst.integers(1, 60), hst.integers(0, 3), hst.one_of(hst.none(), hst.integers(1, 40)))
def test_window_always_covers_the_chunk(start: int, length: int, n: int, cap: int | None) -> None:
    end = min(len(TEXT), start + length)
    s, e = sentence_window(TEXT, start, end, n, cap)
    assert 0 <= s <= start and end <= e <= len(TEXT)
    more, _ = sentence_window(TEXT, start, end, n + 1, None)
    assert more <= s


def test_stage_rewrites_passage_text_and_keeps_the_chunk(tmp_path) -> None:
    docs = [Document(id="d", text=TEXT * 3)]
    cfg = {
        "name": "window",
        "chunker": {"kind": "tokens", "size": 6, "overlap": 0},
        "stages": [
            {"key": "retriever.bm25", "params": {"top_k": 2}},
            {"key": "compressor.window", "params": {"sentences": 1}},
            {"key": "reader.echo", "params": {"words": 3}},
        ],
    }
    pipe = Pipeline.from_config(cfg)
    pipe.index(docs, tmp_path / "idx", show_progress=False)
    [st] = pipe.answer([Question(id="q", question="Which one holds the answer?")], index_dir=tmp_path / "idx")
    assert st.passages
    for ps in st.passages:
        c = ps.chunk
        assert c.text == docs[0].text[c.start:c.end]  # as indexed
        assert c.text.strip() in ps.text and len(ps.text) > len(c.text)
        assert ps.text[0].isupper() and ps.text.endswith(".")  # whole sentences


def test_params_and_setup() -> None:
    with pytest.raises(Exception, match="sentences"):
        SentenceWindow({"sentences": -1})
    with pytest.raises(RuntimeError, match="call setup"):
        SentenceWindow({})([])
