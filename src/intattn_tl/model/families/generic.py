"""Generic: any decoder-only architecture the TransformerLens bridge boots, edited through its hook points.

No hand-written code per architecture. W_out is the module that consumes `blocks.{l}.mlp.hook_post` and W_O
the one that consumes `blocks.{l}.attn.hook_z` (the bridge's own component mapping: the alias resolves to
`blocks.{l}.mlp.out.hook_in` / `blocks.{l}.attn.o.hook_in`, whose component wraps the HF module). They are
exposed as live [d_out, d_in] views: a Linear's weight as it is, a Conv1D's (GPT-2: [d_in, d_out]) as `.T`,
which is a view, so `add_` still edits the model in place. Biases stay where they are; an edit changes only
the weight, so the bias adds the same to the edited and the unedited output.

Nothing is assumed between W_out / W_O and the residual stream (no post-norm: `output_change` is R, as for
Llama). The bridge's `hook_mlp_out` / `hook_attn_out` *are* the residual contributions, so check.py's
projection rows say whether that holds for a given architecture.

The adapter cannot run one decoder block from its HF parts (`runs_blocks = False`): tracing uses the hooked
reference loop (`locate.tracing.trace_fact_loop`), target optimisation adds its delta with a hook at
`blocks.{L}.hook_resid_post` and runs the full bridge forward (`edit.targets.HookedSuffixes`), FT replaces
that residual the same way. Slower than the fast adapters, the same numbers (tests/test_generic.py holds
them equal on a Llama forced onto this adapter).

Parallel-residual blocks (GPT-J, GPT-NeoX with `use_parallel_residual`, Phi): attention and MLP both read
the block's input residual and the bridge has no `hook_resid_mid`; `parallel` is then True.
"""

from __future__ import annotations

from typing import Callable

from jaxtyping import Float
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from intattn_tl.errors import ModelLoadError
from intattn_tl.model.devices import stored
from intattn_tl.model.families.llama import HOOKS, raw

# the hook alias whose consumer is each edited matrix
CONSUMED = {"w_out": "blocks.{l}.mlp.hook_post", "w_o": "blocks.{l}.attn.hook_z"}


class Generic:
    name = "generic"
    model_type = None
    architectures: tuple[str, ...] = ()
    runs_blocks = False  # no partial forwards: tracing and targets go through the bridge's hooks

    def __init__(self, hf_model: nn.Module, bridge):
        self.hf_model = hf_model
        self.config = hf_model.config
        self.bridge = bridge
        self.n_layers = int(bridge.cfg.n_layers)
        self.embed = raw(hf_model.get_input_embeddings())
        names = set(bridge.hook_dict)
        self.parallel = bool(getattr(bridge.cfg, "parallel_attn_mlp", False)) or "blocks.0.hook_resid_mid" not in names
        # the statistics' documents are cut here: learned positions (GPT-2, OPT) and GPT-J's fixed rotary table
        # end at n_ctx, and the adapter cannot tell which rotary models would run past it
        self.max_tokens = int(bridge.cfg.n_ctx)
        self.hooks = tuple(h for h in HOOKS if not (self.parallel and h.endswith("hook_resid_mid")))
        self.check_hooks(bridge)
        self.modules = {kind: [self._consumer(bridge, alias.format(l=l)) for l in range(self.n_layers)]
                        for kind, alias in CONSUMED.items()}

    @staticmethod
    def _consumer(bridge, alias: str) -> nn.Module:
        """The HF module whose input hook `alias` is (`blocks.0.attn.hook_z` -> `blocks.0.attn.o`)."""
        name = bridge.hook_dict[alias].name
        if not name.endswith(".hook_in"):
            raise ModelLoadError(f"hook {alias} is {name}, not a module's input: the bridge does not say which "
                                 "module consumes it, so the edited matrix cannot be found")
        module = raw(bridge.get_submodule(name.removesuffix(".hook_in")))
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise ModelLoadError(f"{alias} feeds a {type(module).__name__}, not a Linear or Conv1D projection: "
                                 "nothing to edit as a linear associative memory there")
        return module

    def check_hooks(self, bridge) -> None:
        names = set(bridge.hook_dict)
        missing = [h.format(l=0) for h in self.hooks if h.format(l=0) not in names]
        if missing:
            raise ModelLoadError(f"the TransformerBridge for this {type(self.hf_model).__name__} lacks hooks {missing}")

    # ------------------------------------------------------------------------- the edited matrices

    def module(self, kind: str, layer: int) -> nn.Module:
        return self.modules[kind][layer]

    def weight(self, kind: str, layer: int) -> Float[Tensor, "d_out d_in"]:
        """A live [d_out, d_in] view (`.T` of a Conv1D weight)."""
        module = self.module(kind, layer)
        w = stored(module)
        return w.T if isinstance(module, Conv1D) else w

    def bias(self, kind: str, layer: int) -> Tensor | None:
        return getattr(self.module(kind, layer), "bias", None)

    def post_norm(self, kind: str, layer: int) -> nn.Module | None:
        return None

    def residual_change(self, kind: str, layer: int, key: Float[Tensor, "... d_in"],
                        dW: Float[Tensor, "d_out d_in"]) -> Float[Tensor, "... d_out"]:
        return key @ dW.T

    def output_change(self, kind: str, layer: int, K: Float[Tensor, "n d_in"],
                      R: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        return R

    def output_target(self, kind: str, layer: int, v: Float[Tensor, "... d"],
                      R: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return v + R.to(v)

    def output_emitter(self, kind: str, layer: int) -> Callable[[Tensor, Tensor], Tensor] | None:
        return None

    def describe(self) -> str:
        kinds = {k: type(self.module(k, 0)).__name__ for k in CONSUMED}
        return (f"family=generic (hooks only) arch={','.join(getattr(self.config, 'architectures', None) or [])} "
                f"w_out={kinds['w_out']} w_o={kinds['w_o']} parallel_residual={self.parallel} "
                f"biases={self.bias('w_out', 0) is not None}")
