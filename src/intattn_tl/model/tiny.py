"""Tiny randomly initialised models with a byte-level tokenizer, one per supported family (unit tests)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: one token per byte, plus <pad>/<bos>/<eos>."""

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


FAST_KINDS = ("llama", "qwen2", "mistral", "gemma3")  # families with a hand-written adapter
GENERIC_KINDS = ("gpt2", "neox", "gptj", "opt", "phi")  # edited through the bridge's hooks (families/generic.py)
TINY_KINDS = FAST_KINDS + GENERIC_KINDS


def _generic_config(kind: str, tok, n_layers: int):
    """Configs of the architectures without a fast adapter, at the fast tiny models' sizes."""
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    v = len(tok)
    return {  # GPT-2: Conv1D projections with biases; NeoX / GPT-J / Phi: parallel attention and MLP
        "gpt2": lambda: (GPT2Config(vocab_size=v, n_embd=64, n_inner=128, n_layer=n_layers, n_head=4,
                                    n_positions=256, **ids), GPT2LMHeadModel),
        "neox": lambda: (GPTNeoXConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                                       num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.25,
                                       use_parallel_residual=True, tie_word_embeddings=False, **ids),
                         GPTNeoXForCausalLM),
        "gptj": lambda: (GPTJConfig(vocab_size=v, n_embd=64, n_inner=128, n_layer=n_layers, n_head=4, n_positions=256,
                                    rotary_dim=8, tie_word_embeddings=False, **ids), GPTJForCausalLM),
        # OPT's own ReLU leaves some of 128 random neurons dead on every statistics token: C singular
        "opt": lambda: (OPTConfig(vocab_size=v, hidden_size=64, ffn_dim=128, num_hidden_layers=n_layers,
                                  num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64,
                                  activation_function="gelu", **ids), OPTForCausalLM),
        "phi": lambda: (PhiConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                                  num_attention_heads=4, max_position_embeddings=256, **ids), PhiForCausalLM),
    }[kind]()


def tiny_model(kind: str = "llama", seed: int = 0, n_layers: int = 4):
    """A randomly initialised model of a real architecture, small enough for unit tests.

    llama: tied embeddings. qwen2: q/k/v biases, untied lm_head. mistral: every layer a 12-token sliding
    window (shorter than test prompts, so the window matters). gemma3: post-norms, sliding layers of 64.
    gpt2, neox, gptj, opt, phi (GENERIC_KINDS): random biases everywhere, so the bias terms count."""

    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; use one of {TINY_KINDS}")
    tok = byte_tokenizer()
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    config, cls = _generic_config(kind, tok, n_layers) if kind in GENERIC_KINDS else {
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
            elif kind in GENERIC_KINDS and pname.endswith("bias"):
                p.normal_(0.0, 0.5)
    return model.eval(), tok
