"""Text encoders and the loader that picks one for a model directory.

``load_encoder(path)`` decides which loader builds the encoder:

1. a marker file ``longread_encoder.json`` in the dir, ``{"loader": "<key>"}``, names it;
2. otherwise the ``model_type`` in the dir's ``config.json``;
3. otherwise a sentence-transformers dir (``modules.json``) uses the sentence loader.

``ENCODER_LOADERS`` maps those keys to loader functions ``loader(path, *, device) -> Encoder``;
other encoder modules add their own entries (e.g. NomicBERT, M2-BERT) to this plain dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .base import Encoder, EncodeKind
from .sentence import SentenceEncoder, load_sentence_encoder

__all__ = ["Encoder", "EncodeKind", "SentenceEncoder", "ENCODER_LOADERS", "MARKER_FILE", "load_encoder", "loader_key"]

MARKER_FILE = "longread_encoder.json"

def _load_nomic(path: Path, *, device: str = "cpu") -> Encoder:
    from .nomic import load_nomic  # torch-heavy: imported on use

    return load_nomic(path, device=device)


def _load_m2bert(path: Path, *, device: str = "cpu") -> Encoder:
    from .m2bert import load_m2bert

    return load_m2bert(path, device=device)


ENCODER_LOADERS: dict[str, Callable[..., Encoder]] = {
    # Native long-context encoders (nomic.py, m2bert.py).
    "nomic_bert": _load_nomic,
    "m2_bert": _load_m2bert,
    # Sentence loader: the BERT-family encoders AutoModel loads natively.
    "sentence": load_sentence_encoder,
    "bert": load_sentence_encoder,
    "roberta": load_sentence_encoder,
    "xlm-roberta": load_sentence_encoder,
    "distilbert": load_sentence_encoder,
    "mpnet": load_sentence_encoder,
    "electra": load_sentence_encoder,
    "deberta-v2": load_sentence_encoder,
    "modernbert": load_sentence_encoder,
}


def loader_key(path: str | Path) -> str:
    """The ``ENCODER_LOADERS`` key for a model dir (see the module docstring).

    Raises ``FileNotFoundError`` for a missing dir and ``ValueError`` when nothing names a loader.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"encoder dir {str(path)!r} does not exist")
    marker = path / MARKER_FILE
    if marker.is_file():
        with open(marker, encoding="utf-8") as f:
            key = json.load(f).get("loader")
        if not isinstance(key, str):
            raise ValueError(f"{marker}: expected {{\"loader\": \"<key>\"}}, got loader={key!r}")
        return key
    config = path / "config.json"
    if config.is_file():
        with open(config, encoding="utf-8") as f:
            conf = json.load(f)
        mt = conf.get("model_type")
        # Official M2-BERT configs say model_type "bert" (their config class subclasses BertConfig).
        if mt == "bert" and conf.get("monarch_mixer_sequence_mixing"):
            mt = "m2_bert"
        if isinstance(mt, str) and mt in ENCODER_LOADERS:
            return mt
        if (path / "modules.json").is_file():
            return "sentence"
        raise ValueError(
            f"{path}: no encoder loader for model_type {mt!r}; known: {', '.join(sorted(ENCODER_LOADERS))} "
            f"(or name one in {MARKER_FILE})"
        )
    raise ValueError(f"{path}: neither {MARKER_FILE} nor config.json says which encoder loader to use")


def load_encoder(path: str | Path, *, device: str = "cpu") -> Encoder:
    """Load the encoder in model dir ``path`` with the loader its config names.

    Raises ``FileNotFoundError`` for a missing dir, ``ValueError`` for an unknown loader
    (the message lists the known ones).
    """
    key = loader_key(path)
    try:
        loader = ENCODER_LOADERS[key]
    except KeyError:
        raise ValueError(
            f"{path}: unknown encoder loader {key!r}; known: {', '.join(sorted(ENCODER_LOADERS))}"
        ) from None
    return loader(Path(path), device=device)
