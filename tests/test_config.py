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
    with pytest.raises(ConfigError, match="valid fields: crash_once_file, fail_on, fail_while_exists, index_log, index_part, index_sleep_s, sleep_s, words"):
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


# --- configs whose meaning would be wrong are refused -----------------------------------------

PACKAGE_CONFIGS = sorted((Path(__file__).resolve().parent.parent / "longread" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PACKAGE_CONFIGS, ids=[p.stem for p in PACKAGE_CONFIGS])
def test_packaged_configs_load_under_strict_types_and_stage_order(path: Path) -> None:
    load_config(path).check_order(str(path))


_LEVELS = "abcdefghi"


def _bomb_yaml() -> str:
    # The classic "billion laughs" inside a validated field: each level repeats the previous one
    # nine times, so ``top_k`` holds 9**9 values once expanded (the config stays ~450 bytes).
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip(_LEVELS, _LEVELS[1:]):
        levels.append(f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "name: bomb\nstages:\n  - key: retriever.bm25\n    params:\n      top_k: [" + ", ".join(levels) + "]\n  - {key: reader.echo}\n"


def test_yaml_alias_bomb_in_a_validated_field_fails_fast_and_small(tmp_path: Path) -> None:
    import time
    import tracemalloc

    text = _bomb_yaml()
    assert len(text.encode()) < 700
    p = _write(tmp_path, text)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(p)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert dt < 1.0 and peak < 100 * 2**20, (dt, peak)
    assert "aliases" in str(e.value) and "line" in str(e.value) and len(str(e.value)) < 1000


def test_an_expanded_bomb_from_python_is_described_briefly() -> None:
    import time

    level: object = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9  # shared references: 9**9 values if printed in full
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        parse_config({"name": "x", "stages": [{"key": "retriever.bm25", "params": {"top_k": level}}]})
    assert time.perf_counter() - t0 < 1.0
    assert "top_k" in str(e.value) and len(str(e.value)) < 1000


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\nstages:\n  - key: retriever.bm25\n    params: {top_k: 3}\n    params: {top_k: 50}\n  - {key: reader.echo}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'params' \(first on line 4\).*line 5"):
        load_config(p)
    p = _write(tmp_path, "name: x\nname: y\nstages: [{key: reader.echo}]\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_config(p)


@pytest.mark.parametrize("value", ["true", '"3"', "3.0", "'7'"])
def test_ints_are_strict(tmp_path: Path, value: str) -> None:
    p = _write(tmp_path, f"name: x\nstages:\n  - {{key: retriever.bm25, params: {{top_k: {value}}}}}\n  - {{key: reader.echo}}\n")
    with pytest.raises(ConfigError, match=r"stages\[0\] \(retriever.bm25\).*'top_k'"):
        load_config(p)


def test_strict_types_in_resources_and_chunker_and_floats_take_ints() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        parse_config({"name": "x", "stages": [{"key": "reader.echo", "resources": {"batch_size": "8"}}]})
    with pytest.raises(ConfigError, match="size"):
        parse_config({"name": "x", "chunker": {"size": True}, "stages": [{"key": "reader.echo"}]})
    with pytest.raises(ConfigError, match="sleep_s"):
        parse_config({"name": "x", "stages": [{"key": "reader.echo", "params": {"sleep_s": "0.1"}}]})
    cfg = parse_config({"name": "x", "stages": [{"key": "reader.echo", "params": {"sleep_s": 0}, "resources": {"num_cpus": 2}}]})
    assert cfg.stages[0].resources.num_cpus == 2.0


@pytest.mark.parametrize(
    "keys, where",
    [
        (["reader.echo", "retriever.bm25"], r"stages\[1\] \(retriever.bm25\) is a retriever stage after stages\[0\] \(reader.echo\)"),
        (["retriever.bm25", "reorder.hard_negative", "compressor.extractive", "reader.echo"], r"stages\[2\] \(compressor.extractive\)"),
        (["retriever.bm25", "reader.echo", "reader.echo"], r"a second reader"),
    ],
)
def test_stage_order_is_checked_and_named(keys: list[str], where: str) -> None:
    with pytest.raises(ConfigError, match=where) as e:
        parse_config({"name": "x", "stages": [{"key": k} for k in keys]})
    assert "retrieve → rerank → compress → reorder → read" in str(e.value)


def test_whole_document_readers_need_no_retriever() -> None:
    for key in ("reader.long_context", "reader.retrolm", "reader.refrag"):
        parse_config({"name": "x", "chunker": {"kind": "whole"}, "stages": [{"key": key}]})


def test_to_yaml_writes_no_aliases_and_loads_back(tmp_path: Path) -> None:
    shared = {"encoder": "all-minilm-l6-v2"}
    cfg = parse_config({"name": "x", "stages": [{"key": "retriever.dense", "params": shared},
                                                  {"key": "compressor.extractive", "params": shared}, {"key": "reader.echo"}]})
    text = cfg.to_yaml()
    assert "&" not in text and "*" not in text
    assert load_config(_write(tmp_path, text)) == cfg


@pytest.mark.parametrize(
    "stage, params, field, words",
    [
        ("reader.hf", "{llm: {backend: grpc, model: m}}", "'llm.backend'", ["'hf'", "'llamacpp'", "'openai'", "'vllm'", "grpc"]),
        ("reader.long_context", "{llm: {backend: openai, model: m}}", "'llm'", ["needs base_url", "http://127.0.0.1:8080/v1"]),
        ("reader.hf", '{prompt: "Context: {context} Q: {question} Title: {title}"}', "'prompt'",
         ["unknown placeholder", "{title}", "{context}, {question}"]),
        ("reader.hf", "{prompt: terse}", "'prompt'", ["short, span, free, cite", "'terse'"]),
        ("reranker.first", "{llm: {backend: openai, model: m, base_url: 'http://127.0.0.1:8080/v1'}}", "'llm'",
         ["needs logits", "'openai'", "'hf' or 'llamacpp'"]),
        ("reranker.pointwise", "{llm: {backend: hf, model: m, base_url: 'http://127.0.0.1:8080/v1'}}", "'llm'",
         ["base_url is used only by backend openai"]),
        ("compressor.color", "{model: a, llm: {model: b}}", "", ["model='a'", "llm.model='b'", "disagree"]),
    ],
)
def test_bad_llm_params_name_file_stage_and_field(tmp_path: Path, stage: str, params: str, field: str, words: list[str]) -> None:
    p = _write(tmp_path, f"name: x\nstages:\n  - key: {stage}\n    params: {params}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and f"stages[0] ({stage})" in msg, msg
    assert f"field {field}" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_llm_block_and_model_shorthand_load(tmp_path: Path) -> None:
    p = _write(tmp_path, """name: x
stages:
  - key: reader.hf
    params:
      llm: {backend: openai, model: smollm2, base_url: "http://127.0.0.1:8080/v1", api_key_env: MY_KEY, concurrency: 4}
      prompt: cite
""")
    (reader,) = load_config(p).build_stages()
    p = _write(tmp_path, """name: y
stages:
  - key: reader.route
    params: {rag: {model: m, prompt: free, batch_size: 2}, fallback_params: {llm: {backend: llamacpp, model: m.gguf}}}
""")
    (route,) = load_config(p).build_stages()
    assert (reader.params.llm.backend, reader.params.llm.base_url, reader.params.prompt) == ("openai", "http://127.0.0.1:8080/v1", "cite")
    assert route.rag.params.llm.batch_size == 2 and route.fallback.params.llm.backend == "llamacpp"
