"""CoLoR training recipe: preference-data rules, the ORPO + length loss, training on the tiny LM, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longread.compressors.color import ColorCompressor
from longread.stage import RunContext
from longread.train.color import (
    Candidate,
    PreferenceExample,
    PreferencePair,
    TrainConfig,
    answer_survives,
    bm25_first,
    build_pairs,
    label_candidates,
    load_pairs,
    main,
    make_pair,
    orpo_length_loss,
    pair_loss,
    prepare_model,
    save_model,
    squad_examples,
    train_orpo,
)
from longread.types import Chunk, Passage, QAState, Question


def C(text: str, ok: bool, src: str = "") -> Candidate:
    return Candidate(text=text, source=src or text, success=ok)


# --- data construction rules -------------------------------------------------------------------


def test_chosen_is_shortest_success_rejected_is_longest_failure():
    cands = [C("medium success", True), C("ok", True), C("a long failed one", False),
             C("the longest failed compression", False), C("short", False), C("a very long success text", True)]
    pair, reason = make_pair("e", "P", cands)
    assert reason == "pair"
    assert (pair.chosen, pair.rejected) == ("ok", "the longest failed compression")
    # The chosen may be longer than the rejected: success decides first, length second.
    pair, _ = make_pair("e", "P", [C("long success here", True), C("no", False)])
    assert (pair.chosen, pair.rejected) == ("long success here", "no")
    # Ties keep the earlier candidate.
    pair, _ = make_pair("e", "P", [C("aa", True, "first"), C("bb", True, "second"), C("xx", False)])
    assert pair.chosen_source == "first"


def test_dropped_cases_are_counted():
    exs = [PreferenceExample(id=str(i), question="q", passage="p") for i in range(4)]
    cands = [
        [C("a", True), C("bbb", False)],  # pair
        [C("a", False), C("bb", False)],  # no success
        [C("a", True), C("bb", True)],  # no failure
        [],  # nothing usable at all: no success
    ]
    pairs, counts = build_pairs(exs, cands)
    assert [p.id for p in pairs] == ["0"]
    assert counts == {"examples": 4, "pairs": 1, "no_success": 2, "no_failure": 1}
    # The repo's "hard" variant keeps all-success passages as shortest vs longest success.
    pairs, counts = build_pairs(exs, cands, keep_all_success=True)
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [("0", "a", "bbb"), ("2", "a", "bb")]
    assert counts["no_failure"] == 0 and counts["pairs"] == 2
    with pytest.raises(ValueError, match="2 candidate lists for 4 examples"):
        build_pairs(exs, cands[:2])


def test_labelling_rules():
    ex = PreferenceExample(
        id="e", question="When was Zorbatown founded?",
        passage="Zorbatown, the capital of Freedonia, was founded in 1742 by traders.",
        distractors=["Paris is the capital of France.", "Freedonia has many rivers and a capital."],
        answers=["1742"],
    )
    texts = [("Zorbatown was founded in 1742.", "good"),  # retrieved and holds the answer
             ("Zorbatown was founded long ago.", "no-answer"),  # retrieved, answer lost
             ("A capital city with rivers, 1742.", "not-retrieved"),  # answer kept, not ranked first
             ("   ", "empty")]
    by = {r: {c.source: c.success for c in label_candidates(ex, texts, r)} for r in ("bm25", "answer", "both")}
    assert by["both"] == {"good": True, "no-answer": False, "not-retrieved": False}
    assert by["bm25"] == {"good": True, "no-answer": True, "not-retrieved": False}
    assert by["answer"] == {"good": True, "no-answer": False, "not-retrieved": True}
    with pytest.raises(ValueError, match="rule must be one of bm25, answer, both, got 'llm'"):
        label_candidates(ex, texts, "llm")


def test_answer_and_bm25_helpers():
    assert answer_survives("It was The Beatles' album.", ["the beatles"])
    assert not answer_survives("In 17420 it rained.", ["1742"])  # word-aligned only
    assert not answer_survives("anything", [""])
    assert bm25_first("capital of France", "Paris is the capital of France.", ["Berlin is in Germany."])
    assert not bm25_first("capital of France", "Berlin is in Germany.", ["Paris is the capital of France."])
    assert not bm25_first("capital of France", "", [])
    with pytest.raises(ValueError, match="no searchable words"):
        bm25_first("the of", "x", [])


# --- loss --------------------------------------------------------------------------------------


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_orpo_length_loss_hand_computed():
    c = [-0.5, -1.0]
    r = [-1.2, -0.8]
    lc, lr = [5, 10], [30, 12]
    nll, beta, coef = 0.7, 2.5, 0.1
    terms = []
    for ci, ri, a, b in zip(c, r, lc, lr):
        odds_c = math.exp(ci) / (1 - math.exp(ci))
        odds_r = math.exp(ri) / (1 - math.exp(ri))
        w = max(coef * (b - a), 1.0)  # pair 1: 2.5; pair 2: 0.2 -> 1
        terms.append(math.log(_sig(w * math.log(odds_c / odds_r))))
    expected = nll - beta * sum(terms) / len(terms)
    loss, m = orpo_length_loss(torch.tensor(c), torch.tensor(r), torch.tensor(nll), torch.tensor(lc),
                               torch.tensor(lr), beta=beta, length_coef=coef)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["length_weight"] == pytest.approx((2.5 + 1.0) / 2)
    # length_coef = 0 is plain ORPO (weights 1).
    plain, _ = orpo_length_loss(torch.tensor(c), torch.tensor(r), torch.tensor(nll), torch.tensor(lc),
                                torch.tensor(lr), beta=beta, length_coef=0.0)
    odds = [math.log((math.exp(a) / (1 - math.exp(a))) / (math.exp(b) / (1 - math.exp(b)))) for a, b in zip(c, r)]
    assert plain.item() == pytest.approx(nll - beta * sum(math.log(_sig(o)) for o in odds) / 2, rel=1e-5)
    # stable near log-prob 0 (probability ~1)
    near, _ = orpo_length_loss(torch.tensor([-1e-9]), torch.tensor([-3.0]), torch.tensor(0.0),
                               torch.tensor([1]), torch.tensor([1]))
    assert torch.isfinite(near)


PAIRS = [
    PreferencePair("a", "The capital of Freedonia is Zorbatown. It was founded in 1742 by traders who crossed the river.",
                   "Zorbatown, founded 1742.", "The capital of Freedonia is Zorbatown, which traders founded long ago "
                   "after they crossed the river, as every story says."),
    PreferencePair("b", "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level. Ice melts at 0 degrees.",
                   "Water boils at 100 C.", "Water is a liquid and it can boil or melt depending on many things."),
]


def test_a_few_lora_steps_lower_the_loss_and_the_adapter_loads(hub, tiny_lm_dir, tmp_path):
    pytest.importorskip("peft")
    tok = hub.tokenizer(str(tiny_lm_dir))
    cfg = TrainConfig(epochs=4, batch_size=2, lr=5e-3, lora_r=4, seed=0)
    model = prepare_model(tiny_lm_dir, cfg)
    with torch.no_grad():
        before, _ = pair_loss(model, tok, PAIRS, beta=cfg.beta, length_coef=cfg.length_coef)
    log = train_orpo(model, tok, PAIRS, cfg)
    assert len(log) == 4 and all(math.isfinite(s["loss"]) for s in log)
    with torch.no_grad():
        after, m = pair_loss(model, tok, PAIRS, beta=cfg.beta, length_coef=cfg.length_coef)
    assert after.item() < before.item() - 0.05
    save_model(model, tok, tmp_path / "ad", str(tiny_lm_dir), full=False)
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    stage = ColorCompressor({"model": str(tiny_lm_dir), "adapter": str(tmp_path / "ad"), "min_chars": 0,
                             "max_new_tokens": 4})
    stage.setup(RunContext(models=hub))
    st = QAState(question=Question(id="q", question="x?"),
                 passages=[Passage(chunk=Chunk(id="c", doc_id="d", text=PAIRS[0].passage, start=0, end=90), score=1)])
    assert stage([st])[0].usage_for("compressor.color").calls == 1


def test_train_config_and_empty_pairs_errors(hub, tiny_lm_dir):
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="no preference pairs"):
        train_orpo(torch.nn.Linear(1, 1), hub.tokenizer(str(tiny_lm_dir)), [], TrainConfig())


# --- data loading and command line ---------------------------------------------------------------


def test_cli_builds_data_then_trains_from_pairs(tiny_lm_dir, tmp_path):
    ex = tmp_path / "ex.jsonl"
    ex.write_text("".join(json.dumps({"id": f"e{i}", "question": "When was Zorbatown founded?", "passage": p.passage,
                                      "distractors": ["Paris is the capital of France."], "answers": ["1742"]}) + "\n"
                          for i, p in enumerate(PAIRS)))
    out = tmp_path / "run"
    assert main(["--examples", str(ex), "--model", str(tiny_lm_dir), "--out", str(out), "--temperatures", "0,1",
                 "--samples", "1", "--gen-max-new-tokens", "8", "--data-only", "--cache-dir", str(tmp_path / "c")]) == 0
    log = json.loads((out / "train_log.json").read_text())
    counts = log["data_counts"]
    assert counts["examples"] == 2 and counts["pairs"] + counts["no_success"] + counts["no_failure"] == 2
    cands = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert all(len(c["candidates"]) <= 2 for c in cands)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p.__dict__) + "\n" for p in PAIRS))
    assert load_pairs(pairs_file) == PAIRS
    out2 = tmp_path / "run2"
    assert main(["--pairs", str(pairs_file), "--model", str(tiny_lm_dir), "--out", str(out2), "--max-steps", "2",
                 "--full", "--cache-dir", str(tmp_path / "c")]) == 0
    assert (out2 / "model.safetensors").is_file() and len(json.loads((out2 / "train_log.json").read_text())["steps"]) == 2
    with pytest.raises(ValueError, match="exactly one of --squad, --examples or --pairs"):
        main(["--out", str(tmp_path / "x")])


def test_squad_examples(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": f"Paragraph {i} text.", "qas": [{"id": f"q{i}", "question": f"What about {i}?",
                                                    "answers": [{"text": f"{i}", "answer_start": 10}]}]}
        for i in range(4)]}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(squad))
    exs = squad_examples(path, limit=3, distractors=2, seed=1)
    assert len(exs) == 3
    for e in exs:
        i = e.id[1:]
        assert e.passage == f"Paragraph {i} text." and e.answers == [i]
        assert len(e.distractors) == 2 and e.passage not in e.distractors
    with pytest.raises(FileNotFoundError, match="does not exist"):
        squad_examples(tmp_path / "none.json", limit=1)
    with pytest.raises(ValueError, match="limit must be > 0, got 0"):
        squad_examples(path, limit=0)
