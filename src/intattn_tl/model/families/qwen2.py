"""Qwen2: a Llama decoder with biases on q/k/v (not on o_proj / down_proj, so the edited matrices and
their keys are as in Llama) and, in most checkpoints, an untied lm_head. The config may turn on sliding
windows for some layers (`use_sliding_window`, `max_window_layers`); transformers writes that into
`config.layer_types`, which the Llama adapter already follows. Nothing else differs for tracing or editing.
"""

from __future__ import annotations

from intattn_tl.model.families.llama import Llama


class Qwen2(Llama):
    name = "qwen2"
    model_type = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
