"""One generation layer for every LLM stage.

- :mod:`.types`: :class:`GenRequest` in, :class:`Generation` out.
- :mod:`.spec`: :class:`LLMSpec` — backend (``hf`` | ``llamacpp`` | ``openai`` | ``vllm``) and model.
- :mod:`.base`: the :class:`Backend` interface and :func:`load_backend`.
- :mod:`.prompts`: answer styles (``short`` / ``span`` / ``free`` / ``cite``), templates, cleaners, citations.
- :mod:`.params`: params mixins for stages; :mod:`.usage`: the one place usage is recorded.
"""

from .base import Backend, load_backend
from .spec import BACKENDS, LLMSpec
from .types import GenRequest, Generation

__all__ = ["Backend", "BACKENDS", "GenRequest", "Generation", "LLMSpec", "load_backend"]
