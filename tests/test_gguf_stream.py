"""The streamed GGUF -> checkpoint conversion against transformers' own GGUF load, on tiny GGUF files written here."""

import json

import numpy as np
import pytest
import torch

from intattn_tl.model import gguf_stream

D, FF, HEADS, KV, VOCAB, LAYERS = 64, 128, 4, 2, 320, 2


def write_tiny_gguf(path, arch="llama", tied=False, drop=(), seed=0):
    """A random model in GGUF form: quantized matrices (Q4_0, Q8_0, Q5_1), an F16 one, F32 norms; qwen2 adds
    q/k/v biases, gemma3 its q/k norms and post-norms (stored as 1 + w, which transformers undoes). Names and
    metadata as llama.cpp writes them, so transformers reads it like a real file."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_context_length(128)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_embedding_length(D)
    w.add_rope_dimension_count(D // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    if arch == "gemma3":
        w.add_key_length(D // HEADS)
        w.add_value_length(D // HEADS)
        w.add_sliding_window(64)

    def add(name, shape, qtype):
        if name in drop:
            return
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    hd = D // HEADS
    add("token_embd.weight", (VOCAB, D), Q.Q4_0)
    if not tied:
        add("output.weight", (VOCAB, D), Q.Q8_0)
    add("output_norm.weight", (D,), Q.F32)
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (D,), Q.F32)
        add(f"blk.{i}.attn_q.weight", (HEADS * hd, D), Q.Q8_0)
        add(f"blk.{i}.attn_k.weight", (KV * hd, D), Q.Q5_1)
        add(f"blk.{i}.attn_v.weight", (KV * hd, D), Q.F16)
        if arch == "qwen2":
            add(f"blk.{i}.attn_q.bias", (HEADS * hd,), Q.F32)
            add(f"blk.{i}.attn_k.bias", (KV * hd,), Q.F32)
            add(f"blk.{i}.attn_v.bias", (KV * hd,), Q.F32)
        if arch == "gemma3":
            add(f"blk.{i}.attn_q_norm.weight", (hd,), Q.F32)
            add(f"blk.{i}.attn_k_norm.weight", (hd,), Q.F32)
            add(f"blk.{i}.post_attention_norm.weight", (D,), Q.F32)
            add(f"blk.{i}.post_ffw_norm.weight", (D,), Q.F32)
        add(f"blk.{i}.attn_output.weight", (D, HEADS * hd), Q.Q8_0)
        add(f"blk.{i}.ffn_norm.weight", (D,), Q.F32)
        add(f"blk.{i}.ffn_gate.weight", (FF, D), Q.Q4_0)
        add(f"blk.{i}.ffn_up.weight", (FF, D), Q.Q8_0)
        add(f"blk.{i}.ffn_down.weight", (D, FF), Q.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def _old_path(gguf, dtype, folder):
    """What the cache held before streaming: transformers' GGUF load, the quantizer dropped, save_pretrained."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    model.config.architectures = [type(model).__name__]
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("arch, tied", [("llama", False), ("llama", True), ("qwen2", False), ("gemma3", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_checkpoint_is_the_bytes_transformers_writes(tmp_path, monkeypatch, arch, tied, dtype):
    """Same files, byte for byte, as loading the GGUF with transformers and saving it; with blocks so small that
    every matrix is streamed in pieces (Llama's q/k, which transformers permutes, fall back to whole ones)."""
    from transformers import AutoModelForCausalLM

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", arch, tied)
    monkeypatch.setattr(gguf_stream, "BLOCK_BYTES", 2048)  # 8 rows of 64 float32 values
    seen = []
    blocks = gguf_stream.GGUFTensors.blocks
    monkeypatch.setattr(gguf_stream.GGUFTensors, "blocks",
                        lambda self, p, dt: (seen.append(p.name) or b for b in blocks(self, p, dt)))
    old = _old_path(gguf, dtype, tmp_path / "old")
    (tmp_path / "new").mkdir()
    gguf_stream.write_checkpoint(gguf, tmp_path / "new", dtype, ARCH[arch])

    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes(), name
    assert seen.count("model.embed_tokens.weight") == VOCAB // 8  # streamed in 40 blocks
    # Llama's q/k are permuted by transformers' processor, so whole; Qwen2 has no processor
    assert seen.count("model.layers.0.self_attn.q_proj.weight") == (1 if arch == "llama" else D // 8)
    assert ("lm_head.weight" in seen) is not tied
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "new", dtype=dtype)
    expect, got = old.state_dict(), new.state_dict()
    assert expect.keys() == got.keys()
    assert all(torch.equal(expect[k], got[k]) and got[k].dtype == dtype for k in expect)
    assert old.config.tie_word_embeddings is tied and new.config.tie_word_embeddings is tied


def test_table_read_without_metadata_strings_matches_ggufs_reader(tmp_path):
    from gguf import GGUFReader

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2")
    architecture, table = gguf_stream.read_table(gguf)
    reader = GGUFReader(gguf)
    assert architecture == "qwen2" and list(table) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        stored = table[t.name]
        assert (stored.ggml_type, stored.shape, stored.offset, stored.nbytes) == (
            t.tensor_type, tuple(reversed(t.shape.tolist())), t.data_offset, t.n_bytes)


def test_gguf_missing_a_tensor_is_refused_before_any_weight_is_written(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", drop=("blk.1.ffn_down.weight",))
    (tmp_path / "out").mkdir()
    with pytest.raises(gguf_stream.GGUFStreamError, match=r"missing \['model\.layers\.1\.mlp\.down_proj\.weight'\]"):
        gguf_stream.write_checkpoint(gguf, tmp_path / "out", torch.float32, "LlamaForCausalLM")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(gguf_stream.GGUFStreamError, match="is not a GGUF file"):
        gguf_stream.read_table(bad)


def test_written_header_is_what_safetensors_reads(tmp_path):
    """The writer alone, on blocks of a known tensor: safetensors reads back names, shapes, dtype and values,
    and a tensor whose blocks do not fill its header's bytes is an error."""
    from safetensors.torch import load_file

    values = {"a.weight": torch.arange(12.0).reshape(4, 3), "b.bias": torch.tensor([1.5, -2.0])}
    planned = [gguf_stream.Planned(n, n, tuple(t.shape)) for n, t in sorted(values.items())]
    path = tmp_path / "x.safetensors"
    gguf_stream.write_safetensors(path, planned, torch.bfloat16, lambda p, dt: iter(values[p.name].to(dt).split(1)))
    back = load_file(path)
    assert back.keys() == values.keys()
    assert all(torch.equal(back[n], values[n].to(torch.bfloat16)) for n in values)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}
    with pytest.raises(gguf_stream.GGUFStreamError, match="wrote 8 bytes, its header says 48"):
        gguf_stream.write_safetensors(path, planned, torch.float32, lambda p, dt: iter([values[p.name][:2].view(-1)[:2]]))
