"""compare.html: tables and plots for several run dirs, self-contained."""

from __future__ import annotations

from pathlib import Path

from longread.cli import main
from longread.data import write_jsonl
from longread.eval.compare import load_run
from longread.eval.compare_html import agreement_matrix, route_shares

from test_pipeline import config, corpus, questions


def test_compare_configs_writes_md_and_html(tmp_path: Path) -> None:
    import yaml

    write_jsonl(tmp_path / "c.jsonl", corpus())
    qs = [q.model_copy(update={"doc_ids": None}) for q in questions(6)]
    write_jsonl(tmp_path / "q.jsonl", qs)
    a, b = dict(config(), name="echo3"), dict(config(words=1), name="echo1")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))
    out = tmp_path / "cmp"
    rc = main(["compare", "--configs", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--corpus", str(tmp_path / "c.jsonl"),
               "--questions", str(tmp_path / "q.jsonl"), "--out", str(out)])
    assert rc == 0
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "echo3" in page and "echo1" in page
    md = (out / "compare.md").read_text()
    assert "echo3" in md and "echo1" in md
    runs = [load_run(out / "echo3"), load_run(out / "echo1")]
    m = agreement_matrix(runs)
    assert m[0][0] == 1.0 and m[1][1] == 1.0 and 0.0 <= m[0][1] <= 1.0


def test_route_shares() -> None:
    preds = [{"trace": {"route": "rag"}}, {"trace": {"route": "rag"}}, {"trace": {"route": "fallback"}}, {"trace": {}}]
    assert route_shares(preds) == {"fallback": 1 / 3, "rag": 2 / 3}
    assert route_shares([{"trace": {}}]) is None
