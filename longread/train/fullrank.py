"""Fine-tuning recipe for full-listwise reranking (``longread train fullrank``).

What "Sliding Windows Are Not the End" (Liu et al. 2024, repo RUC-NLPIR/fullrank) trains:

- Complete listwise labels: for each query, a full permutation of its candidates, written as
  the target answer ``[i] > [j] > ...`` after the same RankGPT prompt ``reranker.fullrank`` uses.
- The importance-aware loss: the NLL of each answer token, weighted by where it sits in the
  target ranking. Tokens of the identifier at rank ``r`` (1-based; digits and brackets alike)
  weigh ``1/log2(r + 1) + 1``; separator tokens (those holding ``>``) weigh 1 and move to the
  next rank; tokens after the last identifier (end of turn) keep the last rank's weight, as in
  the official code. The weighted sum is divided by the number of answer tokens (not by the
  sum of weights), again as the official code does.

Data here is built from local files, no downloads: SQuAD paragraphs (candidates = BM25 over the
question's article) or the HotpotQA sample (candidates = its gold + distractor paragraphs in
BM25 order), or any JSONL of ``{"query", "passages": [str], "order": [int]}``. Labels come from
answer containment (answer-containing and gold passages first, then retrieval order) or from a
teacher (``overlap``: query-word overlap, a model-free stand-in for a stronger ranker).

Runs on CPU with a small model (full fine-tune or LoRA via peft) and on a GPU with a real one;
the result is saved with ``save_pretrained`` (safetensors) and loads as a model path in
``reranker.fullrank``'s ``model`` param.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..retrievers.rerankers import OverlapRanker, listwise_messages, ranking_text

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IGNORE_INDEX",
    "RankExample",
    "rank_weight",
    "importance_weights",
    "weighted_nll",
    "encode_example",
    "containment_order",
    "build_examples",
    "load_examples_jsonl",
    "train",
    "add_parser",
    "run",
    "main",
]

IGNORE_INDEX = -100
_SEPARATOR = re.compile(r"[\s\[\]]*>[\s\[\]]*")


def rank_weight(rank: int) -> float:
    """The weight of an identifier at 1-based ``rank``: ``1/log2(rank + 1) + 1``."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return 1.0 / math.log2(rank + 1) + 1.0


def importance_weights(token_texts: Sequence[str]) -> list[float]:
    """Weights for the answer tokens (decoded one by one) of a ranking ``[i] > [j] > ...``.

    A token made of one ``>`` with only spaces and brackets around it is a separator: weight 1,
    and the next tokens belong to the next rank (special tokens like ``<|im_end|>`` are not).
    Every other token weighs ``rank_weight(rank)`` for the rank it belongs to.
    """
    out, rank = [], 1
    for t in token_texts:
        if _SEPARATOR.fullmatch(t):
            out.append(1.0)
            rank += 1
        else:
            out.append(rank_weight(rank))
    return out


def weighted_nll(logits: "torch.Tensor", labels: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """Importance-weighted causal-LM loss.

    ``logits`` (B, T, V) predict the token after each position; ``labels`` (B, T) hold the
    target ids with ``IGNORE_INDEX`` on prompt and padding; ``weights`` (B, T) the per-token
    weights. Returns ``sum(w * nll) / (number of labelled tokens)`` over shifted positions.
    Raises ``ValueError`` when no token is labelled.
    """
    import torch.nn.functional as F

    lg = logits[:, :-1, :].float()
    lb = labels[:, 1:]
    w = weights[:, 1:].float()
    active = lb.ne(IGNORE_INDEX)
    n = int(active.sum())
    if n == 0:
        raise ValueError("no labelled tokens in the batch (every label is IGNORE_INDEX)")
    logp = F.log_softmax(lg, dim=-1)
    nll = -logp.gather(-1, lb.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * w * active).sum() / n


@dataclass
class RankExample:
    """One training query: candidate texts in retrieval order and the target permutation (0-based)."""

    query: str
    passages: list[str]
    order: list[int]

    def __post_init__(self) -> None:
        if sorted(self.order) != list(range(len(self.passages))):
            raise ValueError(f"order must be a permutation of 0..{len(self.passages) - 1}, got {self.order}")
        if len(self.passages) < 2:
            raise ValueError(f"an example needs at least 2 passages, got {len(self.passages)}")


def encode_example(tokenizer: Any, ex: RankExample, *, word_budget: int) -> dict[str, list]:
    """Token ids, labels (prompt masked) and weights for one example.

    The prompt is the chat-templated RankGPT prompt with the generation prompt; the answer is
    the rest of the chat template applied with the target as the assistant's message, so it
    ends with the template's end-of-turn tokens. Prompt and answer are tokenized separately so
    the answer tokens are exactly what the model generates after the prompt.
    """
    msgs = listwise_messages(ex.query, ex.passages, word_budget=word_budget)
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    target = ranking_text(ex.order)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": target}], tokenize=False)
    if not full.startswith(prompt):
        # Some templates rewrite earlier turns; fall back to the bare target plus EOS.
        answer = target + (tokenizer.eos_token or "")
    else:
        answer = full[len(prompt) :]
    p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    a_ids = tokenizer.encode(answer, add_special_tokens=False)
    texts = [tokenizer.decode([t]) for t in a_ids]
    w = importance_weights(texts)
    return {
        "input_ids": p_ids + a_ids,
        "labels": [IGNORE_INDEX] * len(p_ids) + a_ids,
        "weights": [0.0] * len(p_ids) + w,
    }


def collate(encoded: list[dict[str, list]], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Right-pad a list of encoded examples into tensors (labels padded with IGNORE_INDEX)."""
    import torch

    t = max(len(e["input_ids"]) for e in encoded)
    ids, labels, weights, mask = [], [], [], []
    for e in encoded:
        pad = t - len(e["input_ids"])
        ids.append(e["input_ids"] + [pad_id] * pad)
        labels.append(e["labels"] + [IGNORE_INDEX] * pad)
        weights.append(e["weights"] + [0.0] * pad)
        mask.append([1] * len(e["input_ids"]) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "weights": torch.tensor(weights, dtype=torch.float32),
        "attention_mask": torch.tensor(mask),
    }


# ---------------------------------------------------------------------------------------
# Labels and data
# ---------------------------------------------------------------------------------------


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def containment_order(passages: Sequence[str], answers: Sequence[str], gold: Sequence[bool] | None = None) -> list[int]:
    """A full permutation: passages containing an answer (gold ones first), then gold ones, then
    the rest, each group in retrieval order. Containment is on lower-cased, punctuation-free text."""
    ans = [a for a in (_norm(x) for x in answers) if a]
    gold = list(gold) if gold is not None else [False] * len(passages)

    def key(i: int) -> tuple[int, int, int]:
        text = f" {_norm(passages[i])} "
        has = any(f" {a} " in text for a in ans)
        return (0 if has else 1, 0 if gold[i] else 1, i)

    return sorted(range(len(passages)), key=key)


def _bm25_order(query: str, texts: list[str]) -> list[int]:
    from rank_bm25 import BM25Okapi

    tok = [re.findall(r"\w+", t.lower()) or ["_"] for t in texts]
    scores = BM25Okapi(tok).get_scores(re.findall(r"\w+", query.lower()))
    return sorted(range(len(texts)), key=lambda i: (-scores[i], i))


def build_examples(
    source: str,
    data_dir: str | Path,
    *,
    max_queries: int,
    candidates: int,
    labels: str = "containment",
    articles: tuple[int, int] = (24, 48),
    seed: int = 0,
) -> list[RankExample]:
    """Training examples from a data folder with ``squad/`` and/or ``hotpotqa/`` (the public QA sets).

    ``source``: ``squad`` (paragraphs of SQuAD v1.1 dev articles ``articles[0]:articles[1]``;
    candidates = BM25 top ``candidates`` over the question's article) or ``hotpotqa`` (the
    explorer sample; candidates = its paragraphs in BM25 order). ``labels``: ``containment``
    or ``overlap`` (teacher). Queries whose candidates hold no answer are kept (the label is then
    retrieval order with gold first). Raises ``ValueError`` for an unknown source or labels.
    """
    from ..data import load_hotpotqa, load_squad

    data_dir = Path(data_dir)
    if source == "squad":
        path = data_dir / "squad" / "squad-dev-1.1.rebuilt.json"
        docs, qs = load_squad(path, as_long_documents=False, max_articles=articles[1])
        ordered_titles = list(dict.fromkeys(d.id.split("#p")[0] for d in docs))[articles[0] : articles[1]]
        keep_articles = set(ordered_titles)
        qs = [q for q in qs if q.gold_ids and q.gold_ids[0].split("#p")[0] in keep_articles]
    elif source == "hotpotqa":
        docs, qs = load_hotpotqa(data_dir / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json")
    else:
        raise ValueError(f"unknown source {source!r}; valid sources: squad, hotpotqa")
    if labels not in ("containment", "overlap"):
        raise ValueError(f"unknown labels {labels!r}; valid labels: containment, overlap")
    text = {d.id: d.text for d in docs}
    rng = random.Random(seed)
    rng.shuffle(qs)
    teacher = OverlapRanker()
    out: list[RankExample] = []
    for q in qs:
        if len(out) >= max_queries:
            break
        scope = q.doc_ids or []
        texts = [text[d] for d in scope]
        ranked = _bm25_order(q.question, texts)[:candidates]
        if len(ranked) < 2:
            continue
        cand_ids = [scope[i] for i in ranked]
        cand = [texts[i] for i in ranked]
        if labels == "containment":
            gold = [c in set(q.gold_ids or []) for c in cand_ids]
            order = containment_order(cand, q.answers, gold)
        else:
            order = teacher([(q.question, cand)])[0].parse.order
        out.append(RankExample(q.question, cand, order))
    return out


def load_examples_jsonl(path: str | Path) -> list[RankExample]:
    """Read ``{"query", "passages": [str], "order": [int]}`` lines; raise ``ValueError`` naming the line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append(RankExample(str(obj["query"]), [str(p) for p in obj["passages"]], [int(i) for i in obj["order"]]))
            except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{n}: bad example ({type(e).__name__}: {e})") from None
    return out


# ---------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------


def train(
    model: Any,
    tokenizer: Any,
    examples: list[RankExample],
    *,
    steps: int,
    lr: float = 1e-5,
    batch_size: int = 1,
    word_budget: int = 40,
    weighted: bool = True,
    seed: int = 0,
    log_every: int = 10,
    log: Any = None,
) -> list[float]:
    """Fine-tune ``model`` in place for ``steps`` optimizer steps with AdamW; return the losses.

    ``weighted=False`` gives the plain (all weights 1) NLL for ablation. Examples cycle in a
    seeded shuffled order. Raises ``ValueError`` for no examples or non-positive steps.
    """
    import torch

    if not examples:
        raise ValueError("no training examples")
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be > 0, got steps={steps} batch_size={batch_size}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = [encode_example(tokenizer, ex, word_budget=word_budget) for ex in examples]
    if not weighted:
        for e in encoded:
            e["weights"] = [0.0 if lab == IGNORE_INDEX else 1.0 for lab in e["labels"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    order: list[int] = []
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        if len(order) < batch_size:
            more = list(range(len(encoded)))
            rng.shuffle(more)
            order.extend(more)
        idx, order = order[:batch_size], order[batch_size:]
        b = collate([encoded[i] for i in idx], pad_id)
        out = model(input_ids=b["input_ids"].to(model.device), attention_mask=b["attention_mask"].to(model.device))
        loss = weighted_nll(out.logits, b["labels"].to(model.device), b["weights"].to(model.device))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if log is not None and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            log(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    return losses


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fullrank`` sub-command to an argparse ``subparsers``; sets ``func=run``."""
    p = subparsers.add_parser(
        "fullrank",
        help="fine-tune a full-listwise reranker with the importance-aware loss",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _arguments(p)
    p.set_defaults(func=run)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="hub name or local HF dir (default: %(default)s)")
    p.add_argument("--out", required=True, help="output dir for the fine-tuned model (save_pretrained, safetensors)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", choices=["squad", "hotpotqa"], default="squad", help="built-in data source")
    src.add_argument("--train-file", help='JSONL of {"query", "passages": [...], "order": [...]}')
    p.add_argument("--data", default=None, help="data dir with squad/ or hotpotqa/ (needed unless --train-file)")
    p.add_argument("--labels", choices=["containment", "overlap"], default="containment")
    p.add_argument("--max-queries", type=int, default=300)
    p.add_argument("--candidates", type=int, default=10, help="candidates per query (default %(default)s)")
    p.add_argument("--word-budget", type=int, default=40, help="words per passage in the prompt")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--unweighted", action="store_true", help="plain NLL (all answer tokens weight 1), for ablation")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (peft) instead of all weights; merged on save")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Build the data, fine-tune, save; returns 0. Raises ``ValueError`` on bad arguments."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("max_queries", "candidates", "word_budget", "steps", "batch_size", "lora_r"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.train_file:
        examples = load_examples_jsonl(args.train_file)[: args.max_queries]
    else:
        if not args.data:
            raise ValueError("pass --data DIR (with squad/ or hotpotqa/) or --train-file FILE")
        data = Path(args.data)
        if not data.is_dir():
            raise ValueError(f"data dir {str(data)!r} does not exist; pass --data or --train-file")
        examples = build_examples(
            args.source, data, max_queries=args.max_queries, candidates=args.candidates, labels=args.labels, seed=args.seed
        )
    path = Path(args.model)
    if not path.is_dir():
        from ..models.hub import ModelHub

        path = ModelHub(device=args.device).resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        from ..peft_compat import quiet_peft

        with quiet_peft():
            model = get_peft_model(
                model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
            )
    print(f"fullrank: {len(examples)} examples, {args.steps} steps, model {args.model}", flush=True)
    losses = train(
        model,
        tokenizer,
        examples,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        word_budget=args.word_budget,
        weighted=not args.unweighted,
        seed=args.seed,
        log=lambda m: print(m, flush=True),
    )
    if args.lora:
        model = model.merge_and_unload()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {k: v for k, v in vars(args).items() if k != "func"}
    info.update(examples=len(examples), first_loss=losses[0], last_loss=losses[-1])
    (out / "longread_train.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(f"saved to {out} (loss {losses[0]:.4f} -> {sum(losses[-10:]) / len(losses[-10:]):.4f})", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m longread.train.fullrank --out DIR ...``."""
    p = argparse.ArgumentParser(prog="longread train fullrank", description=__doc__.split("\n\n")[0] if __doc__ else None)
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
