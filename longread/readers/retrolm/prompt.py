"""RetroLM's prompt around the document: prefix (cached with the document's pages) and question suffix.

The user message is rendered once through the chat template with markers for the document and
the question; what precedes the document marker is the **prefix** (part of the sink and of the
page-KV cache key), what follows it, with the question filled in, is the **suffix** the model
reads after the selected pages. So the question must come after the document in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["DOC_MARK", "QUESTION_MARK", "check_order", "PromptLayout"]

DOC_MARK = "\u2063LONGREAD_DOCUMENT\u2063"
QUESTION_MARK = "\u2063LONGREAD_QUESTION\u2063"


def check_order(message: Callable[[str, str], str]) -> None:
    """Raise ``ValueError`` unless ``message(context, question)`` has the document once, then the question."""
    text = message(DOC_MARK, QUESTION_MARK)
    if text.count(DOC_MARK) != 1 or text.count(QUESTION_MARK) != 1 or text.index(DOC_MARK) > text.index(QUESTION_MARK):
        raise ValueError(
            "reader.retrolm needs {context} once and before {question} in its prompt: the document's KV is "
            "prefilled and cached before any question is known"
        )


@dataclass
class PromptLayout:
    """Token ids of the prompt around a document, for one tokenizer and one ``message(context, question)``."""

    tokenizer: Any
    message: Callable[[str, str], str]
    _prefix: list[int] | None = field(default=None, repr=False)

    def render(self, question: str) -> tuple[str, str]:
        """``(prefix text, suffix text)`` around the document for ``question``.

        Raises ``ValueError`` when the chat template does not keep the user message verbatim.
        """
        from ...llm.hf import render_chat

        text = render_chat(self.tokenizer, [{"role": "user", "content": self.message(DOC_MARK, QUESTION_MARK)}])
        if text.count(DOC_MARK) != 1 or text.count(QUESTION_MARK) != 1:
            raise ValueError("the model's chat template does not keep the user message verbatim")
        prefix, suffix = text.split(DOC_MARK)
        return prefix, suffix.replace(QUESTION_MARK, question)

    @property
    def prefix_ids(self) -> list[int]:
        """Token ids before the document (the same for every question)."""
        if self._prefix is None:
            prefix, _ = self.render("?")
            # Chat templates carry their own BOS; plain text gets the tokenizer's default specials.
            plain = not getattr(self.tokenizer, "chat_template", None)
            self._prefix = list(self.tokenizer(prefix, add_special_tokens=plain)["input_ids"])
        return self._prefix

    def suffix_ids(self, question: str) -> list[int]:
        """Token ids after the document: the question and the opened answer turn."""
        return list(self.tokenizer(self.render(question)[1], add_special_tokens=False)["input_ids"])

    def document(self, text: str, max_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and their character offsets.

        Raises ``ValueError`` for more than ``max_tokens`` tokens or none.
        """
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = list(enc["input_ids"])
        if len(ids) > max_tokens:
            raise ValueError(f"input has {len(ids)} tokens, more than max_input_tokens={max_tokens}")
        if not ids:
            raise ValueError("input document tokenizes to no tokens")
        return ids, [tuple(o) for o in enc["offset_mapping"]]

    def document_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no limit; for tests and tools)."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
