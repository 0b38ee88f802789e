"""A GGUF file written out as a plain Hugging Face checkpoint one tensor at a time, never the whole model in memory.

`transformers`' own GGUF load (the legacy loader, which Llama, Qwen2 and Gemma-3 still go through) dequantizes
every tensor into one state dict while the model it fills already exists: the model twice over, plus the
float32 dequantization of the largest tensor (for the 1.5B Qwen, a 233M-element embedding) and the GGUF file
itself, touched through a memory map. Here the model is built on the meta device only for its names, each
tensor is read from the file with plain reads, dequantized (large ones in blocks of rows, which ggml quantizes
independently) and cast to the target dtype straight into a safetensors file on disk; the caller then loads
that checkpoint the way every warm load does. The values are exactly those of `from_pretrained(gguf_file=)`:
same dequantization (`gguf.quants.dequantize`), same name map and per-architecture fixes (transformers'
`get_gguf_hf_weights_map` and `TENSOR_PROCESSORS`), same cast; the safetensors file has the byte layout
`save_pretrained` writes (header of sorted names, then the data in that order).
"""

from __future__ import annotations

import copy
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, dequantize
from jaxtyping import Float
from torch import Tensor
from transformers import AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import (
    TENSOR_PROCESSORS,
    TensorProcessor,
    get_gguf_hf_weights_map,
    load_gguf_checkpoint,
)
from transformers.modeling_utils import remove_tied_weights_from_state_dict
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from intattn_tl.errors import IntattnError

# A tensor larger than this in float32 is dequantized in blocks of rows: bounds what one tensor adds to the peak.
BLOCK_BYTES = 16 << 20

SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


class GGUFStreamError(IntattnError, RuntimeError):
    """The GGUF file's tensors do not cover the model transformers builds from its config (or cover more)."""


@dataclass(frozen=True)
class Planned:
    """One checkpoint tensor: its name in the model, the GGUF tensor it comes from, and its shape."""

    name: str
    gguf_name: str
    shape: tuple[int, ...]


def read_config(gguf: Path) -> dict:
    """transformers' legacy reading of the file's metadata into a config dict: what `AutoConfig` builds the
    config from and what the tensor processors are given (read once here; `AutoConfig.from_pretrained` and the
    loader would read the file twice more)."""

    return load_gguf_checkpoint(str(gguf), return_tensors=False)["config"]


def meta_model(raw_config: dict, dtype: torch.dtype, architecture: str):
    """The model transformers builds from the GGUF config, on the meta device (no memory for weights): the
    names, shapes and tied weights a checkpoint of it holds, its config and generation config."""

    config = CONFIG_MAPPING[raw_config["model_type"]].from_dict(copy.deepcopy(raw_config))  # as AutoConfig does
    # GGUF configs leave `architectures` empty; save_pretrained would write the class name, which is this.
    config.architectures = [architecture]
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def saved_names(model) -> list[str]:
    """The state-dict names `save_pretrained` writes for `model`: one of each tied group, sorted as safetensors
    sorts a single-dtype file."""

    return sorted(remove_tied_weights_from_state_dict(model.state_dict(), model))


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class Stored:
    """Where one tensor lies in a GGUF file and how it is stored."""

    ggml_type: int
    shape: tuple[int, ...]  # torch order (GGUF lists dimensions fastest-moving first)
    offset: int  # from the start of the file
    nbytes: int


def read_table(gguf: Path) -> tuple[str, dict[str, Stored]]:
    """The file's architecture and tensor table, without its tensor data. gguf's GGUFReader makes a numpy view
    of every metadata string (seconds for a 150k-token vocabulary); this skips the strings."""

    with open(gguf, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        def unpack(fmt: str, pos: int):
            return struct.unpack_from(fmt, m, pos), pos + struct.calcsize(fmt)

        def string(pos: int) -> tuple[bytes, int]:
            (n,), pos = unpack("<Q", pos)
            return m[pos:pos + n], pos + n

        def skip(kind: int, pos: int) -> int:
            if kind in _SCALAR:
                return pos + struct.calcsize(_SCALAR[kind])
            if kind == 8:
                return pos + 8 + struct.unpack_from("<Q", m, pos)[0]
            if kind == 9:
                (item, count), pos = unpack("<IQ", pos)
                if item in _SCALAR:
                    return pos + count * struct.calcsize(_SCALAR[item])
                for _ in range(count):
                    pos = skip(item, pos)
                return pos
            raise GGUFStreamError(f"{gguf.name}: metadata value of unknown type {kind}")

        if m[:4] != b"GGUF":
            raise GGUFStreamError(f"{gguf} is not a GGUF file")
        (version, n_tensors, n_kv), pos = unpack("<IQQ", 4)
        if version not in (2, 3):
            raise GGUFStreamError(f"{gguf.name}: GGUF version {version} (2 or 3 are read)")
        architecture, alignment = None, 32  # llama.cpp's default alignment
        for _ in range(n_kv):
            key, pos = string(pos)
            (kind,), pos = unpack("<I", pos)
            if key == b"general.architecture" and kind == 8:
                architecture = string(pos)[0].decode()
            elif key == b"general.alignment" and kind in _SCALAR:
                alignment = unpack(_SCALAR[kind], pos)[0][0]
            pos = skip(kind, pos)
        entries = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,), pos = unpack("<I", pos)
            dims, pos = unpack(f"<{n_dims}Q", pos)
            (ggml_type, offset), pos = unpack("<IQ", pos)
            entries.append((name.decode(), ggml_type, tuple(reversed(dims)), offset))
    data_start = (pos + alignment - 1) // alignment * alignment
    table = {}
    for name, ggml_type, shape, offset in entries:
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        table[name] = Stored(ggml_type, shape, data_start + offset, int(np.prod(shape, dtype=np.int64)) * type_size // block)
    if architecture is None:
        raise GGUFStreamError(f"{gguf.name} names no general.architecture")
    return architecture, table


class GGUFTensors:
    """The tensors of a GGUF file, read with plain file reads (not a memory map, whose touched pages would
    count towards this process's memory), dequantized and processed exactly as transformers' legacy GGUF
    loader does."""

    def __init__(self, gguf: Path, model, raw_config: dict):
        architecture, self.table = read_table(gguf)
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=raw_config)
        self.key_map = get_gguf_hf_weights_map(model, self.processor)
        self.path = gguf

    def plan(self, model) -> list[Planned]:
        """Every tensor of the checkpoint in the order of the safetensors file, each from exactly one GGUF tensor."""
        wanted = saved_names(model)
        state = model.state_dict()
        source: dict[str, str] = {}
        for gguf_name in self.table:
            hf = self.key_map.get(gguf_name)
            if hf is None:  # transformers skips these too (e.g. rope frequency tables)
                continue
            if hf in source:
                raise GGUFStreamError(f"{self.path.name}: {source[hf]} and {gguf_name} both map to {hf}")
            source[hf] = gguf_name
        missing = [n for n in wanted if n not in source]
        extra = [n for n in source if n not in wanted]
        if missing or extra:
            raise GGUFStreamError(f"{self.path.name} does not match the model transformers builds from it: "
                                  f"missing {missing[:5]}, unexpected {extra[:5]}")
        return [Planned(n, source[n], tuple(state[n].shape)) for n in wanted]

    def _read(self, gguf_name: str, rows: slice | None = None) -> np.ndarray:
        """The raw bytes of the tensor (or of a block of its leading rows), shaped [*leading dims, bytes of the
        last]: `gguf.quants.dequantize` gives the same values from this as from the reader's typed view."""

        stored = self.table[gguf_name]
        block, type_size = GGML_QUANT_SIZES[stored.ggml_type]
        byte_shape = (*stored.shape[:-1], stored.shape[-1] // block * type_size)
        if len(byte_shape) < 2 or rows is None:
            rows = slice(0, byte_shape[0] if len(byte_shape) > 1 else 1)
        row_bytes = stored.nbytes // (byte_shape[0] if len(byte_shape) > 1 else 1)
        buf = np.empty((rows.stop - rows.start) * row_bytes, dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek(stored.offset + rows.start * row_bytes)
            if f.readinto(memoryview(buf)) != buf.size:
                raise GGUFStreamError(f"{self.path.name}: {gguf_name} runs past the end of the file")
        return buf.reshape((rows.stop - rows.start, *byte_shape[1:]) if len(byte_shape) > 1 else byte_shape)

    def _passes_through(self, gguf_name: str) -> bool:
        """Whether the architecture's processor leaves this tensor's values alone. Processors decide by name and
        config, so they are asked with a stand-in of the tensor's shape that holds no memory."""
        stand_in = np.broadcast_to(np.float32(0), self.table[gguf_name].shape)
        result = self.processor.process(weights=stand_in, name=gguf_name, tensor_key_mapping=self.key_map,
                                        parsed_parameters={})
        return result.weights is stand_in and result.name == gguf_name

    def blocks(self, planned: Planned, dtype: torch.dtype) -> Iterator[Float[Tensor, "rows *rest"]]:
        """The tensor in `dtype`, as consecutive blocks of leading rows (one block unless it is large). Blocks
        dequantize independently (ggml quantizes each row on its own); a tensor the processor changes (Llama's
        q/k row permutation, Gemma's norm offset) is dequantized and processed whole, as transformers does."""

        rows = planned.shape[0] if planned.shape else 1
        per_block = max(1, BLOCK_BYTES // max(1, 4 * int(np.prod(planned.shape[1:], dtype=np.int64))))
        if len(planned.shape) < 2 or rows <= per_block or not self._passes_through(planned.gguf_name):
            yield self._whole(planned, dtype)
            return
        for start in range(0, rows, per_block):
            block = dequantize(self._read(planned.gguf_name, slice(start, min(rows, start + per_block))),
                               self.table[planned.gguf_name].ggml_type)
            # The row count is checked by the writer (bytes per tensor); the rest of the shape here.
            if tuple(block.shape[1:]) != planned.shape[1:]:
                raise GGUFStreamError(f"{self.path.name}: {planned.gguf_name} has rows of shape "
                                      f"{tuple(block.shape[1:])}, the model's {planned.name} {planned.shape[1:]}")
            yield _cast(block, dtype)

    def _whole(self, planned: Planned, dtype: torch.dtype) -> Tensor:
        weights = dequantize(self._read(planned.gguf_name), self.table[planned.gguf_name].ggml_type)
        result = self.processor.process(weights=weights, name=planned.gguf_name, tensor_key_mapping=self.key_map,
                                        parsed_parameters={})
        if result.name != planned.gguf_name:
            raise GGUFStreamError(f"{self.path.name}: the processor renames {planned.gguf_name} to {result.name}")
        tensor = _cast(result.weights, dtype)
        if tuple(tensor.shape) != planned.shape:
            raise GGUFStreamError(f"{self.path.name}: {planned.gguf_name} has shape {tuple(tensor.shape)}, "
                                  f"the model's {planned.name} {planned.shape}")
        return tensor


def _cast(weights: np.ndarray, dtype: torch.dtype) -> Tensor:
    # transformers' loader: torch.from_numpy(np.copy(w)).to(dtype); the copy only frees the array from its source
    return torch.from_numpy(np.ascontiguousarray(weights)).to(dtype)


def write_safetensors(path: Path, planned: list[Planned], dtype: torch.dtype,
                      blocks: Callable[[Planned, torch.dtype], Iterator[Tensor]]) -> None:
    """A single-dtype safetensors file written tensor by tensor: the header (every name, shape and offset, known
    up front) then each tensor's bytes as `blocks` yields them; a tensor whose bytes do not add up is an error."""
    item = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for p in planned:
        size = int(np.prod(p.shape, dtype=np.int64)) * item
        header[p.name] = {"dtype": SAFETENSORS_DTYPE[dtype], "shape": list(p.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for p in planned:
            written = 0
            for block in blocks(p, dtype):
                data = block.contiguous().view(-1).view(torch.uint8).numpy()
                f.write(memoryview(data))
                written += data.size
            begin, end = header[p.name]["data_offsets"]
            if written != end - begin:
                raise GGUFStreamError(f"{p.name}: wrote {written} bytes, its header says {end - begin}")


def write_checkpoint(gguf: Path, folder: Path, dtype: torch.dtype, architecture: str) -> None:
    """`folder` gets what `from_pretrained(gguf_file=...)` followed by `save_pretrained` wrote (weights, config,
    generation config), the weights streamed from the GGUF file one tensor at a time."""
    if dtype not in SAFETENSORS_DTYPE:
        raise GGUFStreamError(f"cannot write a {dtype} checkpoint (one of {', '.join(map(str, SAFETENSORS_DTYPE))})")
    raw_config = read_config(gguf)
    model = meta_model(raw_config, dtype, architecture)
    odd = {n: p.dtype for n, p in model.state_dict().items() if p.dtype != dtype}
    if odd:  # a module kept in float32 would need a per-tensor dtype; none of the supported families has one
        raise GGUFStreamError(f"{architecture} keeps {sorted(odd)[:3]} in another dtype than {dtype}")
    tensors = GGUFTensors(gguf, model, raw_config)
    write_safetensors(folder / "model.safetensors", tensors.plan(model), dtype, tensors.blocks)
    # What save_pretrained records besides the weights (it writes the model's dtype into the config).
    model.config.dtype = str(dtype).removeprefix("torch.")
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)
