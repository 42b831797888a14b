"""Whole-document retrieval: fewest windows, score aggregation, and retriever.dense with long_docs/doc_aggregate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from longread.encoders.longdoc import aggregate_docs, max_by_owner, rank_chunks_or_docs, window_spans


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_encoder_dir))


def test_window_spans_fewest_and_covering(tokenizer) -> None:
    text = " ".join(f"word{i % 7} the cat" for i in range(60))
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    spans = window_spans(tokenizer, text, budget=50)
    assert len(spans) == -(-n // 50)  # ceil: the fewest windows that fit
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, nothing lost
    for s, e in spans:
        assert len(tokenizer(text[s:e], add_special_tokens=False)["input_ids"]) <= 50 + 2
    assert window_spans(tokenizer, "short text", budget=50) == [(0, 10)]


def test_aggregation_hand_case() -> None:
    chunk_scores = np.array([0.9, 0.1, 0.5, 0.6, 0.55, -np.inf])
    chunk_doc = np.array([0, 0, 1, 1, 1, 2])
    assert aggregate_docs(chunk_scores, chunk_doc, 3, "max").tolist() == [0.9, 0.6, -np.inf]
    assert np.allclose(aggregate_docs(chunk_scores, chunk_doc, 3, "sum_top_m", m=2)[:2], [1.0, 1.15])
    pos, sc = rank_chunks_or_docs(chunk_scores, chunk_doc, 3, k=5, how="sum_top_m", m=2)
    assert pos.tolist() == [3, 0] and np.allclose(sc, [1.15, 1.0])  # doc 1 wins, shown by its best chunk
    pos, sc = rank_chunks_or_docs(chunk_scores, chunk_doc, 3, k=2)
    assert pos.tolist() == [0, 3]
    assert max_by_owner(np.array([1.0, 3.0, 2.0]), np.array([1, 1, 0]), 3).tolist() == [2.0, 3.0, -np.inf]
    with pytest.raises(ValueError, match="aggregation must be"):
        aggregate_docs(chunk_scores, chunk_doc, 3, "mean")


def test_dense_whole_documents_with_windows(tmp_path: Path, tokenizer, hub) -> None:
    from longread.encoders.m2bert import M2BertConfig, M2BertForRetrieval, save_m2bert_dir
    from longread.pipelines.store import CorpusStore
    from longread.registry import get
    from longread.stage import RunContext
    from longread.types import Chunk, Document, QAState, Question

    torch.manual_seed(0)
    cfg = M2BertConfig.retrieval(64, vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 hyena_filter_order=8)
    enc_dir = save_m2bert_dir(M2BertForRetrieval(cfg), tmp_path / "m2-64", tokenizer)
    texts = {"a": "the cat sat on the mat " * 30, "b": "a dog barked at night", "c": "rain fell on the town " * 12}
    docs = [Document(id=k, text=v) for k, v in texts.items()]
    chunks = [Chunk(id=f"{k}#0", doc_id=k, text=v, start=0, end=len(v)) for k, v in texts.items()]  # chunker: whole
    store = CorpusStore(docs, chunks)
    ctx = RunContext(models=hub, index_dir=tmp_path / "index", store=store)
    cls = get("retriever.dense")
    stage = cls(cls.Params(encoder=str(enc_dir), long_docs="split", doc_aggregate="max", top_k=3, batch_size=4))
    for name, build in stage.indexes().items():
        out = tmp_path / "index" / name
        out.mkdir(parents=True)
        build(ctx, out)
        owner = np.load(out / "owner.npy")
    assert (owner == 0).sum() >= 3 and (owner == 1).sum() == 1  # the long doc became several windows
    stage.setup(ctx)
    [state] = stage([QAState(question=Question(id="q", question="where did the cat sit"))])
    assert sorted(p.chunk.doc_id for p in state.passages) == ["a", "b", "c"]  # one passage per document
    [scoped] = stage([QAState(question=Question(id="q2", question="cat", doc_ids=["c"]))])
    assert [p.chunk.doc_id for p in scoped.passages] == ["c"]
    with pytest.raises(Exception, match="doc_aggregate"):
        cls.Params(doc_aggregate="mean")
