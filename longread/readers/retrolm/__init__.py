"""``reader.retrolm``: KV-level retrieval over pages of a long input (after RetroLM).

RetroLM ("Does RAG Really Perform Bad For Long-Context Processing?") retrieves at the level of
the model's own key/value cache instead of text chunks. Written from the paper's description (no
official code exists), in one module per step:

1. :mod:`.prompt` — the prompt *prefix* (chat template up to the document) and the question
   *suffix* around the scoped document(s); the prefix plus the first ``sink_tokens`` document
   tokens form the **sink**, the rest is cut into **pages** of ``page_size`` tokens.
2. :mod:`.prefill` — **bounded prefill**: each page attends only to the sink and the
   ``local_pages`` pages before it, at compact positions, so documents longer than the model's
   window work. Keys are stored rotated at their prefill position and moved with
   :func:`longread.readers.kvcache.rerotate_keys`; per page, position-free key summaries.
3. :mod:`.store` — the **page store**: one dir per document (meta file + one file per page, written
   as pages are prefilled, renamed into place when complete), reused by every later question on
   that document (a new process too; ``precompute: true`` builds them at index time). A question
   reads the meta file and only the pages it selected: memory is bounded by the window and the
   budget, not by the document length.
4. :mod:`.scoring` — **page scoring** from the KV: the question's query vectors against each
   page's key summaries (``quest``: the Quest upper bound, ``mean_key``), or a small trained
   scorer on the same features (:mod:`.trained`, ``longread train retrolm``; ``scorer: trained``
   is the one shipped for smollm2-135m-instruct with 128-token pages: answer page kept by the
   default selection 76% of the time on held-out SQuAD articles vs 55% for ``quest``). The model
   itself is never changed.
5. :mod:`.select` — **selection**: the last ``recent_pages`` pages plus the best-scored pages,
   each followed by ``follow_pages`` next pages, within ``budget_tokens`` document tokens.
6. :mod:`.decode` — sink + selected pages assembled into one cache (``positions: compact``
   re-rotates them to contiguous positions, ``original`` keeps their place) and decoded with
   :func:`longread.llm.hf.decode`, the project's one decoding loop.
7. :mod:`.reader` — the stage (:class:`RetroLMReader`, params :class:`RetroLMParams`). Usage
   (tokens attended at decode, page prefill done now, new tokens, TTFT) is recorded as typed
   :class:`~longread.types.Usage`; ``trace`` keeps the pages selected and their spans.

The page-KV key hashes the document text, :data:`FORMAT_VERSION`, the model (name and config),
page size, dtype, sink/window params and the prompt prefix; caches of an older format have
another key and are rebuilt.
"""

from .params import DEFAULT_INSTRUCTION, RetroLMParams
from .reader import RetroLMReader, join_documents
from .store import FORMAT_VERSION, PagedDoc

__all__ = ["RetroLMParams", "RetroLMReader", "PagedDoc", "DEFAULT_INSTRUCTION", "FORMAT_VERSION", "join_documents"]
