"""Config loading: validation before any model loads, errors that say where and list choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from longread.config import ConfigError, load_config, parse_config
from longread.pipelines.pipeline import resolve_config_path

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.stages and cfg.name


def test_required_configs_are_shipped() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"rag_bm25", "rag_dense", "rag_hybrid", "long_context"} <= names


def test_unknown_stage_key_names_file_stage_and_lists_keys(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\nstages:\n  - {key: retriever.bm25}\n  - {key: retriever.bm52}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "stages[1]" in msg and "retriever.bm52" in msg
    assert "retriever.bm25" in msg and "reader.echo" in msg  # the valid keys are listed


def test_wrong_param_type_names_stage_and_field(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\nstages:\n  - {key: reader.echo, params: {words: many}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "stages[0] (reader.echo)" in msg and "'words'" in msg and "many" in msg


def test_unknown_param_lists_valid_fields(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\nstages:\n  - {key: reader.echo, params: {wrds: 2}}\n")
    with pytest.raises(ConfigError, match="valid fields: crash_once_file, fail_on, sleep_s, words"):
        load_config(p)


def test_bad_chunker_kind_and_overlap(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chunker.kind"):
        parse_config({"name": "x", "chunker": {"kind": "pages"}, "stages": [{"key": "reader.echo"}]})
    with pytest.raises(ConfigError, match="overlap must be < size"):
        parse_config({"name": "x", "chunker": {"size": 10, "overlap": 10}, "stages": [{"key": "reader.echo"}]})


def test_bad_resources_and_empty_stages() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        parse_config({"name": "x", "stages": [{"key": "reader.echo", "resources": {"batch_size": 0}}]})
    with pytest.raises(ConfigError, match="stages"):
        parse_config({"name": "x", "stages": []})


def test_yaml_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\nstages: []\n")
    with pytest.raises(ConfigError):
        load_config(p)


def test_config_name_cannot_hold_a_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipeline name"):
        parse_config({"name": "../x", "stages": [{"key": "reader.echo"}]})


def test_builtin_config_names_resolve() -> None:
    assert resolve_config_path("rag_hybrid").name == "rag_hybrid.yaml"
    with pytest.raises(ConfigError, match="built-in name"):
        resolve_config_path("no_such_config")


def test_round_trip_yaml() -> None:
    cfg = parse_config({"name": "x", "stages": [{"key": "reader.echo", "params": {"words": 2}}]})
    again = parse_config(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg
