"""Fake stages for tests (yours and ours): cheap, deterministic, registered like real ones.

- ``reader.echo``: answers with the first words of the best passage, and cites that passage as
  read (``cited=False``). It can be told to fail on
  questions containing a marker (to exercise error isolation) or to sleep per question (to have
  time to kill a run mid-way), or to kill its own worker once (to exercise Ray's retries).
  With ``index_part`` it also declares a sharded index part (words per chunk) whose map can sleep
  per shard (``index_sleep_s``: time to kill an indexing job mid-way).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import Field

from .citations import citations_for
from .llm.usage import record
from .registry import register
from .stage import ChunkShard, IndexBuilder, Params, RunContext, ShardedBuilder, Stage, timed
from .types import QAState

__all__ = ["EchoReader"]


class EchoParams(Params):
    """Params of ``reader.echo``."""

    words: int = Field(default=3, gt=0, description="how many words of the best passage to answer with")
    fail_on: str | None = Field(default=None, description="raise ValueError for questions containing this text")
    fail_while_exists: str | None = Field(
        default=None, description="with fail_on: fail only while this file exists (a passing fault, for --resume tests)")
    sleep_s: float = Field(default=0.0, ge=0, le=60, description="seconds to sleep per question")
    crash_once_file: str | None = Field(
        default=None,
        description="if this file does not exist yet: create it and kill the worker process (tests worker death)",
    )
    index_part: bool = Field(default=False, description="declare a sharded index part: the word count of every chunk")
    index_sleep_s: float = Field(default=0.0, ge=0, le=60, description="seconds the index part's map sleeps per shard")
    index_log: str | None = Field(default=None, description="append the number of each shard the index part maps to this file")


@register
class EchoReader(Stage):
    """Answer with the first ``words`` words of the top passage ("" when there is none)."""

    key = "reader.echo"
    Params = EchoParams

    def indexes(self) -> dict[str, IndexBuilder]:
        """With ``index_part``: ``echo-words`` (words per chunk, ``words.npy``), built shard by shard."""
        return {"echo-words": ShardedBuilder(map=self._count, reduce=self._join)} if self.params.index_part else {}

    def _count(self, ctx: RunContext, shard: ChunkShard, out: Path) -> None:
        time.sleep(self.params.index_sleep_s)
        if self.params.index_log:
            with open(self.params.index_log, "a") as f:
                f.write(f"{shard.index:05d}\n")
        np.save(out / "words.npy", np.asarray([len(t.split()) for t in shard.texts], dtype=np.int64))

    def _join(self, ctx: RunContext, shards: Sequence[Path], out: Path) -> None:
        parts = [np.load(d / "words.npy") for d in shards]
        np.save(out / "words.npy", np.concatenate(parts) if parts else np.zeros(0, np.int64))

    def setup(self, ctx: RunContext) -> None:
        """Keep the corpus's documents (they give provenance to chunks stored without it); with
        ``index_part``, check the part covers every chunk."""
        self.documents = ctx.store.documents if ctx.store is not None else None
        if self.params.index_part:
            words = np.load(ctx.index_part("echo-words") / "words.npy", mmap_mode="r")
            if len(words) != len(ctx.require_store()):
                raise ValueError(f"echo-words has {len(words)} rows for {len(ctx.require_store())} chunks; rebuild the index")

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        p: EchoParams = self.params  # type: ignore[assignment]
        if p.crash_once_file is not None and not os.path.exists(p.crash_once_file):
            open(p.crash_once_file, "w").close()
            os._exit(17)  # a worker dying mid-batch, as an OOM kill would
        with timed(batch, self.key):
            for s in batch:
                failing = p.fail_while_exists is None or os.path.exists(p.fail_while_exists)
                if p.fail_on is not None and p.fail_on in s.question.question and failing:
                    raise ValueError(f"question {s.question.id!r} contains {p.fail_on!r}")
                if p.sleep_s:
                    time.sleep(p.sleep_s)
                text = s.passages[0].text if s.passages else ""
                s.answer = " ".join(text.split()[: p.words])
                s.citations = citations_for(s.passages[:1], getattr(self, "documents", None), cited=False)
                # "Tokens" read are words here: there is no tokenizer.
                record(s, self.key, prompt_tokens=len(" ".join(x.text for x in s.passages).split()))
        return batch
