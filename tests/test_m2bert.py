"""M2-BERT: FFT long conv, official key names/shapes, strict loading, padding invariance, OPL recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from longread.encoders.m2bert import (
    M2BertConfig,
    M2BertEncoder,
    M2BertForRetrieval,
    direct_long_conv,
    fft_long_conv,
    load_m2bert,
    save_m2bert_dir,
)
from longread.encoders.weights import CheckpointKeyError


def tiny_cfg(seq_len: int = 256, layers: int = 2) -> M2BertConfig:
    return M2BertConfig.retrieval(
        seq_len, vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, hyena_filter_order=16
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_encoder_dir))


@pytest.fixture(scope="module")
def m2_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    return save_m2bert_dir(M2BertForRetrieval(tiny_cfg()), tmp_path_factory.mktemp("m2") / "m2-tiny", tokenizer)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("L", [1, 2, 7, 16])
def test_fft_conv_equals_direct_conv(bidirectional: bool, L: int) -> None:
    g = torch.Generator().manual_seed(L)
    u, kf, kr, D = torch.randn(2, 3, L, generator=g), torch.randn(3, L, generator=g), torch.randn(3, L, generator=g), torch.randn(3, generator=g)
    kr = kr if bidirectional else None
    assert torch.allclose(fft_long_conv(u, kf, kr, D), direct_long_conv(u, kf, kr, D), atol=1e-5)


def test_direct_conv_hand_case() -> None:
    # u = [1, 2, 3], k_fwd = [1, 10, 100], k_rev = [1000, 10000, _], D = 0
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    y = fft_long_conv(u, torch.tensor([[1.0, 10.0, 100.0]]), torch.tensor([[1000.0, 10000.0, 5.0]]), torch.zeros(1))
    # y0 = 1*1 + 2*1000 + 3*10000; y1 = 2*1 + 1*10 + 3*1000; y2 = 3*1 + 2*10 + 1*100
    assert torch.allclose(y[0, 0], torch.tensor([32001.0, 3012.0, 123.0]))


def test_official_key_names() -> None:
    sd = M2BertForRetrieval(tiny_cfg(layers=1)).state_dict()
    pre = "bert.encoder.layer.0."
    expected = {
        "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias", "bert.embeddings.position_ids",
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias",
        pre + "attention.in_linear.weight", pre + "attention.in_linear.bias", pre + "attention.out_linear.weight",
        pre + "attention.out_linear.bias", pre + "attention.short_filter.weight", pre + "attention.short_filter.bias",
        pre + "mlp.gated_layers.weight", pre + "mlp.wo.weight", pre + "mlp.wo.bias",
        pre + "mlp.layernorm.weight", pre + "mlp.layernorm.bias",
    }
    for f in ("filter_fn", "filter_fn2"):
        fp = f"{pre}attention.{f}."
        expected |= {fp + "bias", fp + "pos_emb.z", fp + "pos_emb.t", fp + "modulation.deltas"}
        for mlp in ("implicit_filter", "implicit_filter_rev"):
            expected |= {f"{fp}{mlp}.{i}.weight" for i in (0, 2, 4, 6)}
            expected |= {f"{fp}{mlp}.{i}.bias" for i in (0, 2, 4)}
            expected |= {f"{fp}{mlp}.{i}.freq" for i in (1, 3, 5)}
    assert set(sd) == expected


@pytest.mark.parametrize("seq_len", [2048, 8192, 32768])
def test_shapes_at_official_lengths(seq_len: int) -> None:
    cfg = M2BertConfig.retrieval(seq_len, num_hidden_layers=1)  # true 80M widths, one layer
    sd = M2BertForRetrieval(cfg).state_dict()
    p = "bert.encoder.layer.0."
    assert sd["bert.embeddings.position_embeddings.weight"].shape == (seq_len, 768)
    assert sd[p + "attention.filter_fn.pos_emb.z"].shape == (1, seq_len, 5)
    assert sd[p + "attention.filter_fn.pos_emb.t"].shape == (1, seq_len, 1)
    assert sd[p + "attention.filter_fn.implicit_filter.0.weight"].shape == (128, 5)
    assert sd[p + "attention.filter_fn.implicit_filter.6.weight"].shape == (768, 128)
    assert sd[p + "attention.short_filter.weight"].shape == (2304, 1, 3)
    assert sd[p + "mlp.gated_layers.weight"].shape == (4, 1536, 192)  # 768 -> 2*3072, 4 blocks
    assert sd[p + "mlp.wo.weight"].shape == (4, 192, 768)  # 3072 -> 768


@pytest.mark.parametrize("seq_len", [2048, 8192, 32768])
def test_forward_at_full_length(seq_len: int) -> None:
    torch.manual_seed(0)
    model = M2BertForRetrieval(
        M2BertConfig.retrieval(seq_len, vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               hyena_filter_order=8)
    ).eval()
    ids = torch.randint(1, 64, (1, seq_len))
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), mask_padding=False)
    assert out.shape == (1, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(torch.ones(1, seq_len + 1, dtype=torch.long), torch.ones(1, seq_len + 1), mask_padding=False)


def test_round_trip_and_dispatch(m2_dir: Path, tmp_path: Path) -> None:
    from longread.encoders import load_encoder, loader_key

    enc = load_m2bert(m2_dir, padding="longest")
    texts = ["the cat sat on the mat", "a long document about retrieval"]
    a = enc.encode(texts)
    assert a.shape == (2, 32) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    # an official-style config (model_type "bert" + Monarch mixing) dispatches to M2
    off = tmp_path / "official"
    shutil.copytree(m2_dir, off)
    conf = json.loads((off / "config.json").read_text())
    conf["model_type"] = "bert"
    (off / "config.json").write_text(json.dumps(conf))
    assert loader_key(off) == "m2_bert"
    b = load_encoder(off)
    assert isinstance(b, M2BertEncoder)
    b.padding = "longest"
    assert np.allclose(a, b.encode(texts), atol=1e-6)


def test_missing_and_unexpected_keys_are_named(m2_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(m2_dir, bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["bert.pooler.dense.bias"]
    sd["bert.encoder.layer.0.attention.extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as e:
        load_m2bert(bad)
    assert "bert.pooler.dense.bias" in str(e.value) and "attention.extra.weight" in str(e.value)


def test_padding_invariance(m2_dir: Path) -> None:
    texts = ["short one", "a somewhat longer text that needs many more tokens than the first one does"]
    for padding in ("longest", "max_length"):
        enc = load_m2bert(m2_dir, padding=padding)
        together = enc.encode(texts, batch_size=2)
        alone = np.vstack([enc.encode([t], batch_size=1) for t in texts])
        assert np.allclose(together, alone, atol=1e-5), padding


def test_bad_inputs(m2_dir: Path) -> None:
    enc = load_m2bert(m2_dir, padding="longest")
    with pytest.raises(ValueError, match="text 1 is empty"):
        enc.encode(["fine", "   "])
    long = "word " * 400
    with pytest.raises(ValueError, match="max_tokens=256"):
        enc.encode([long], truncate=False)
    assert enc.encode([long]).shape == (1, 32)  # truncates by default
    with pytest.raises(ValueError, match="padding must be"):
        M2BertEncoder(enc.model, enc.tokenizer, padding="left")


def test_opl_loss_hand_case() -> None:
    from longread.train.m2bert import opl_loss

    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    d = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # cos = 1/sqrt(2), 0
    loss = opl_loss(q, d, torch.tensor([1.0, 0.0]))
    # ((0.70711 - 1)^2 + (0 - 0)^2) / 2 = 0.042893
    assert loss.item() == pytest.approx((1 - 2**-0.5) ** 2 / 2, rel=1e-5)


def test_bm25_negatives_and_opl_training_decreases(m2_dir: Path) -> None:
    from longread.train.m2bert import build_pairs, evaluate_opl, mine_bm25_negatives, train_opl

    corpus = [
        "the cat sat on the mat", "dogs bark at the mail carrier", "the stock market fell sharply",
        "a cat chased a mouse across the mat", "rain is expected tomorrow", "the mat was red",
    ]
    negs = mine_bm25_negatives(["cat on the mat"], [{0}], corpus, per_query=3, neg_pool=2, seed=0)
    assert set(negs[0]) <= {3, 5} and 0 not in negs[0]  # top BM25 hits that are not relevant
    pairs = build_pairs(["cat on the mat", "market fell"], [{0}, {2}], corpus, neg_pool=2, seed=0)
    assert sorted(p.label for p in pairs) == [0.0, 0.0, 1.0, 1.0]
    torch.manual_seed(0)
    small = M2BertConfig.retrieval(32, vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   hyena_filter_order=8, hidden_dropout_prob=0.0)
    enc = M2BertEncoder(M2BertForRetrieval(small), load_m2bert(m2_dir).tokenizer, padding="longest")
    before = evaluate_opl(enc, pairs)
    losses = train_opl(enc, pairs, epochs=3, lr=1e-3, seed=0)
    after = evaluate_opl(enc, pairs)
    assert len(losses) == 12 and after < before, (before, after)
    assert not enc.model.training
