"""One run dir's lifecycle: lock, record of inputs, resume checks, appends, and one finalize.

A run dir holds ``config.yaml`` (the resolved config), ``run.json`` (seed, versions, inputs and
their digests), ``questions.jsonl`` (the questions answered), ``predictions.jsonl`` (one line per
question, fsynced as it finishes), ``metrics.json``, ``per_question.jsonl`` and ``report.md``.

- **One writer**: :meth:`RunDir.lock` takes an exclusive ``flock`` on ``RUN_DIR/.lock``; a second
  ``longread run`` (or ``eval``) into the same dir fails at once naming the first one's pid. The
  kernel drops the lock when its holder dies, so ``kill -9`` leaves no stale lock.
- **Resume checks every input**: ``run.json`` records the sha256 of the resolved config, of the
  questions (their content, and the file's bytes when there is a file) and the index digest
  (:func:`longread.pipelines.indexdir.index_digest`). ``--resume`` with any of them changed is
  refused with what changed (another questions file, questions whose text or answers changed,
  another index, config fields).
- **Nothing blocks a rerun for nothing**: ``predictions.jsonl`` is created with the first answer,
  and an empty one left by a run that failed during setup does not count as "holds predictions".
- **One finalize** (:meth:`RunDir.finalize`) scores the predictions once and writes
  ``metrics.json``, ``per_question.jsonl`` and ``report.md`` from the same rows, for both
  ``longread run`` and ``longread eval``; ``index_seconds`` comes from ``run.json`` either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from ..errors import short_repr
from ..io import WriterLock, atomic_write_json, atomic_write_text, sha256_file
from ..types import Prediction, Question

__all__ = ["RunDir", "RunDirError", "questions_digest", "PREDICTIONS"]

PREDICTIONS = "predictions.jsonl"
CONFIG = "config.yaml"
RUN_JSON = "run.json"
QUESTIONS = "questions.jsonl"
METRICS = "metrics.json"
LOCK = ".lock"


class RunDirError(ValueError):
    """A run dir that cannot be used as asked (holds predictions without --resume, changed inputs, ...)."""


def questions_digest(questions: Sequence[Question]) -> str:
    """sha256 over the questions' canonical JSON, in order (what ``--resume`` compares)."""
    h = hashlib.sha256()
    for q in questions:
        h.update(q.model_dump_json().encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RunDir:
    """A run dir at ``path`` (created on :meth:`lock`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.predictions = self.path / PREDICTIONS
        self.config = self.path / CONFIG
        self.run_json = self.path / RUN_JSON
        self.questions = self.path / QUESTIONS
        self.metrics = self.path / METRICS
        self._lock = WriterLock(self.path / LOCK, f"run dir {str(self.path)!r}", reentrant=True)

    # -- one writer -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Create the dir and hold its writer lock inside the block.

        Raises ``NotADirectoryError`` when ``path`` is a file and :class:`longread.errors.LockedError`
        when another process writes the dir.
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--out {str(self.path)!r} is a file, not a run dir; choose a directory")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                yield self
            finally:
                if created and self._lock.outermost:
                    self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        # A run that failed before writing anything (bad config, missing file) leaves no empty
        # dir behind; done while the lock is held, so no other writer can be inside.
        with contextlib.suppress(OSError):
            if [p.name for p in self.path.iterdir()] == [LOCK]:
                (self.path / LOCK).unlink()
                self.path.rmdir()

    # -- what is there ----------------------------------------------------------------------
    def holds_predictions(self) -> bool:
        """True when ``predictions.jsonl`` has any content (an empty file is a failed start, not a run)."""
        if not self.predictions.is_file() or self.predictions.stat().st_size == 0:
            return False
        with open(self.predictions, "rb") as f:
            while buf := f.read(1 << 16):
                if buf.strip():
                    return True
        return False

    def record(self) -> dict[str, Any]:
        """The parsed ``run.json`` ({} when absent; ``RunDirError`` when unreadable)."""
        if not self.run_json.is_file():
            return {}
        try:
            rec = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise RunDirError(f"{self.run_json} is not valid JSON ({short_repr(str(e))}); the run dir is damaged") from None
        if not isinstance(rec, dict):
            raise RunDirError(f"{self.run_json} must hold a JSON object, got {type(rec).__name__}")
        return rec

    # -- starting and resuming --------------------------------------------------------------
    def check_fresh_or_resume(self, resume: bool) -> None:
        """Refuse a dir that holds predictions unless ``resume``; remove an empty leftover file."""
        if self.holds_predictions():
            if not resume:
                raise RunDirError(
                    f"{str(self.path)!r} already holds predictions; pass --resume to continue it or choose another --out"
                )
        elif self.predictions.exists():
            self.predictions.unlink()  # empty: left by a run that failed before its first answer

    def check_inputs(self, config_yaml: str, questions: Sequence[Question], questions_file: str | Path | None) -> None:
        """On resume: raise ``RunDirError`` saying what changed in the config or the questions.

        A run dir from an older longread (no digests) is checked on its config only.
        """
        old = self.record()
        changes: list[str] = []
        if self.config.is_file():
            old_cfg = self.config.read_text(encoding="utf-8")
            if config_digest(old_cfg) != config_digest(config_yaml):
                changes.append(f"config: it was run with a different config ({_config_diff(old_cfg, config_yaml)})")
        digests = old.get("digests") or {}
        if digests.get("questions_sha256") and digests["questions_sha256"] != questions_digest(questions):
            changes.append("questions: " + self._questions_diff(old, questions, questions_file))
        if changes:
            raise RunDirError(
                f"cannot resume {str(self.path)!r}: its inputs changed — {'; '.join(changes)}. "
                "Resume with the same inputs, or answer the new ones into another --out"
            )

    def check_index(self, digest: str | None, index_dir: Path) -> None:
        """On resume: raise ``RunDirError`` when the run's index is not the one it answered from."""
        old = self.record()
        was = (old.get("digests") or {}).get("index")
        if was and digest and was != digest:
            raise RunDirError(
                f"cannot resume {str(self.path)!r}: its inputs changed — index: the run answered from "
                f"{old.get('index_dir')!r} (digest {was[:12]}), now {str(index_dir.resolve())!r} (digest {digest[:12]}), "
                "another corpus or build. Resume with the same --index, or answer into another --out"
            )

    def _questions_diff(self, old: dict[str, Any], new: Sequence[Question], questions_file: str | Path | None) -> str:
        parts = []
        old_path = (old.get("inputs") or {}).get("questions")
        new_path = str(Path(questions_file).resolve()) if questions_file else None
        if old_path and new_path and old_path != new_path:
            parts.append(f"another questions file ({old_path} → {new_path})")
        if self.questions.is_file():
            from ..data import load_questions

            before = {q.id: q for q in load_questions(self.questions)}
            after = {q.id: q for q in new}
            changed = []
            for qid, q in before.items():
                if qid in after and after[qid] != q:
                    fields = [f for f in ("question", "answers", "doc_ids", "gold_ids") if getattr(q, f) != getattr(after[qid], f)]
                    changed.append(f"{qid!r} ({', '.join(fields) or 'content'})")
            gone = [qid for qid in before if qid not in after]
            if changed:
                parts.append(f"{len(changed)} question(s) with the same id but changed content, e.g. {', '.join(changed[:3])}")
            if gone:
                parts.append(f"{len(gone)} answered question id(s) no longer present, e.g. {', '.join(map(repr, gone[:3]))}")
        if not parts:
            was = (old.get("digests") or {}).get("questions_sha256", "")
            parts.append(f"the question set differs (content sha256 {was[:12]} → {questions_digest(new)[:12]})")
        return "; ".join(parts)

    def begin(self, config_yaml: str, questions: Sequence[Question], record: dict[str, Any]) -> None:
        """Write ``config.yaml``, ``questions.jsonl`` (the questions to answer) and ``run.json``."""
        from ..data import write_jsonl

        atomic_write_text(self.config, config_yaml)
        write_jsonl(self.questions, questions)
        atomic_write_json(self.run_json, record)

    # -- answering --------------------------------------------------------------------------
    def done_ids(self, *, retry_failed: bool = False) -> set[str]:
        """Ids already answered, after cutting off a torn last line (a kill mid-write).

        ``retry_failed`` (what ``--resume`` does) first drops the predictions that carry an
        ``error`` (a server that went away, a timeout), so those questions are answered again and
        ``predictions.jsonl`` keeps one line per question. The file is replaced atomically: a kill
        during the rewrite leaves the old file, and a kill after it leaves those questions unanswered,
        which the next ``--resume`` answers.
        """
        from ..eval.evaluator import read_predictions

        repair_torn_tail(self.predictions)
        if not self.predictions.is_file():
            return set()
        preds = read_predictions(self.predictions)
        if retry_failed and any(p.error is not None for p in preds):
            kept = [p for p in preds if p.error is None]
            atomic_write_text(self.predictions, "".join(p.model_dump_json() + "\n" for p in kept))
            preds = kept
        return {p.id for p in preds}

    @contextlib.contextmanager
    def appender(self) -> Iterator[Callable[[Prediction], None]]:
        """A function that appends one prediction line and fsyncs it; the file opens on first use."""
        f = None

        def append(pred: Prediction) -> None:
            nonlocal f
            try:
                if f is None:
                    f = open(self.predictions, "a", encoding="utf-8")
                f.write(pred.model_dump_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                if e.filename is not None:
                    raise
                raise type(e)(e.errno, e.strerror, str(self.predictions)) from e  # write() names no file

        try:
            yield append
        finally:
            if f is not None:
                with contextlib.suppress(OSError):  # a full disk fails the close too; the write already raised
                    f.close()

    # -- scoring ----------------------------------------------------------------------------
    def finalize(
        self,
        questions: Sequence[Question] | str | Path | None = None,
        *,
        metric_style: str | None = None,
        allow_missing: bool = False,
        config_name: str | None = None,
        k_values: Sequence[int] | None = None,
        write: bool = True,
    ) -> dict[str, Any]:
        """Score ``predictions.jsonl`` once; write ``metrics.json``, ``per_question.jsonl`` and ``report.md``.

        ``questions``: None for the run dir's own ``questions.jsonl`` (predictions of questions not
        in it — answered under a larger ``--limit`` — are left out), a path or a list (every
        prediction must then match a question). ``metric_style`` and ``config_name`` default to
        what ``run.json`` recorded; ``index_seconds`` is copied from it. Returns the metrics.
        Raises ``FileNotFoundError`` for missing files and ``EvalError`` / ``DataError`` for bad ones.
        """
        from ..data import load_questions
        from ..eval.evaluator import DEFAULT_K_VALUES, aggregate, read_predictions, score_predictions
        from ..eval.report import run_name, write_report

        rec = self.record()
        style = metric_style or rec.get("metric_style") or "squad"
        own = questions is None
        if questions is None:
            if not self.questions.is_file():
                raise FileNotFoundError(f"{self.path} has no {QUESTIONS}; pass the questions file the run answered")
            questions = load_questions(self.questions)
        elif isinstance(questions, (str, Path)):
            questions = load_questions(questions)
        if not self.predictions.is_file():
            raise FileNotFoundError(f"{str(self.path)!r} has no {PREDICTIONS}; is it a run dir?")
        preds = read_predictions(self.predictions)
        if own:
            wanted = {q.id for q in questions}
            preds = [p for p in preds if p.id in wanted]
        ks = tuple(k_values) if k_values is not None else DEFAULT_K_VALUES
        rows = score_predictions(preds, list(questions), k_values=ks, metric_style=style, allow_missing=allow_missing)  # type: ignore[arg-type]
        metrics = aggregate(rows, k_values=ks)
        metrics["metric_style"] = style
        if rec.get("index_seconds") is not None:
            metrics["index_seconds"] = rec["index_seconds"]
        if write:
            atomic_write_json(self.metrics, metrics)
            write_report(self.path, metrics, config_name or rec.get("config_name") or run_name(self.path), rows=rows)
        return metrics


def repair_torn_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) off ``predictions.jsonl``, if there is one."""
    if not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "r+b") as f:
        # Look back only as far as the last newline: the file may be large.
        pos, tail = size, b""
        while pos > 0 and b"\n" not in tail:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
        nl = tail.rfind(b"\n")
        good_end = pos + nl + 1 if nl >= 0 else 0
        if good_end != size:
            f.truncate(good_end)


def _config_diff(old_yaml: str, new_yaml: str) -> str:
    try:
        a, b = yaml.safe_load(old_yaml), yaml.safe_load(new_yaml)
    except yaml.YAMLError:
        return "config.yaml differs"
    diffs: list[str] = []
    _diff(a, b, "", diffs)
    if not diffs:
        return "config.yaml differs"
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return ", ".join(diffs[:3]) + more


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(dict.fromkeys([*a, *b])):
            _diff(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{where}.{k}" if where else str(k), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where or '<root>'} {short_repr(a, 60)} → {short_repr(b, 60)}")


def file_digest(path: str | Path | None) -> str | None:
    """sha256 of a file's bytes, or None when ``path`` is None or not a file."""
    if path is None or not Path(path).is_file():
        return None
    return sha256_file(path)


def config_digest(config_yaml: str) -> str:
    """sha256 of the resolved config's content (key order and YAML layout do not count)."""
    try:
        data = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return _sha256_text(config_yaml)
    return _sha256_text(json.dumps(data, sort_keys=True, ensure_ascii=False))
