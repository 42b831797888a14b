"""longread: retrieval-augmented generation over long inputs."""

from .types import Chunk, Document, Passage, Prediction, QAState, Question

__version__ = "0.1.0"

__all__ = ["Document", "Chunk", "Question", "Passage", "QAState", "Prediction", "__version__"]


def __getattr__(name: str):  # lazy: importing longread must not import torch or ray
    if name in {"Pipeline"}:
        from .pipelines.pipeline import Pipeline

        return Pipeline
    if name == "evaluate":
        from .eval.evaluator import evaluate

        return evaluate
    raise AttributeError(name)
