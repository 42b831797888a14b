"""Read encoder weights and the WordPiece vocabulary out of a GGUF file with the ``gguf`` package.

transformers cannot load the ``nomic-bert`` GGUF architecture, so we read the tensors
ourselves (memory-mapped by ``gguf.GGUFReader``) and rebuild the BERT tokenizer from the
vocabulary llama.cpp stored in it. llama.cpp's converter marks *word-start* pieces with ``▁``
and leaves continuation pieces bare — the reverse of BERT's ``##`` convention — so the
vocabulary is converted back before a WordPiece tokenizer is built from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["GGUFContents", "read_gguf", "wordpiece_vocab", "bert_tokenizer"]

_WORD_START = "\u2581"  # ▁
_CONTROL = 3  # gguf TokenType.CONTROL: [PAD] [UNK] [CLS] [SEP] [MASK]
_UNUSED = re.compile(r"^\[unused\d+\]$")


@dataclass
class GGUFContents:
    """Metadata (scalars and small arrays) and tensors (``torch`` views, row-major as in torch)."""

    architecture: str
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    token_types: list[int] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value ``key``; the architecture prefix may be left out (``block_count``)."""
        if key in self.metadata:
            return self.metadata[key]
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        """Like :meth:`get` but raise ``KeyError`` naming the key and the keys present."""
        v = self.get(key)
        if v is None:
            raise KeyError(f"GGUF has no metadata key {key!r}; present: {', '.join(sorted(self.metadata))}")
        return v


def read_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32) -> GGUFContents:
    """Read a GGUF file: metadata, the tokenizer token list and every tensor as ``dtype``.

    Only unquantised tensor types (F32, F16, BF16) are supported; a quantised tensor raises
    ``ValueError`` naming it. Raises ``FileNotFoundError`` for a missing file.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    reader = GGUFReader(str(path))
    meta: dict[str, Any] = {}
    tokens: list[str] = []
    types: list[int] = []
    for key, fld in reader.fields.items():
        if key == "tokenizer.ggml.tokens":
            tokens = list(fld.contents())
            continue
        if key == "tokenizer.ggml.token_type":
            types = [int(t) for t in fld.contents()]
            continue
        if key in ("tokenizer.ggml.scores", "tokenizer.ggml.merges"):
            continue
        try:
            meta[key] = fld.contents()
        except Exception:  # a field type this gguf version cannot decode: not needed by us
            continue
    arch = str(meta.get("general.architecture", ""))
    ok = {GGMLQuantizationType.F32, GGMLQuantizationType.F16}
    bf16 = getattr(GGMLQuantizationType, "BF16", None)
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.tensor_type not in ok and t.tensor_type != bf16:
            raise ValueError(f"GGUF tensor {t.name!r} has quantised type {t.tensor_type.name}; only F32/F16/BF16 load")
        arr = np.asarray(t.data)
        if t.tensor_type == bf16:
            # numpy has no bf16: widen the raw 16 bits into the top half of a float32
            arr = (arr.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        # gguf lists dims fastest-first; reader.data is already shaped row-major (torch order)
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        # astype copies out of the read-only memory map (torch must not alias it)
        tensors[t.name] = torch.from_numpy(arr.reshape(shape).astype(np.float32)).to(dtype)
    return GGUFContents(architecture=arch, metadata=meta, tensors=tensors, tokens=tokens, token_types=types)


def wordpiece_vocab(tokens: list[str], token_types: list[int] | None = None) -> list[str]:
    """Convert a llama.cpp BERT vocabulary (``▁`` marks word starts) back to WordPiece (``##`` marks continuations).

    Control tokens (``[CLS]`` …) and ``[unusedN]`` are kept as they are. Raises ``ValueError``
    if the result has duplicates (which would mean the markers were not what we expect).
    """
    if token_types is not None and len(token_types) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(token_types)} token types")
    out: list[str] = []
    for i, tok in enumerate(tokens):
        ctrl = token_types is not None and token_types[i] == _CONTROL
        if ctrl or _UNUSED.match(tok) or (tok.startswith("[") and tok.endswith("]") and tok.isupper()):
            out.append(tok)
        elif tok.startswith(_WORD_START):
            out.append(tok[len(_WORD_START) :])
        else:
            out.append("##" + tok)
    seen: dict[str, int] = {}
    for i, t in enumerate(out):
        if t in seen:
            raise ValueError(f"converted vocabulary repeats {t!r} at ids {seen[t]} and {i}")
        seen[t] = i
    return out


def bert_tokenizer(vocab: list[str], *, model_max_length: int, lowercase: bool = True):
    """A ``transformers.PreTrainedTokenizerFast`` doing BERT WordPiece with ``vocab`` (id = index).

    Normalisation matches ``bert-base-uncased``: clean text, split CJK characters, lowercase
    and strip accents; ``[CLS] … [SEP]`` are added around each text.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {t: i for i, t in enumerate(vocab)}
    for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        if special not in ids:
            raise ValueError(f"vocabulary lacks the special token {special!r}")
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        padding_side="right",
    )
