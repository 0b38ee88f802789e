"""Mistral: a Llama decoder whose every layer attends over a sliding window of `config.sliding_window`
tokens (HF's MistralModel uses the sliding-window mask for all layers whenever the window is set; the
config has no `layer_types`). Query i sees keys j with i - window < j <= i."""

from __future__ import annotations

from intattn_tl.model.families.llama import Llama


class Mistral(Llama):
    name = "mistral"
    model_type = "mistral"
    architectures = ("MistralForCausalLM",)

    def layer_types(self) -> list[str]:
        kind = "full_attention" if self.sliding_window is None else "sliding_attention"
        return [kind] * self.n_layers
