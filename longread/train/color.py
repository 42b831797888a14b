"""Training recipe for ``compressor.color``: synthetic preference data, then ORPO with CoLoR's length term.

What CoLoR does (repo going-doer/CoLoR, ``codes/7_make_orpo_dataset.py`` and
``codes/custom_orpo_trainer.py``), and what this recipe does:

1. **Candidates.** CoLoR summarises every passage with several LLMs (Mistral-7B, Phi-3-mini,
   GPT-4o-mini) using the query-agnostic prompt in ``longread.compressors.color.COLOR_PROMPT``.
   Here the candidates come from one or more models (``--gen-models``) at several sampling
   temperatures (``--temperatures``, 0 = greedy) and ``--samples`` draws each.
2. **Labels.** CoLoR labels a summary a success when a long-context LLM, given the *compressed*
   corpus in its prompt, still retrieves the right passage for the query. That needs a strong
   LCLM; this recipe uses a cheap, documented proxy (``--rule``):
   ``bm25`` — the compressed gold passage is ranked strictly first by BM25 among it and the
   query's distractor passages (left uncompressed); ``answer`` — a gold answer string survives in
   the compression (SQuAD-normalised containment); ``both`` — both hold (default).
3. **Pairs.** chosen = the *shortest* successful compression, rejected = the *longest* failed one
   (length in characters, as the repo measures ``len(summary_text)``). Passages with no success
   or no failure are dropped and counted (``no_success``/``no_failure``). The repo's "hard"
   variant keeps all-success passages as (shortest, longest); ``--keep-all-success`` does that.
4. **ORPO + length regularisation.** With ``c``/``r`` the per-token *average* log-likelihoods of
   the chosen/rejected responses (as the repo, ``average_log_prob=True``),
   ``log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))``; CoLoR scales it by
   ``w = max(length_coef * (len_rejected - len_chosen), 1)`` with lengths in response tokens and
   ``length_coef = 0.1``, so pairs whose chosen is much shorter push harder; then
   ``loss = NLL(chosen) - beta * mean(log sigmoid(w * log_odds))`` with ``beta = 2.5`` (the repo's
   script). One deliberate difference: the NLL here covers the chosen *response* tokens only (the
   ORPO paper's SFT term); the repo's trainer averaged it over the prompt tokens as well.

The model is trained with a LoRA adapter (peft; default) or fully (``--full``), and saved as
safetensors in ``--out`` with ``train_log.json``. Run with ``longread train color ...`` or
``python -m longread.train.color ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Candidate",
    "PreferenceExample",
    "PreferencePair",
    "RULES",
    "add_parser",
    "answer_survives",
    "bm25_first",
    "build_pairs",
    "label_candidates",
    "load_pairs",
    "main",
    "make_pair",
    "orpo_length_loss",
    "run",
    "squad_examples",
    "train_orpo",
]

RULES = ("bm25", "answer", "both")
Rule = Literal["bm25", "answer", "both"]


@dataclass
class PreferenceExample:
    """One training passage: the query, its gold passage, distractor passages and gold answers."""

    id: str
    question: str
    passage: str
    distractors: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    """One compression of a passage, where it came from, and whether retrieval still succeeds with it."""

    text: str
    source: str
    success: bool


@dataclass
class PreferencePair:
    """An ORPO training pair: the CoLoR prompt's passage, the chosen and the rejected compression."""

    id: str
    passage: str
    chosen: str
    rejected: str
    chosen_source: str = ""
    rejected_source: str = ""


# ---------------------------------------------------------------------------------------------
# Labelling rules


def _normalize(s: str) -> str:
    # SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def answer_survives(text: str, answers: Sequence[str]) -> bool:
    """True when some non-empty normalised answer occurs, word-aligned, in the normalised ``text``."""
    t = f" {_normalize(text)} "
    return any(a and f" {a} " in t for a in (_normalize(x) for x in answers))


_WORD = re.compile(r"\w+")
_STOP = frozenset(
    "a an the of in on at to for and or is are was were be been by with as from that this it its "
    "what which who whom whose when where why how did do does".split()
)


def _bm25_tokens(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _bm25_scores(query: list[str], docs: list[list[str]], k1: float = 1.5, b: float = 0.75) -> list[float]:
    # Okapi BM25 with Lucene's always-positive idf: rank_bm25's Okapi idf is 0 for a term in half
    # of a two-document corpus, which makes tiny candidate sets unrankable.
    n = len(docs)
    avg = sum(len(d) for d in docs) / n or 1.0
    df = Counter(t for d in docs for t in set(d))
    out = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def bm25_first(query: str, passage: str, distractors: Sequence[str]) -> bool:
    """True when BM25 (Okapi, k1=1.5, b=0.75) ranks ``passage`` strictly above every distractor.

    The ranking corpus is ``[passage, *distractors]``, lower-cased words without stop words.
    Raises ``ValueError`` on a query with no searchable word.
    """
    q = _bm25_tokens(query)
    if not q:
        raise ValueError(f"query has no searchable words: {query!r}")
    docs = [_bm25_tokens(passage)] + [_bm25_tokens(d) for d in distractors]
    scores = _bm25_scores(q, docs)
    return bool(scores[0] > 0 and all(scores[0] > x for x in scores[1:]))


def label_candidates(example: PreferenceExample, texts: Iterable[tuple[str, str]], rule: Rule = "both") -> list[Candidate]:
    """Label each ``(text, source)`` compression of ``example`` with ``rule``; empty texts are left out.

    Raises ``ValueError`` for an unknown rule.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    out = []
    for text, source in texts:
        text = text.strip()
        if not text:
            continue
        ok_r = rule == "answer" or bm25_first(example.question, text, example.distractors)
        ok_a = rule == "bm25" or answer_survives(text, example.answers)
        out.append(Candidate(text=text, source=source, success=ok_r and ok_a))
    return out


def make_pair(
    example_id: str, passage: str, candidates: Sequence[Candidate], *, keep_all_success: bool = False
) -> tuple[PreferencePair | None, str]:
    """Pick chosen (shortest success) and rejected (longest failure); return ``(pair, reason)``.

    ``reason`` is ``"pair"``, ``"no_success"`` or ``"no_failure"`` (pair is None for the last
    two, except that ``keep_all_success`` pairs the shortest with the longest success when all
    succeed and they differ). Length is in characters; ties go to the earlier candidate.
    """
    wins = [c for c in candidates if c.success]
    fails = [c for c in candidates if not c.success]
    if not wins:
        return None, "no_success"
    chosen = min(wins, key=lambda c: len(c.text))
    if not fails:
        if keep_all_success:
            longest = max(wins, key=lambda c: len(c.text))
            if len(longest.text) > len(chosen.text):
                return PreferencePair(example_id, passage, chosen.text, longest.text, chosen.source, longest.source), "pair"
        return None, "no_failure"
    rejected = max(fails, key=lambda c: len(c.text))
    return PreferencePair(example_id, passage, chosen.text, rejected.text, chosen.source, rejected.source), "pair"


def build_pairs(
    examples: Sequence[PreferenceExample],
    candidates: Sequence[Sequence[Candidate]],
    *,
    keep_all_success: bool = False,
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Build one pair per example where possible; return the pairs and counts.

    Counts: ``examples``, ``pairs``, ``no_success``, ``no_failure``. Raises ``ValueError`` when the
    two sequences differ in length.
    """
    if len(examples) != len(candidates):
        raise ValueError(f"got {len(candidates)} candidate lists for {len(examples)} examples")
    counts = {"examples": len(examples), "pairs": 0, "no_success": 0, "no_failure": 0}
    pairs = []
    for ex, cands in zip(examples, candidates):
        pair, reason = make_pair(ex.id, ex.passage, cands, keep_all_success=keep_all_success)
        counts[reason if reason != "pair" else "pairs"] += 1
        if pair is not None:
            pairs.append(pair)
    return pairs, counts


# ---------------------------------------------------------------------------------------------
# Data


def squad_examples(path: Path, *, limit: int, distractors: int = 5, seed: int = 0) -> list[PreferenceExample]:
    """Training examples from an official-format SQuAD JSON file.

    For up to ``limit`` paragraphs (spread over articles in a seeded order), the paragraph's first
    question is the query and up to ``distractors`` other paragraphs of the same article are the
    hard negatives. Raises ``FileNotFoundError``/``ValueError`` on a missing or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file {str(path)!r} does not exist")
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not SQuAD JSON (expected a top-level 'data' list)")
    rng = random.Random(seed)
    pool = []
    for art in data["data"]:
        paras = [p["context"] for p in art["paragraphs"]]
        for pi, p in enumerate(art["paragraphs"]):
            if p.get("qas"):
                pool.append((paras, pi, p["qas"][0]))
    rng.shuffle(pool)
    out = []
    for paras, pi, qa in pool[:limit]:
        others = [p for j, p in enumerate(paras) if j != pi]
        rng.shuffle(others)
        out.append(
            PreferenceExample(
                id=str(qa["id"]),
                question=qa["question"],
                passage=paras[pi],
                distractors=others[:distractors],
                answers=sorted({a["text"] for a in qa.get("answers", [])}),
            )
        )
    return out


def load_examples(path: Path) -> list[PreferenceExample]:
    """Read examples JSONL: ``{"id","question","passage","distractors"?:[],"answers"?:[]}`` per line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(PreferenceExample(**json.loads(line)))
                except (TypeError, json.JSONDecodeError) as e:
                    raise ValueError(f"{path}:{n}: not an example record: {e}") from None
    return out


def load_pairs(path: Path) -> list[PreferencePair]:
    """Read pairs JSONL as written by this recipe (``pairs.jsonl``)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(PreferencePair(**json.loads(line)))
                except (TypeError, json.JSONDecodeError) as e:
                    raise ValueError(f"{path}:{n}: not a preference pair: {e}") from None
    return out


def generate_candidates(
    hub: Any,
    examples: Sequence[PreferenceExample],
    *,
    models: Sequence[str],
    temperatures: Sequence[float],
    samples: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
) -> list[list[tuple[str, str]]]:
    """Compress every example's passage with each model × temperature × sample; ``(text, source)`` lists.

    Generation goes through the ``hf`` backend of the generation layer (sample ``k`` is seeded
    with ``seed + k``).
    """
    from ..compressors.color import summarize
    from ..llm import LLMSpec

    out: list[list[tuple[str, str]]] = [[] for _ in examples]
    passages = [ex.passage for ex in examples]
    k = 0
    for name in models:
        backend = hub.backend(LLMSpec(model=name, batch_size=batch_size))
        for temp in temperatures:
            for s in range(samples if temp > 0 else 1):  # greedy gives one answer
                sums = summarize(backend, passages, max_new_tokens=max_new_tokens, temperature=temp,
                                 seed=seed + k, max_input_tokens=1024)
                k += 1
                for i, sm in enumerate(sums):
                    if sm.error is not None:
                        raise RuntimeError(f"{name}: compressing example {examples[i].id!r} failed: {sm.error}")
                    out[i].append((sm.text, f"{name}@t{temp:g}#{s}"))
    return out


# ---------------------------------------------------------------------------------------------
# Loss


def _log1mexp(x: "torch.Tensor") -> "torch.Tensor":
    # log(1 - e^x) for x < 0, accurate on both sides of -ln 2.
    import torch

    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_length_loss(
    chosen_logps: "torch.Tensor",
    rejected_logps: "torch.Tensor",
    chosen_nll: "torch.Tensor",
    chosen_lens: "torch.Tensor",
    rejected_lens: "torch.Tensor",
    *,
    beta: float = 2.5,
    length_coef: float = 0.1,
) -> tuple["torch.Tensor", dict[str, float]]:
    """CoLoR's ORPO loss: ``nll - beta * mean(log sigmoid(w * log_odds))``; returns ``(loss, metrics)``.

    ``chosen_logps``/``rejected_logps``: per-pair average per-token log-likelihoods (< 0).
    ``chosen_nll``: scalar NLL of the chosen responses. ``*_lens``: response lengths in tokens.
    ``w = max(length_coef * (rejected_len - chosen_len), 1)``; ``length_coef = 0`` is plain ORPO.
    """
    import torch
    import torch.nn.functional as F

    log_odds = (chosen_logps - rejected_logps) - (_log1mexp(chosen_logps) - _log1mexp(rejected_logps))
    diff = (rejected_lens - chosen_lens).to(log_odds.dtype)
    w = torch.clamp(length_coef * diff, min=1.0)
    ratio = F.logsigmoid(w * log_odds)
    loss = chosen_nll - beta * ratio.mean()
    metrics = {
        "nll": float(chosen_nll.detach()),
        "log_odds": float(log_odds.detach().mean()),
        "or_term": float(-ratio.detach().mean()),
        "length_weight": float(w.detach().mean()),
    }
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Tokenisation and forward pass


def _encode_pair_side(tokenizer: Any, passage: str, response: str, max_prompt: int, max_response: int) -> tuple[list[int], int]:
    """Token ids of prompt+response and the prompt length (response tokens are the rest)."""
    from ..compressors.color import color_messages, truncate_tokens

    # The same cut as compressor.color's (the hf backend's encode/decode), so training sees the
    # prompts the stage sends.
    passage = truncate_tokens(passage, max_prompt, lambda t: tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"],
                              lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    msgs = color_messages(passage)
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        tail = full[len(prompt):] if full.startswith(prompt) else response + (tokenizer.eos_token or "")
    else:
        prompt = msgs[0]["content"]
        tail = response + (tokenizer.eos_token or "")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(tail, add_special_tokens=False)["input_ids"][:max_response]
    if not r_ids:
        raise ValueError("a preference response tokenised to nothing")
    return p_ids + r_ids, len(p_ids)


def _response_logps(model: Any, seqs: list[tuple[list[int], int]], pad_id: int, device: Any) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Per sequence: sum of response-token log-probs, response token count; plus the token mask."""
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, plen) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        mask[i, plen : len(s)] = True
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    target = ids[:, 1:]
    m = mask[:, 1:]
    logp = -F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    logp = logp * m
    return logp.sum(1), m.sum(1), m


def pair_loss(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    beta: float,
    length_coef: float,
    max_prompt_tokens: int = 512,
    max_response_tokens: int = 256,
    device: Any = "cpu",
) -> tuple["torch.Tensor", dict[str, float]]:
    """The ORPO+length loss of ``model`` on a batch of pairs (one forward over chosen and rejected)."""

    seqs = [_encode_pair_side(tokenizer, p.passage, p.chosen, max_prompt_tokens, max_response_tokens) for p in pairs]
    seqs += [_encode_pair_side(tokenizer, p.passage, p.rejected, max_prompt_tokens, max_response_tokens) for p in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums, lens, _ = _response_logps(model, seqs, pad, device)
    n = len(pairs)
    avg = sums / lens.clamp(min=1)
    chosen_nll = -sums[:n].sum() / lens[:n].sum().clamp(min=1)
    return orpo_length_loss(avg[:n], avg[n:], chosen_nll, lens[:n], lens[n:], beta=beta, length_coef=length_coef)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """ORPO training settings (see ``add_parser`` for each one's meaning)."""

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 2
    lr: float = 1e-4
    beta: float = 2.5
    length_coef: float = 0.1
    full: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    max_prompt_tokens: int = 512
    max_response_tokens: int = 256
    device: str = "cpu"
    seed: int = 0
    log_every: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lora_r", "lora_alpha", "max_prompt_tokens", "max_response_tokens", "log_every"):
            v = getattr(self, name)
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.beta < 0 or self.length_coef < 0:
            raise ValueError(f"beta and length_coef must be >= 0, got beta={self.beta} length_coef={self.length_coef}")


def prepare_model(model_dir: Path, cfg: TrainConfig) -> Any:
    """Load a float32 trainable copy of the model; wrap it in a LoRA adapter unless ``cfg.full``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if not cfg.full:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        from ..peft_compat import quiet_peft

        with quiet_peft():
            model = get_peft_model(model, lcfg)
    return model.to(cfg.device)


def train_orpo(model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], cfg: TrainConfig) -> list[dict[str, float]]:
    """Train ``model`` in place on ``pairs`` with AdamW; return the per-step log.

    Raises ``ValueError`` when there are no pairs.
    """
    import torch

    if not pairs:
        raise ValueError("no preference pairs to train on (every passage was dropped; see the counts)")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    model.train()
    log: list[dict[str, float]] = []
    order = list(range(len(pairs)))
    step = 0
    # max_steps, when given, overrides epochs (as in transformers' Trainer).
    epochs = cfg.epochs if cfg.max_steps is None else math.ceil(cfg.max_steps / math.ceil(len(pairs) / cfg.batch_size))
    for epoch in range(epochs):
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                return log
            t0 = time.perf_counter()
            batch = [pairs[i] for i in order[s : s + cfg.batch_size]]
            loss, m = pair_loss(model, tokenizer, batch, beta=cfg.beta, length_coef=cfg.length_coef,
                                max_prompt_tokens=cfg.max_prompt_tokens,
                                max_response_tokens=cfg.max_response_tokens, device=cfg.device)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            m.update(step=step, epoch=epoch, loss=float(loss.detach()), seconds=time.perf_counter() - t0)
            log.append(m)
    model.eval()
    return log


def save_model(model: Any, tokenizer: Any, out: Path, model_name: str, full: bool) -> None:
    """Save the adapter (recording ``model_name`` as its base) or the full model, as safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    if not full:
        # compressor.color checks the adapter's base against its `model` param: record the hub name.
        for c in model.peft_config.values():
            c.base_model_name_or_path = model_name
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))


# ---------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``color`` sub-command to ``subparsers``; returns its parser (``run`` is its handler)."""
    p = subparsers.add_parser(
        "color",
        help="build CoLoR preference data and train the compressor with ORPO + length regularisation",
        description=__doc__.split("\n\n")[0],
    )
    _arguments(p)
    p.set_defaults(func=run)
    return p


def _floats(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not v or any(x < 0 for x in v):
        raise argparse.ArgumentTypeError(f"expected non-negative temperatures, got {s!r}")
    return v


def _arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data")
    src.add_argument("--squad", type=Path, help="official-format SQuAD JSON to build examples from")
    src.add_argument("--examples", type=Path, help="examples JSONL {id,question,passage,distractors,answers}")
    src.add_argument("--pairs", type=Path, help="ready pairs JSONL (skips generation and labelling)")
    src.add_argument("--limit", type=int, default=32, help="examples taken from --squad (default 32)")
    src.add_argument("--distractors", type=int, default=5, help="distractor passages per example (default 5)")
    src.add_argument("--gen-models", default=None, help="comma-separated models that write candidates (default: --model)")
    src.add_argument("--temperatures", type=_floats, default=[0.0, 0.7, 1.0], help="sampling temperatures, 0 = greedy (default 0,0.7,1.0)")
    src.add_argument("--samples", type=int, default=2, help="samples per temperature > 0 (default 2)")
    src.add_argument("--gen-max-new-tokens", type=int, default=128, help="budget of a candidate compression (default 128)")
    src.add_argument("--gen-batch-size", type=int, default=4)
    src.add_argument("--rule", choices=RULES, default="both", help="success rule for a compression (default both)")
    src.add_argument("--keep-all-success", action="store_true", help="also pair shortest vs longest when all succeed (repo's 'hard' set)")
    src.add_argument("--data-only", action="store_true", help="stop after writing pairs.jsonl")
    tr = p.add_argument_group("training")
    tr.add_argument("--model", default="smollm2-135m-instruct", help="model to train (hub name or local dir)")
    tr.add_argument("--out", type=Path, required=True, help="output dir: pairs.jsonl, adapter/model, train_log.json")
    tr.add_argument("--epochs", type=int, default=1)
    tr.add_argument("--max-steps", type=int, default=None)
    tr.add_argument("--batch-size", type=int, default=2)
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--beta", type=float, default=2.5, help="weight of the odds-ratio term (repo: 2.5)")
    tr.add_argument("--length-coef", type=float, default=0.1, help="CoLoR length weight coefficient (repo: 0.1; 0 = plain ORPO)")
    tr.add_argument("--full", action="store_true", help="train all weights instead of a LoRA adapter")
    tr.add_argument("--lora-r", type=int, default=8)
    tr.add_argument("--lora-alpha", type=int, default=16)
    tr.add_argument("--max-prompt-tokens", type=int, default=512)
    tr.add_argument("--max-response-tokens", type=int, default=256)
    tr.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    tr.add_argument("--cache-dir", type=Path, default=None, help="model hub cache dir")
    tr.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Run the recipe from parsed arguments; returns 0. Raises ``ValueError`` on bad arguments."""
    from ..models.hub import ModelHub

    sources = [x for x in (args.squad, args.examples, args.pairs) if x is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one of --squad, --examples or --pairs")
    for name in ("limit", "samples", "gen_max_new_tokens", "gen_batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.distractors < 0:
        raise ValueError(f"--distractors must be >= 0, got {args.distractors}")
    cfg = TrainConfig(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
        length_coef=args.length_coef, full=args.full, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        max_prompt_tokens=args.max_prompt_tokens, max_response_tokens=args.max_response_tokens,
        device=args.device, seed=args.seed,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    hub = ModelHub(cache_dir=args.cache_dir, device=args.device)
    counts: dict[str, int] = {}
    if args.pairs is not None:
        pairs = load_pairs(args.pairs)
    else:
        examples = (
            squad_examples(args.squad, limit=args.limit, distractors=args.distractors, seed=args.seed)
            if args.squad is not None
            else load_examples(args.examples)
        )
        models = [m for m in (args.gen_models or args.model).split(",") if m.strip()]
        t0 = time.perf_counter()
        raw = generate_candidates(hub, examples, models=models, temperatures=args.temperatures, samples=args.samples,
                                  max_new_tokens=args.gen_max_new_tokens, batch_size=args.gen_batch_size, seed=args.seed)
        cands = [label_candidates(ex, r, args.rule) for ex, r in zip(examples, raw)]
        pairs, counts = build_pairs(examples, cands, keep_all_success=args.keep_all_success)
        counts["generation_seconds"] = round(time.perf_counter() - t0, 2)
        with open(out / "candidates.jsonl", "w", encoding="utf-8") as f:
            for ex, cs in zip(examples, cands):
                f.write(json.dumps({"id": ex.id, "question": ex.question, "candidates": [asdict(c) for c in cs]}) + "\n")
        with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
            for pr in pairs:
                f.write(json.dumps(asdict(pr)) + "\n")
        print(f"preference data: {json.dumps(counts)} -> {out / 'pairs.jsonl'}")
    log: list[dict[str, float]] = []
    if not args.data_only:
        model = prepare_model(hub.resolve(args.model), cfg)
        tokenizer = hub.tokenizer(args.model)
        log = train_orpo(model, tokenizer, pairs, cfg)
        save_model(model, tokenizer, out, args.model, cfg.full)
        first, last = log[0]["loss"], log[-1]["loss"]
        print(f"trained {len(log)} steps on {len(pairs)} pairs: loss {first:.4f} -> {last:.4f}; saved to {out}")
    (out / "train_log.json").write_text(
        json.dumps({"model": args.model, "config": asdict(cfg), "data_counts": counts, "pairs": len(pairs), "steps": log},
                   indent=1),
        encoding="utf-8",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m longread.train.color``."""
    parser = argparse.ArgumentParser(prog="longread train color", description=__doc__.split("\n\n")[0])
    _arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
