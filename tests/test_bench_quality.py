"""benchmarks/quality.py on handmade data: set building, and a run end to end with the echo fake."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from longread.types import Document, Question

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_quality", None)


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    rng = random.Random(1)
    articles = []
    for a in range(6):
        paragraphs = []
        for p in range(2):
            filler = " ".join(rng.choice(WORDS) for _ in range(20 + 10 * a))
            city = f"City{a}{p}"
            context = f"{filler}. The river of {city} is {100 + a * 10 + p} miles long. {filler}."
            qas = [
                {"id": f"a{a}p{p}q{k}", "question": f"How long is the river of {city} ({k})?",
                 "answers": [{"text": f"{100 + a * 10 + p} miles", "answer_start": 0}]}
                for k in range(2)
            ]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    (data / "squad").mkdir(parents=True)
    (data / "squad" / "squad-dev-1.1.rebuilt.json").write_text(json.dumps({"data": articles}), encoding="utf-8")
    hot = []
    for i in range(5):
        hot.append({
            "_id": f"h{i}", "question": f"Which river flows past town {i}?", "answer": f"River{i}",
            "title_a": f"Town{i}", "para_a": [f"Town{i} lies on River{i}. ", "It is small."],
            "title_b": f"River{i}", "para_b": [f"River{i} is long."], "supporting_facts": [],
            "distractors": [[f"Other{i}", ["Nothing here."]]],
        })
    (data / "hotpotqa").mkdir()
    (data / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json").write_text(json.dumps(hot), encoding="utf-8")
    (data / "paul_graham" / "essays").mkdir(parents=True)
    essay = " ".join(f"{rng.choice(WORDS)}{'.' if k % 9 == 8 else ''}" for k in range(3000))
    (data / "paul_graham" / "essays" / "e1.txt").write_text(essay, encoding="utf-8")
    return data


def test_sampling_and_grouping(bench) -> None:
    groups = [[Question(id=f"g{g}q{i}", question="q?") for i in range(n)] for g, n in enumerate((5, 1, 3))]
    picked = bench.sample_stratified(groups, 5, random.Random(0))
    # round-robin: g0, g1, g2, then g1 is empty -> g0, g2
    assert [q.id[:2] for q in picked] == ["g0", "g1", "g2", "g0", "g2"]
    assert picked == bench.sample_stratified(groups, 5, random.Random(0))  # seeded
    assert len(bench.sample_stratified(groups, 50, random.Random(0))) == 9  # all there are
    docs = [Document(id=f"d{i}", text=" ".join(["w"] * n)) for i, n in enumerate((10, 1, 2, 9, 3, 8, 1))]
    # longest first (10), then the shortest documents that still let the group reach 12:
    # 10 + 1 + 1 = 12; then 9 + 2 + 3 = 14; the 8 is left over (no third group)
    groups = bench.group_covering(docs, 3, 12)
    assert [[d.id for d in g] for g in groups] == [["d0", "d1", "d6"], ["d3", "d2", "d4"]]
    assert [sum(len(d.text.split()) for d in g) for g in groups] == [12, 14]
    assert bench.parse_reader("m@llamacpp") == ("m", "llamacpp") and bench.parse_reader("m") == ("m", None)
    cfg = {"name": "c", "stages": [{"key": "retriever.bm25", "params": {}}, {"key": "reader.hf", "params": {"model": "a"}}]}
    swapped = bench.with_reader(cfg, "b@llamacpp")
    assert swapped["stages"][1]["params"] == {"llm": {"backend": "llamacpp", "model": "b"}}
    assert swapped["name"] == "c--b-llamacpp" and bench.reader_of(swapped) == "b@llamacpp"
    assert bench.reader_of(bench.with_reader(cfg, "b")) == "b" and cfg["stages"][1]["params"] == {"model": "a"}
    assert not bench.is_long_context(cfg)


def test_sets_are_built_and_run_end_to_end(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data(tmp_path)
    sets = {s.name: s for s in bench.build_sets(bench.SETS, data, 8, 0, needle_lengths=[300, 600], concat_min_words=100)}
    assert {n: len(s.questions) for n, s in sets.items()} == {
        "squad-article": 8, "squad-concat": 8, "hotpotqa": 5, "needle": 8, "multi-needle": 8,
    }
    art = sets["squad-article"]
    assert len({q.doc_ids[0] for q in art.questions}) == 6  # spread over all six articles
    concat = sets["squad-concat"]
    assert len(concat.docs) == 2 and all(len(d.meta["articles"]) == 3 for d in concat.docs)
    assert all(len(d.text.split()) >= 100 for d in concat.docs)
    for q in concat.questions:  # scoped to the concatenation that holds the answer
        assert q.answers[0].split()[0] in next(d for d in concat.docs if d.id == q.doc_ids[0]).text
    multi = sets["multi-needle"]
    assert all(q.question.startswith("What is the special magic number for ") and len(q.answers) == 1 for q in multi.questions)
    assert [s.metric_style for s in sets.values()] == ["long", "long", "hotpotqa", "numeric", "numeric"]

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "rag.yaml").write_text(
        "name: rag-echo\nchunker: {kind: tokens, size: 32, overlap: 4}\nstages:\n"
        "  - {key: retriever.bm25, params: {top_k: 2}}\n  - {key: reader.echo, params: {words: 8}}\n", encoding="utf-8")
    (configs / "long.yaml").write_text(
        "name: long-echo\nchunker: {kind: whole}\nstages:\n  - {key: reader.echo, params: {words: 8}}\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = bench.main(["--data", str(data), "--out", str(out), "--questions", "8", "--limit", "3",
                     "--needle-lengths", "300", "600", "--concat-min-words", "100",
                     "--configs", str(configs / "rag.yaml"), str(configs / "long.yaml"), "--ablation-base", "rag-echo"])
    assert rc == 0
    rows = json.loads((out / "quality.json").read_text())
    routes = [r["self_route"] for r in rows if "self_route" in r]
    rows = [r for r in rows if "self_route" not in r]
    assert len(rows) == 10 and {r["metrics"]["n"] for r in rows} == {3}
    # Self-Route composed per RAG row and min_support (1.0, 0.5): echo answers are words of the passage
    # it read, so they are grounded and keep their RAG score; on the tiny HotpotQA set BM25 finds no
    # passage, the answers are empty, and every question falls back.
    assert len(routes) == 10 and {r["min_support"] for r in routes} == {1.0, 0.5}
    for r in routes:
        assert (r["fallback_rate"], r["delta_vs_rag"][0]) == ((1.0, 0.0) if r["set"] == "hotpotqa" else (0.0, 0.0))
    for r in rows:
        funnel = json.loads((Path(r["run_dir"]) / "funnel.json").read_text())
        assert funnel["rates"]["n"] == 3 and len(funnel["rows"]) == 3
        assert r["delta_f1_vs_long_context"] == "(baseline)" if r["config"] == "long-echo" else r["delta_f1_vs_long_context"].startswith(("+", "-"))
    # The RAG rows find the answers (their passages hold them); numeric needles are scored by value.
    rag_needle = next(r for r in rows if r["set"] == "needle" and r["config"] == "rag-echo")
    assert rag_needle["metrics"]["metric_style"] == "numeric" and "numeric" in rag_needle["metrics"]
    assert rag_needle["funnel"]["stages"]["corpus"]["rate"] == 1.0
    md = (out / "quality.md").read_text()
    assert md.count("| rag-echo | reader.echo | 3 |") == 5 and "ΔF1 vs long ctx" in md
    # the ablation column: each set's rag-echo row is its own reference, long-echo is compared with it
    assert md.count("| ΔF1 vs rag-echo |") == 5 and md.count("| (baseline) | (baseline) |") == 0
    lines = [line for line in md.splitlines() if line.startswith(("| rag-echo | reader.echo | 3 |", "| long-echo | reader.echo | 3 |"))]
    assert len(lines) == 10 and all(line.count("(baseline)") == 1 for line in lines)
    assert (out / "sets" / "multi-needle" / "questions.jsonl").is_file()
    assert bench.main(["--data", str(tmp_path / "nope")]) == 2
    assert "data dir" in capsys.readouterr().err


def _run_dir(path: Path, rows: list[dict], preds: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "per_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds), encoding="utf-8")
    return path


def test_self_route_composition_by_hand(bench, tmp_path: Path) -> None:
    read = [{"text": "The tower was finished in 1889 by Gustave Eiffel."}]
    rag = _run_dir(tmp_path / "rag", [
        {"id": "q1", "f1": 1.0, "reader_tokens": 100},  # grounded and right
        {"id": "q2", "f1": 0.0, "reader_tokens": 100},  # made up and wrong
        {"id": "q3", "f1": 0.5, "reader_tokens": 100},  # half grounded
    ], [
        {"id": "q1", "answer": "1889", "citations": read},
        {"id": "q2", "answer": "Paris", "citations": read},
        {"id": "q3", "answer": "Gustave Zorb", "citations": read},
    ])
    base = _run_dir(tmp_path / "long", [{"id": q, "f1": f, "reader_tokens": 1000} for q, f in (("q1", 0.0), ("q2", 1.0), ("q3", 0.0))], [])
    Row = bench.Row
    r = Row("s", "rag", "m", False, rag, {}, {})
    b = Row("s", "long", "m", True, base, {}, {})
    strict = bench.self_route(r, b, 1.0)  # q2 and q3 fall back
    assert strict["fallback_rate"] == pytest.approx(2 / 3)
    assert strict["f1"] == pytest.approx((1 + 1 + 0) / 3) and strict["reader_tokens_mean"] == pytest.approx((100 + 1100 + 1100) / 3)
    assert strict["rag_f1_kept"] == 1.0 and strict["rag_f1_sent"] == 0.25 and strict["long_f1_sent"] == 0.5
    half = bench.self_route(r, b, 0.5)  # only q2 (support 0) falls back
    assert half["fallback_rate"] == pytest.approx(1 / 3) and half["f1"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert half["delta_vs_rag"][0] == pytest.approx(1 / 3) and half["delta_vs_long"][0] == pytest.approx(2.5 / 3 - 1 / 3)
    text, data = bench.route_table([r, b], [1.0, 0.5])
    assert len(data) == 2 and text.count("| rag | m |") == 2


def test_screen_packs_passages_like_the_reader(bench) -> None:
    count = lambda t: len(t.split())  # noqa: E731
    texts = ["a b c d e f g h i j", "k l m n o p q r s t", "u v w x y z"]
    shown, spent = bench.pack_passages(texts, count, 100)
    assert shown == texts and spent == 11 + 11 + 7  # "[n]" labels count
    shown, spent = bench.pack_passages(texts, count, 28)  # the third (7 tokens) does not fit; 5 left are too few to cut
    assert shown == texts[:2] and spent == 22
    shown, spent = bench.pack_passages(["a b c d e f g h i j k l m n o p q r s t"], count, 12)
    assert len(shown) == 1 and shown[0].startswith("a b c") and len(shown[0]) < 39 and spent == 12
    cfg = {"name": "x", "stages": [{"key": "retriever.hybrid", "params": {"top_k": 5, "candidates": 10}},
                                   {"key": "reorder.hard_negative"}, {"key": "reader.hf", "params": {}}]}
    assert bench.screen_config(cfg, 20)["stages"] == [{"key": "retriever.hybrid", "params": {"top_k": 20, "candidates": 20}}]


def test_screen_scores_retrieval_levers_without_a_reader(bench, tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = _data(tmp_path)
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, size in (("small", 16), ("large", 64)):
        (configs / f"{name}.yaml").write_text(
            f"name: {name}\nchunker: {{kind: tokens, size: {size}, overlap: 4}}\nstages:\n"
            "  - {key: retriever.bm25, params: {top_k: 2}}\n  - {key: reorder.hard_negative, params: {}}\n"
            "  - {key: reader.echo, params: {words: 8}}\n", encoding="utf-8")
    (configs / "long.yaml").write_text("name: long\nchunker: {kind: whole}\nstages:\n  - {key: reader.echo}\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = bench.main(["--data", str(data), "--out", str(out), "--sets", "squad-article", "--questions", "8", "--screen",
                     "--budgets", "8", "400", "--screen-top-k", "3", "--screen-tokenizer", str(tiny_lm_dir),
                     "--configs", *(str(configs / f"{n}.yaml") for n in ("small", "large", "long"))])
    assert rc == 0
    rows = json.loads((out / "screen.json").read_text())
    assert [r["config"] for r in rows] == ["small", "large"]  # the long-context config has nothing to screen
    for r in rows:
        assert r["n"] == 8 and r["top_k"] == 3
        budget = r["recall_at_budget"]
        # a larger budget never shows less; the 8-token budget shows (almost) nothing
        assert budget["8"] <= budget["400"] <= r["in_top_k"] and r["in_first"] <= r["in_top_k"]
        assert r["tokens_at_budget"]["8"] <= 8 < r["tokens_at_budget"]["400"] <= 400
    # the river answers sit in one sentence of each paragraph: a top-3 of whole paragraphs finds them all
    assert rows[1]["in_top_k"] == 1.0
    assert "ans. in passage 1" in (out / "screen.md").read_text()
    assert bench.main(["--data", str(data), "--out", str(out), "--sets", "squad-article", "--screen",
                       "--screen-tokenizer", str(tmp_path / "nope"), "--configs", str(configs / "small.yaml")]) == 2
