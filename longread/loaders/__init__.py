"""Users' documents in: folders, globs and PDF/HTML/Markdown/text files (and corpus JSONL).

```python
from longread.loaders import load_documents, provenance

stream = load_documents("docs/", skip_bad=True)
for doc in stream:                     # Documents, one at a time
    ...
stream.report.skipped                  # [{"source", "kind", "reason"}]
provenance(doc.meta, 120, 480)         # {"source": "a/b.pdf", "pages": [2, 3], "heading": "Results"}
```

Benchmark files (LongBench, L-Eval, RULER, LoCoV1) convert to corpus + questions JSONL with
:mod:`longread.loaders.benchmarks` (``longread convert``).
"""

from .core import SUFFIXES, DocumentStream, LoadedCorpus, LoadError, LoadReport, load_documents
from .provenance import provenance

__all__ = ["SUFFIXES", "DocumentStream", "LoadedCorpus", "LoadError", "LoadReport", "load_documents", "provenance"]
