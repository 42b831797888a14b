"""The trained page scorer of reader.retrolm and its recipe, on the tiny in-process LM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longread.cli import main as cli_main
from longread.pipelines.store import CorpusStore
from longread.readers.retrolm import RetroLMParams, RetroLMReader
from longread.readers.retrolm.scoring import query_vectors, training_free_scores
from longread.readers.retrolm.trained import ScorerSpec, info_nce, load_scorer, make_scorer, save_scorer, score_features
from longread.stage import RunContext
from longread.testing import TINY_TEXT
from longread.train.retrolm import (
    answer_page,
    build_article,
    document_loss,
    extract_examples,
    rank_metrics,
    train_scorer,
)
from longread.types import Document, QAState, Question

LINES = [ln.strip() for ln in TINY_TEXT.splitlines() if ln.strip()]
# Facts the questions ask about, one per paragraph, each with its answer.
FACTS = [
    ("The capital of Freedonia is Zorbatown.", "What is the capital of Freedonia?", "Zorbatown"),
    ("Neil Armstrong walked on the Moon in 1969.", "Who walked on the Moon?", "Neil Armstrong"),
    ("The river Nile is about 6,650 km long.", "How long is the Nile?", "6,650 km"),
    ("Shakespeare wrote Hamlet and Macbeth.", "Who wrote Hamlet?", "Shakespeare"),
    ("Water boils at 100 degrees Celsius.", "At what temperature does water boil?", "100 degrees"),
    ("Daniel moved to the bathroom.", "Where did Daniel move?", "the bathroom"),
]


def _squad(n_articles: int, paras: int = 4) -> dict:
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(paras):
            fact, q, ans = FACTS[(a + p) % len(FACTS)]
            filler = " ".join(LINES[(a * 3 + p * 2 + j) % len(LINES)] for j in range(2))
            ctx = f"{filler} {fact} {LINES[(a + p) % len(LINES)]}"
            paragraphs.append({"context": ctx, "qas": [{"id": f"{a}-{p}", "question": q,
                                                        "answers": [{"text": ans, "answer_start": ctx.index(ans)}]}]})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": data}


def _reader(tiny_lm_dir: Path, hub, text: str = "x", **params) -> RetroLMReader:
    base = {"model": str(tiny_lm_dir), "page_size": 16, "budget_tokens": 64, "local_pages": 2, "max_new_tokens": 2,
            "cache": False}
    base.update(params)
    r = RetroLMReader(base)
    r.setup(RunContext(models=hub, store=CorpusStore([Document(id="d", text=text)], [])))
    return r


@pytest.fixture(scope="module")
def tiny_examples(hub, tiny_lm_dir):
    r = _reader(tiny_lm_dir, hub)
    raw = _squad(4)["data"]
    exs = [extract_examples(r, build_article(a, r.kv.tokenizer, max_tokens=400, questions=4))[0] for a in raw]
    return r, exs


def _spec(r: RetroLMReader, rank: int = 2, **kw) -> ScorerSpec:
    n_layers, heads, kv, d = r.kv.layout
    args = dict(model=r.params.model, page_size=r.params.page_size, layers=list(range(n_layers)), n_layers=n_layers,
                heads=heads, kv_heads=kv, head_dim=d, rank=rank)
    args.update(kw)
    return ScorerSpec(**args)


# ------------------------------------------------------------------------- loss
def test_info_nce_matches_a_hand_computed_case() -> None:
    scores = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    pos = torch.tensor([0, 1])
    want0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1)))
    want1 = -math.log(math.exp(1.5) / (math.exp(0.5) + math.exp(1.5) + math.exp(-1)))
    assert float(info_nce(scores, pos)) == pytest.approx((want0 + want1) / 2, abs=1e-6)
    # Pages left out of the softmax do not count; the scale multiplies the scores.
    valid = torch.tensor([[True, True, False], [True, True, True]])
    w0 = -math.log(math.exp(4) / (math.exp(4) + 1))
    w1 = -math.log(math.exp(3) / (math.exp(1) + math.exp(3) + math.exp(-2)))
    assert float(info_nce(scores, pos, valid, scale=2.0)) == pytest.approx((w0 + w1) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="positive page must be among the valid"):
        info_nce(scores, pos, torch.tensor([[False, True, True]] * 2))
    with pytest.raises(ValueError, match=r"\[B, P\]"):
        info_nce(scores[0], pos)


def test_answer_page_and_article_cut() -> None:
    assert answer_page([(0, 10), (10, 20), (21, 30)], 15) == 1
    assert answer_page([(0, 10), (10, 20), (21, 30)], 20) == 1  # the gap between pages: the page before
    with pytest.raises(ValueError, match="before the first page"):
        answer_page([(5, 10)], 2)

    class WordTok:  # one token per whitespace word, with char offsets
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            import re

            return {"offset_mapping": [m.span() for m in re.finditer(r"\S+", text)]}

    raw = _squad(1, paras=4)["data"][0]
    whole = build_article(raw, WordTok(), max_tokens=10_000, questions=10)
    assert len(whole.questions) == 4
    n_words_2 = len(" ".join(p["context"] for p in raw["paragraphs"][:2]).split())
    cut = build_article(raw, WordTok(), max_tokens=n_words_2 + 3, questions=10)  # 2 paragraphs and a bit
    assert cut.text == "\n\n".join(p["context"] for p in raw["paragraphs"][:2])
    assert len(cut.questions) == 2
    for q, a, (p0, p1) in cut.questions:
        ans = next(f[2] for f in FACTS if f[1] == q)
        assert cut.text[a : a + len(ans)] == ans and p0 <= a < p1
    assert len(build_article(raw, WordTok(), max_tokens=10_000, questions=2).questions) == 2


# --------------------------------------------------------------- features + training
def test_training_free_scores_from_features_equal_the_readers(hub, tiny_lm_dir, tiny_examples) -> None:
    r, _ = tiny_examples
    text = " ".join(LINES[:12])
    doc = r.read(text)
    suffix = r.prompt.suffix_ids("What is the capital of Freedonia?")
    feats = r.page_features(doc, suffix)
    assert feats["quest"].shape == (2, 4, doc.n_pages) and feats["s"].shape == (2, doc.n_pages, 3 * 2 * 16)
    quest = r.score_pages(doc, suffix)
    assert torch.allclose(quest, training_free_scores(feats, "quest") / doc.n_pages, atol=1e-6)
    assert float(quest.sum()) == pytest.approx(1.0, abs=1e-5)
    mk = RetroLMReader({**r.params.model_dump(exclude_unset=True), "scorer": "mean_key"})
    mk.setup(RunContext(models=hub))
    assert torch.allclose(mk.score_pages(mk.read(text), suffix), training_free_scores(feats, "mean_key") / doc.n_pages, atol=1e-6)
    assert not torch.allclose(quest, mk.score_pages(mk.read(text), suffix))
    # The fresh scorer ranks pages exactly as quest does.
    scorer = make_scorer(_spec(r))
    assert torch.allclose(score_features(scorer, feats), training_free_scores(feats, "quest"), atol=1e-6)


def test_a_few_steps_lower_the_loss(tiny_examples) -> None:
    r, exs = tiny_examples
    assert all(ex.n_questions >= 2 for ex in exs)
    # Positives are the pages holding the answers; the question's own paragraph is out of the softmax.
    for ex in exs:
        for qi in range(ex.n_questions):
            assert bool(ex.valid[qi, ex.positive[qi]]) and not bool(ex.valid[qi].all())
    scorer = make_scorer(_spec(r, rank=4))
    with torch.no_grad():
        before = [float(document_loss(scorer, ex)) for ex in exs]
    hist = train_scorer(scorer, exs[:3], steps=30, lr=0.05, eval_every=5)
    with torch.no_grad():
        after = [float(document_loss(scorer, ex)) for ex in exs]
    assert sum(after[:3]) < sum(before[:3]) - 0.5, (before, after)
    assert hist["steps"] == 30 == hist["best_step"] and len(hist["curve"]) == 6 and hist["seconds_per_step"] > 0
    assert not any(p.requires_grad for p in scorer.values())
    # With validation articles the state of the lowest validation loss is kept (the start counts).
    scorer2 = make_scorer(_spec(r, rank=4))
    hist2 = train_scorer(scorer2, exs[:3], exs[3:], steps=30, lr=0.05, eval_every=5)
    with torch.no_grad():
        val_end = float(document_loss(scorer2, exs[3]))
    val_seen = [before[3]] + [pt["val_loss"] for pt in hist2["curve"]]
    assert val_end == pytest.approx(min(val_seen), abs=1e-5)
    assert hist2["best_step"] == [0, 5, 10, 15, 20, 25, 30][val_seen.index(min(val_seen))]
    m = rank_metrics(exs, lambda ex: score_features(scorer, ex.features()), k=4, select=r.select_pages)
    assert m["questions"] == sum(ex.n_questions for ex in exs) and 1 <= m["mean_rank"] <= m["pages_mean"]
    assert 0 <= m["recall@1"] <= m["recall@4"] <= 1 and 0 <= m["selected"] <= 1


def test_rank_metrics_by_hand(tiny_examples) -> None:
    _, exs = tiny_examples
    ex = exs[0]
    P = len(ex.lengths)
    # The answer page scores highest for question 0, lowest for the others.
    scores = torch.zeros(ex.n_questions, P)
    scores[0, ex.positive[0]] = 1.0
    for qi in range(1, ex.n_questions):
        scores[qi] = 1.0
        scores[qi, ex.positive[qi]] = -1.0
    m = rank_metrics([ex], lambda _: scores, k=4)
    n = ex.n_questions
    assert m["recall@1"] == pytest.approx(1 / n) and m["mean_rank"] == pytest.approx((1 + (n - 1) * P) / n)


# --------------------------------------------------------------------- the file
def test_scorer_round_trips_and_mismatches_are_refused(tiny_examples, tmp_path: Path) -> None:
    r, _ = tiny_examples
    spec = _spec(r, rank=3, layers=[1])
    scorer = make_scorer(spec, seed=1)
    with torch.no_grad():
        for p in scorer.values():
            p.add_(torch.randn_like(p))
    path = tmp_path / "s.safetensors"
    save_scorer(scorer, spec, path)
    got, gspec, meta = load_scorer(path, model=r.params.model, page_size=16, layout=tuple(r.kv.layout))
    assert set(got) == set(scorer) and all(torch.equal(got[k], scorer[k]) for k in scorer)
    assert gspec.layers == [1] and gspec.rank == 3 and meta["format"] == "longread-retrolm-scorer-v1"
    with pytest.raises(ValueError, match="trained for model"):
        load_scorer(path, model="other-model")
    with pytest.raises(ValueError, match="page_size=16, but the reader uses page_size=32"):
        load_scorer(path, page_size=32)
    with pytest.raises(ValueError, match=r"\(layers, heads, kv_heads, head_dim\)"):
        load_scorer(path, layout=(3, 4, 2, 16))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scorer(tmp_path / "nope.safetensors")
    state, meta = load_file(str(path)), json.loads(json.dumps(meta))
    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in state.items() if k != "v"} | {"w": torch.zeros(2)}, str(bad), metadata=meta)
    with pytest.raises(ValueError, match=r"missing tensors \['v'\], unexpected tensors \['w'\]"):
        load_scorer(bad)
    save_file({**state, "u": torch.zeros(1, 64, 2)}, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="wrong shape"):
        load_scorer(bad)
    save_file(state, str(bad), metadata={**meta, "format": "something-else"})
    with pytest.raises(ValueError, match="not a retrolm page scorer"):
        load_scorer(bad)
    bad.write_text("not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_scorer(bad)


def test_params_refuse_missing_or_unknown_scorers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        RetroLMParams(scorer=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"one of \['quest', 'mean_key'\]"):
        RetroLMParams(scorer="bm25")
    f = tmp_path / "s.safetensors"
    f.write_bytes(b"x")
    assert RetroLMParams(scorer=str(f)).trained_scorer == f
    assert RetroLMParams().trained_scorer is None
    with pytest.raises(ValueError, match="score_layers must be unset with a trained scorer"):
        RetroLMParams(scorer=str(f), score_layers=[0])
    with pytest.raises(ValueError, match=r"no trained retrolm scorer ships for model='qwen2.5-0.5b-instruct' page_size=128 "
                       r"\(shipped: smollm2-135m-instruct page_size=128\)"):
        RetroLMParams(scorer="trained")
    with pytest.raises(ValueError, match="page_size=64"):
        RetroLMParams(scorer="trained", model="smollm2-135m-instruct", page_size=64)


def test_the_shipped_scorer_loads_for_smollm2_and_has_its_sidecar() -> None:
    path = RetroLMParams(scorer="trained", model="smollm2-135m-instruct").trained_scorer
    scorer, spec, meta = load_scorer(path, model="smollm2-135m-instruct", page_size=128, layout=(30, 9, 3, 64))
    assert path.stat().st_size < 2_000_000 and spec.layers == list(range(30))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["scorer"] == path.name and side["model"] == "smollm2-135m-instruct" and side["page_size"] == 128
    after = side["heldout_after"]
    # Shipped because it beat the training-free scorers on held-out articles.
    assert after["trained"]["mean_rank"] < after["quest"]["mean_rank"] and after["trained"]["selected"] > after["quest"]["selected"]
    assert not set(side["data"]["heldout_articles"]) & set(side["data"]["train_articles"] + side["data"]["val_articles"])


def test_reader_refuses_a_scorer_of_another_model_or_page_size(hub, tiny_lm_dir, tiny_examples, tmp_path: Path) -> None:
    r, _ = tiny_examples
    for kw, needle in [({"model": "smollm2-135m-instruct"}, "trained for model"), ({"page_size": 32}, "page_size=32")]:
        path = tmp_path / f"{needle[:5]}.safetensors"
        spec = _spec(r, rank=0, **kw)
        save_scorer(make_scorer(spec), spec, path)
        with pytest.raises(ValueError, match=needle):
            _reader(tiny_lm_dir, hub, scorer=str(path))


def test_reader_selects_pages_through_a_trained_scorer(hub, tiny_lm_dir, tiny_examples, tmp_path: Path) -> None:
    r, _ = tiny_examples
    text = " ".join(LINES[:14])
    question = "Where is the football?"
    # Budget for the recent page and one scored page only.
    kw = {"budget_tokens": 32, "recent_pages": 1, "follow_pages": 0}
    quest = _reader(tiny_lm_dir, hub, text, **kw)
    doc = quest.read(text)
    suffix = quest.prompt.suffix_ids(question)
    base = quest.score_pages(doc, suffix)[:-1]  # pages other than the recent one
    assert doc.n_pages > 4 and int(base.argmax()) != int(base.argmin())
    # Hand-set weights: minus quest, so the page quest likes least must win.
    spec = _spec(quest, rank=0)
    scorer = make_scorer(spec)
    with torch.no_grad():
        scorer["head_quest"].neg_()
    path = tmp_path / "neg.safetensors"
    save_scorer(scorer, spec, path)
    neg = _reader(tiny_lm_dir, hub, text, scorer=str(path), **kw)
    ask = lambda reader: reader([QAState(question=Question(id="q", question=question, doc_ids=["d"]))])[0]  # noqa: E731
    last = doc.n_pages - 1
    assert ask(quest).trace["retrolm_pages"] == sorted([int(base.argmax()), last])
    assert ask(neg).trace["retrolm_pages"] == sorted([int(base.argmin()), last])
    # A bilinear scorer: one query coordinate times one summary coordinate, checked by hand.
    spec = _spec(quest, rank=1, layers=[1])
    scorer = make_scorer(spec)
    with torch.no_grad():
        scorer["head_quest"].zero_()
        scorer["u"].zero_()
        scorer["u"][0, 5, 0] = 1.0
        scorer["v"][0, 7, 0] = 1.0
    path = tmp_path / "bil.safetensors"
    save_scorer(scorer, spec, path)
    bil = _reader(tiny_lm_dir, hub, text, scorer=str(path), **kw)
    q = query_vectors(bil.kv, doc, suffix, [1])[1].mean(dim=1).reshape(-1)
    q = q / q.pow(2).mean().sqrt()
    s = torch.cat([doc.tensor(f"summary.{k}")[1] for k in ("mean", "min", "max")], dim=-1)  # [kvH, P, 3d]
    s = s.transpose(0, 1).reshape(doc.n_pages, -1)
    s = s - s.mean(0)
    s = s / s.pow(2).mean().sqrt()
    want = q[5] * s[:, 7]
    assert torch.allclose(bil.score_pages(doc, suffix), want, atol=1e-5)
    assert ask(bil).trace["retrolm_pages"] == sorted([int(want[:-1].argmax()), last])


# ------------------------------------------------------------------------ recipe
def test_cli_help_lists_the_recipe_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "retrolm", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--data" in out and "--out" in out and "--articles" in out and "InfoNCE" in out


def test_recipe_end_to_end_on_the_tiny_model(tiny_lm_dir, tmp_path: Path) -> None:
    (tmp_path / "data" / "squad").mkdir(parents=True)
    (tmp_path / "data" / "squad" / "squad-dev-1.1.rebuilt.json").write_text(json.dumps(_squad(5)))
    out = tmp_path / "scorer.safetensors"
    feats = tmp_path / "feats.pt"
    args = ["train", "retrolm", "--data", str(tmp_path / "data"), "--out", str(out), "--model", str(tiny_lm_dir),
            "--page-size", "16", "--articles", "3", "--val-articles", "1", "--heldout", "2", "--questions", "4",
            "--max-tokens", "300", "--steps", "5", "--eval-every", "2", "--rank", "2", "--features", str(feats),
            "--cache-dir", str(tmp_path / "hub")]
    assert cli_main(args) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    d = side["data"]
    assert len(d["train_articles"]) == 2 and len(d["val_articles"]) == 1 and len(d["heldout_articles"]) == 2
    assert not set(d["heldout_articles"]) & set(d["train_articles"] + d["val_articles"])
    assert side["k"] == 2048 // 16 and side["steps"] == 5
    for key in ("quest", "mean_key", "trained"):
        assert side["heldout_after"][key]["questions"] == d["heldout_questions"] > 0
    # Before training the scorer is quest.
    assert side["heldout_before"]["trained"] == side["heldout_before"]["quest"]
    load_scorer(out, model=str(tiny_lm_dir), page_size=16)
    # A rerun reuses the features instead of prefilling again.
    assert cli_main(args) == 0 and feats.is_file()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--out", "x.bin"], "--out must end with .safetensors"),
        (["--articles", "9"], "has 5 articles"),
        (["--val-articles", "3"], "--val-articles must be in [0, --articles)"),
        (["--layers", "a,b"], "--layers must be comma-separated integers"),
    ],
)
def test_recipe_refuses_bad_arguments(tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "squad-dev-1.1.rebuilt.json").write_text(json.dumps(_squad(5)))
    args = ["train", "retrolm", "--data", str(tmp_path), "--out", str(tmp_path / "s.safetensors"),
            "--articles", "3", "--val-articles", "1", "--heldout", "2", "--model", "/nonexistent-model", *extra]
    assert cli_main(args) == 2
    assert needle in capsys.readouterr().err
    assert cli_main(["train", "retrolm", "--data", str(tmp_path / "none"), "--out", "s.safetensors"]) == 2
    assert "no SQuAD v1.1 dev file" in capsys.readouterr().err
