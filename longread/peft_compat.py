"""Calls into peft without its transformers-5 deprecation noise.

peft (0.1x) asks transformers 5.x for ``is_gradient_checkpointing``, deprecated there in favour
of ``is_activation_checkpointing``: every LoRA wrap or adapter load printed a FutureWarning that
says nothing about the user's run. This filters exactly that message around peft calls.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

__all__ = ["quiet_peft"]


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Context manager: peft's ``is_gradient_checkpointing`` FutureWarning is not shown inside it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
