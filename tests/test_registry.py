"""The lazy stage registry: built-ins by ``module:Class``, entry points by key, nothing heavy imported early."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from longread import registry
from longread.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "faiss", "ray", "sentence_transformers", "llama_index")


def _python(code: str, *, extra_path: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); return its JSON on stdout."""
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_and_loading_the_shipped_configs_import_nothing_heavy() -> None:
    got = _python(f"""
        import contextlib, glob, io, json, sys
        from longread.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
        after_help = [m for m in {HEAVY!r} if m in sys.modules]
        from longread.config import load_config
        files = sorted(glob.glob("{ROOT}/configs/*.yaml") + glob.glob("{ROOT}/longread/configs/*.yaml"))
        stages = sorted({{s.key for f in files for s in load_config(f).stages}})
        print(json.dumps({{"help": after_help, "configs": [m for m in {HEAVY!r} if m in sys.modules],
                          "n": len(files), "stages": stages}}))
    """)
    assert got["help"] == [] and got["configs"] == []
    assert got["n"] >= 10 and {"retriever.dense", "reader.hf", "reader.refrag"} <= set(got["stages"])


def test_builtin_table_lists_every_registered_class() -> None:
    # Every class decorated with @register in the package must be in _BUILTINS under its own key,
    # or lookups by key would miss it (the table is what makes lookups lazy).
    found = {}
    for path in sorted((ROOT / "longread").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "register" for d in node.decorator_list):
                for st in node.body:
                    target = st.targets[0] if isinstance(st, ast.Assign) else getattr(st, "target", None)
                    if getattr(target, "id", None) == "key" and isinstance(st.value, ast.Constant):
                        found[st.value.value] = f"{module}:{node.name}"
    assert found == registry._BUILTINS


def test_lookup_imports_only_the_stage_asked_for() -> None:
    got = _python("""
        import json, sys
        from longread import registry
        keys = registry.keys()
        before = [m for m in sys.modules if m.startswith(("longread.readers", "longread.retrievers", "longread.compressors"))]
        cls = registry.get("reorder.hard_negative")
        after = sorted(m for m in sys.modules if m.startswith(("longread.readers", "longread.retrievers", "longread.compressors")))
        print(json.dumps({"keys": keys, "before": before, "after": after, "key": cls.key}))
    """)
    assert "reader.hf" in got["keys"] and "retriever.bm25" in got["keys"]
    assert got["before"] == [] and got["key"] == "reorder.hard_negative"
    assert got["after"] == ["longread.retrievers", "longread.retrievers.reorder"]


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(registry.UnknownStageError, match=r"unknown stage key 'reader\.nope'; valid keys: .*reader\.echo"):
        registry.get("reader.nope")
    with pytest.raises(ConfigError, match=r"stages\[0\]: unknown stage key 'reader\.nope'"):
        parse_config({"name": "x", "stages": [{"key": "reader.nope"}]})


def _heavy_package(tmp_path: Path) -> Path:
    """A stage package whose stage module imports a 'heavy' module at the top, with light Params."""
    pkg = tmp_path / "heavypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bigdep.py").write_text("LOADED = True  # stands in for torch\n")
    (pkg / "params.py").write_text(textwrap.dedent("""
        from pydantic import Field
        from longread.stage import Params

        class ShoutParams(Params):
            times: int = Field(default=1, gt=0)
    """))
    (pkg / "stage.py").write_text(textwrap.dedent("""
        import heavypkg.bigdep  # heavy, at the top
        from longread.stage import Stage
        from heavypkg.params import ShoutParams

        class Shout(Stage):
            key = "reader.shout"
            Params = ShoutParams

            def __call__(self, batch):
                for s in batch:
                    s.answer = s.question.question.upper() * self.params.times
                return batch
    """))
    return tmp_path


def test_declared_params_path_validates_without_importing_the_stage(tmp_path: Path) -> None:
    root = _heavy_package(tmp_path)
    got = _python("""
        import json, sys
        from longread import registry
        from longread.config import ConfigError, parse_config
        registry.declare("reader.shout", "heavypkg.stage:Shout", params="heavypkg.params:ShoutParams")
        parse_config({"name": "x", "stages": [{"key": "reader.shout", "params": {"times": 2}}]})
        try:
            parse_config({"name": "x", "stages": [{"key": "reader.shout", "params": {"times": 0}}]})
            bad = None
        except ConfigError as e:
            bad = str(e)
        light = "heavypkg.bigdep" not in sys.modules
        cls = registry.get("reader.shout")
        print(json.dumps({"light": light, "bad": bad, "heavy_after_get": "heavypkg.bigdep" in sys.modules,
                          "key": cls.key, "same_params": registry.params("reader.shout") is cls.Params}))
    """, extra_path=root)
    assert got["light"] and got["heavy_after_get"] and got["same_params"] and got["key"] == "reader.shout"
    assert "stages[0] (reader.shout): field 'times'" in got["bad"] and "(got 0)" in got["bad"]


def test_entry_point_named_by_key_loads_on_first_use(tmp_path: Path) -> None:
    root = _heavy_package(tmp_path)
    dist = root / "heavypkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: heavypkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[longread.stages]\nreader.shout = heavypkg.stage:Shout\n")
    got = _python("""
        import json, sys
        from longread import registry
        listed = "reader.shout" in registry.keys()
        before = "heavypkg.stage" in sys.modules
        from longread.pipelines.pipeline import Pipeline
        from longread.types import Question
        pipe = Pipeline.from_config({"name": "x", "stages": [{"key": "reader.shout", "params": {"times": 2}}]})
        (st,) = pipe.answer([Question(id="q", question="hi")])
        print(json.dumps({"listed": listed, "before": before, "answer": st.answer}))
    """, extra_path=root)
    assert got == {"listed": True, "before": False, "answer": "HIHI"}


def test_register_still_works_and_guards_keys() -> None:
    from longread.stage import Stage

    class Local(Stage):
        key = "reader.test_local_registry"

    assert registry.register(Local) is Local and registry.get("reader.test_local_registry") is Local
    assert "reader.test_local_registry" in registry.keys()

    class Clash(Stage):
        key = "reader.echo"

    with pytest.raises(ValueError, match="stage key 'reader.echo' is taken by longread.fakes"):
        registry.register(Clash)

    class NoKind(Stage):
        key = "shout"

    with pytest.raises(ValueError, match="NoKind.key must look like 'kind.name', got 'shout'"):
        registry.register(NoKind)
    with pytest.raises(ValueError, match="import path must look like 'module:Name'"):
        registry.declare("reader.x_bad_path", "no_colon_here")
