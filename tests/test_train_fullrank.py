"""Tests for the full-listwise fine-tuning recipe: weights, loss, data labels, a few steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from longread.train.fullrank import (
    IGNORE_INDEX,
    RankExample,
    containment_order,
    encode_example,
    importance_weights,
    load_examples_jsonl,
    main,
    rank_weight,
    train,
    weighted_nll,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_rank_weight_values() -> None:
    assert rank_weight(1) == pytest.approx(2.0)
    assert rank_weight(3) == pytest.approx(1.5)
    assert rank_weight(2) == pytest.approx(1 + 1 / math.log2(3))
    with pytest.raises(ValueError, match="got 0"):
        rank_weight(0)


def test_importance_weights_follow_the_ranking() -> None:
    toks = ["[", "3", "]", " >", " [", "1", "]", " >", " [", "2", "]", "<|im_end|>", "\n"]
    w1, w2, w3 = rank_weight(1), rank_weight(2), rank_weight(3)
    assert importance_weights(toks) == pytest.approx([w1, w1, w1, 1, w2, w2, w2, 1, w3, w3, w3, w3, w3])
    # A tokenizer that merges "] >" still counts one separator per ">".
    assert importance_weights(["[", "2", "] >", " [", "1", "]"]) == pytest.approx([w1, w1, 1, w2, w2, w2])


def test_weighted_nll_equals_hand_computation() -> None:
    # Batch of 1, 4 positions, vocab 3. Positions 0-1 are prompt, 2-3 answer.
    rows = [[0.0, 1.0, 2.0], [1.0, 0.5, -1.0], [2.0, 0.0, 0.0], [0.3, 0.3, 0.3]]
    logits = torch.tensor([rows])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2]])
    weights = torch.tensor([[0.0, 0.0, 2.0, 1.0]])

    def nll(row: list[float], tok: int) -> float:
        return -(row[tok] - math.log(sum(math.exp(x) for x in row)))

    # Token at t is predicted from logits at t-1; mean over the 2 labelled tokens, not the weights.
    expected = (2.0 * nll(rows[1], 1) + 1.0 * nll(rows[2], 2)) / 2
    assert float(weighted_nll(logits, labels, weights)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no labelled tokens"):
        weighted_nll(logits, torch.full_like(labels, IGNORE_INDEX), weights)


def test_containment_order_is_full_permutation() -> None:
    ps = ["nothing here", "Paris is big", "the GOLD one", "paris, again", "x"]
    order = containment_order(ps, ["Paris"], gold=[False, False, True, False, False])
    assert order == [1, 3, 2, 0, 4]
    assert containment_order(ps, []) == [0, 1, 2, 3, 4]


def test_rank_example_validation() -> None:
    with pytest.raises(ValueError, match="permutation"):
        RankExample("q", ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="at least 2"):
        RankExample("q", ["a"], [0])


def _tok_model(tiny_lm_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    return tok, model


def _examples() -> list[RankExample]:
    return [
        RankExample("capital of France", ["Berlin is in Germany.", "Paris is the capital of France.", "Ice melts."], [1, 0, 2]),
        RankExample("who walked on the Moon", ["Neil Armstrong walked on the Moon.", "Water boils.", "Rome."], [0, 2, 1]),
    ]


def test_encoded_weights_align_with_identifiers(tiny_lm_dir: Path) -> None:
    tok, _ = _tok_model(tiny_lm_dir)
    enc = encode_example(tok, _examples()[0], word_budget=20)
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["weights"])
    ans = [(t, w) for t, lab, w in zip(enc["input_ids"], enc["labels"], enc["weights"]) if lab != IGNORE_INDEX]
    text = "".join(tok.decode([t]) for t, _ in ans)
    assert text.startswith("[2] > [1] > [3]")
    # Every token carrying a digit gets the weight of that identifier's rank.
    digits = {"2": 1, "1": 2, "3": 3}
    for t, w in ans:
        s = tok.decode([t])
        if s.strip().isdigit():
            assert w == pytest.approx(rank_weight(digits[s.strip()]))
        elif s.strip() == ">":
            assert w == 1.0
    assert sum(1 for t, w in ans if tok.decode([t]).strip() == ">") == 2


def test_few_steps_lower_the_loss(tiny_lm_dir: Path) -> None:
    tok, model = _tok_model(tiny_lm_dir)
    exs = _examples()
    losses = train(model, tok, exs, steps=6, lr=3e-3, batch_size=1, word_budget=5, seed=0)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_train_rejects_bad_arguments(tiny_lm_dir: Path) -> None:
    tok, model = _tok_model(tiny_lm_dir)
    with pytest.raises(ValueError, match="no training examples"):
        train(model, tok, [], steps=1)
    with pytest.raises(ValueError, match="steps=0"):
        train(model, tok, _examples(), steps=0)


def test_cli_trains_and_saves_safetensors(tiny_lm_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"query": e.query, "passages": e.passages, "order": e.order}) + "\n" for e in _examples()))
    out = tmp_path / "model"
    from longread.cli import main as cli_main

    # Through the real `longread train fullrank` command line.
    argv = ["train", "fullrank", "--model", str(tiny_lm_dir), "--train-file", str(f), "--out", str(out), "--steps", "2"]
    assert cli_main(argv) == 0
    assert (out / "model.safetensors").is_file()
    info = json.loads((out / "longread_train.json").read_text())
    assert info["examples"] == 2 and math.isfinite(info["last_loss"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "passages": ["a", "b"], "order": [0, 5]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_examples_jsonl(bad)
    with pytest.raises(ValueError, match="--steps must be > 0, got 0"):
        main(["--model", str(tiny_lm_dir), "--train-file", str(f), "--out", str(out), "--steps", "0"])


@pytest.mark.skipif(not DATA.is_dir(), reason="shared data not present")
def test_build_examples_from_shared_data() -> None:
    from longread.train.fullrank import build_examples

    exs = build_examples("hotpotqa", DATA, max_queries=20, candidates=10)
    assert len(exs) == 20
    assert all(sorted(e.order) == list(range(len(e.passages))) for e in exs)
    with pytest.raises(ValueError, match="valid sources"):
        build_examples("msmarco", DATA, max_queries=1, candidates=2)
