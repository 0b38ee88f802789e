"""A model split over "devices" with accelerate's device_map traces and edits exactly like the unsplit one.

What this proves, on a CPU-only machine: the tiny Qwen2 model (and Gemma-3, whose post-norm path reads
W_out directly) is dispatched by accelerate with an explicit map that keeps the embedding and layers 0-1
resident and offloads layers 2-3 and the final norm (and the head) to disk. Every dispatched module then
runs under accelerate's hooks, and the offloaded ones hold meta placeholders between calls: their real
weights live in accelerate's offload map. So the tests fail if the code reads or edits a placeholder
instead of the real weight (an edit of layer 2 would change nothing and the edited logits would differ
from the unsplit model's; a fingerprint, `intattn check`'s hashes or a rollback would read meta), and they
check that every path runs through the dispatched model with the unsplit model's numbers: the partial
forwards (tracing's fast path, the targets' suffix pass, FT's layers above) call the hooked
layers, statistics, keys and targets are computed from them, deltas equal, rollback restores every stored
tensor bit-for-bit, evaluation and generation agree.

What it cannot prove without two GPUs: every module here *executes* on the CPU, so a tensor left on the
wrong device cannot raise. The code moves activations with a few helpers (devices.py, `Llama.at`, the
`.to(...)` where partial forwards end and where two layers' tensors meet), but a cross-device operation we
missed would only show up on a real multi-GPU split (docs/models.md: "Models larger than one device").
"""

import json

import pytest
import torch

from intattn_tl.data.records import EditRecord
from intattn_tl.model.devices import named_stored
from intattn_tl.api import edit
from intattn_tl.methods.alphaedit import AlphaEditHparams
from intattn_tl.methods.ft import FTHparams
from intattn_tl.methods.intattn import IntAttnHparams
from intattn_tl.methods.memit import MEMITHparams
from intattn_tl.methods.r_rome import RROMEHparams
from intattn_tl.methods.rome import ROMEHparams
from intattn_tl.model.load import load_model
from intattn_tl.model.spec import weights_fingerprint
from intattn_tl.locate.tracing import trace_fact

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
         "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "disk", "lm_head": "disk"}
REC = [EditRecord(id="t/0", prompt="The capital of Spain is", subject="Spain", target_new="Rome", ground_truth=("Madrid",)),
       EditRecord(id="t/1", prompt="Ada Lovelace was born in", subject="Ada Lovelace", target_new="Paris", ground_truth=("London",))]
FAST = dict(mom2_n_samples=256, v_num_grad_steps=5, use_prefixes=False)
IDS = torch.tensor([[ord(c) % 200 for c in "The Eiffel Tower is in"]])
HPARAMS = {  # layer 1 is resident, layer 2 offloaded: both kinds of weight get edited
    "memit": MEMITHparams(layers=[1, 2], mom2_update_weight=10.0, **FAST),
    "intattn": IntAttnHparams(layers=[1, 2], attn_layers=[0, 2], alpha=0.3, mom2_update_weight=10.0,
                              attn_mom2_update_weight=10.0, **FAST),
    "rome": ROMEHparams(layers=[2], **FAST),
    "r-rome": RROMEHparams(layers=[2], **FAST),
    "alphaedit": AlphaEditHparams(layers=[1, 2], nullspace_threshold=1e3, **FAST),  # tiny model: a wide null space
    "ft": FTHparams(layers=[2], lr=5e-3, num_steps=5, norm_constraint=0.0),
}


@pytest.fixture(scope="module")
def models():
    return load_model("tiny-qwen2"), load_model("tiny-qwen2", device_map=SPLIT)


def _logits(model):
    with torch.no_grad():
        return model.bridge(IDS)


def _stored(model):
    return {name: t.clone() for name, t in named_stored(model.hf_model)}


def test_split_is_dispatched_offloaded_and_equal(models):
    plain, split = models
    assert set(split.hf_model.hf_device_map.values()) == {"cpu", "disk"}
    down = split.hf_model.model.layers[2].mlp.down_proj
    assert down.weight.device.type == "meta"  # the parameter is a placeholder: the real weight is elsewhere
    assert torch.equal(split.spec.w_out[2], plain.spec.w_out[2])  # ... and spec.w_out finds it
    assert weights_fingerprint(split) == weights_fingerprint(plain)  # caches are shared between the two
    assert torch.equal(_logits(split), _logits(plain))
    from intattn_tl.evaluation.metrics import answer_argmax, generate

    pairs = [(IDS[0, :6].tolist(), IDS[0, 6:9].tolist()), (IDS[0, :4].tolist(), IDS[0, 4:6].tolist())]
    assert answer_argmax(split, pairs) == answer_argmax(plain, pairs)
    assert torch.equal(generate(split, [p for p, _ in pairs], 4), generate(plain, [p for p, _ in pairs], 4))


def test_auto_map_within_max_memory_offloads_the_rest():
    model = load_model("tiny-qwen2", device_map="auto", max_memory={"cpu": 400_000})
    assert {"cpu", "disk"} <= set(model.hf_model.hf_device_map.values())
    assert torch.allclose(_logits(model), _logits(load_model("tiny-qwen2")), atol=1e-5)


def test_tracing_on_the_split_model_equals_unsplit(models):
    plain, split = models
    args = ("The Eiffel Tower is in", "Eiffel Tower", " Paris")
    kw = dict(n_samples=2, window=2, kinds=("attn", "mlp_window"))
    a, b = trace_fact(plain, *args, **kw), trace_fact(split, *args, **kw)
    assert (a.answer_token, a.contrast_token) == (b.answer_token, b.contrast_token)
    assert torch.allclose(torch.tensor(b.prob), torch.tensor(a.prob), atol=1e-5)
    assert torch.allclose(torch.tensor(b.logit_diff), torch.tensor(a.logit_diff), atol=1e-4)


def _edit_both(plain, split, method, hp, tmp_path, monkeypatch):
    """Edit both models alike; rollback must be bit-exact on each; the deltas and edited logits must agree."""
    results = {}
    for name, model in (("plain", plain), ("split", split)):
        monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / name))  # both compute statistics and targets themselves
        before, logits0 = _stored(model), _logits(model)
        res = edit(model, REC, method, hp)
        results[name] = ({k: d.clone() for k, d in res.deltas.items()}, _logits(model))
        res.rollback()
        after = _stored(model)
        assert all(torch.equal(after[k], before[k]) for k in before), f"{name}: rollback not bit-exact"
        assert torch.equal(_logits(model), logits0)
    (d_plain, l_plain), (d_split, l_split) = results["plain"], results["split"]
    assert d_plain.keys() == d_split.keys() and any(k.endswith(".2") for k in d_split)
    for k in d_plain:
        assert torch.allclose(d_split[k], d_plain[k], rtol=1e-4, atol=1e-5), k
    assert not torch.allclose(l_split, _logits(split), atol=1e-3)  # the edit changed what the split model says
    assert torch.allclose(l_split, l_plain, atol=1e-4)


@pytest.mark.parametrize("method", list(HPARAMS))
def test_edit_on_the_split_model_equals_unsplit_and_rolls_back(models, method, tmp_path, monkeypatch):
    _edit_both(*models, method, HPARAMS[method], tmp_path, monkeypatch)


def test_gemma_split_edit_through_the_post_norm(tmp_path, monkeypatch):
    """Gemma-3 maps the target through its post-norm, reading W_out directly: offloaded, that is the stored copy."""
    tied = {**SPLIT, "lm_head": "cpu"}  # Gemma's head is the embedding: one device for both
    plain, split = load_model("tiny-gemma3"), load_model("tiny-gemma3", device_map=tied)
    _edit_both(plain, split, "memit", HPARAMS["memit"], tmp_path, monkeypatch)


@pytest.mark.parametrize("command", ["eval", "edit", "trace", "models", "check", "reproduce"])
def test_every_model_loading_command_takes_a_device_map(command):
    from intattn_tl.cli import build_parser
    from intattn_tl.cli.common import placement

    extra = {"trace": ["--out", "x"], "models": [], "reproduce": ["table2"]}.get(command, [])
    args = build_parser([command]).parse_args([command, *extra, "--device-map", "auto", "--max-memory", "cpu=2GiB"])
    assert placement(args) == {"device": "cpu", "device_map": "auto", "max_memory": {"cpu": "2GiB"}}


def test_cli_loads_a_split_model_and_refuses_bad_placements(capsys):
    from intattn_tl.cli import main

    assert main(["models", "tiny-qwen2", "--device-map", json.dumps(SPLIT)]) == 0
    assert "device_map: cpu x4, disk x4" in capsys.readouterr().out
    assert main(["models", "tiny-qwen2", "--device-map", "auto", "--max-memory", "cpu=400000"]) == 0  # bytes
    assert "disk x" in capsys.readouterr().out
    for argv, message in ((["--device-map", "{oops"], "not 'auto' nor a JSON object"),
                          (["--device-map", '{"lm_head": "gpu"}'], "not a torch device"),
                          (["--device-map", '{"lm_head": 99}'], "'cuda:99'"),
                          (["--device-map", "auto", "--max-memory", "cpu=lots"], "is not a size"),
                          (["--max-memory", "cpu=1GiB"], "needs --device-map")):
        assert main(["models", "tiny-qwen2", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv


@pytest.mark.parametrize("name, short, alpha, attn", [
    ("Qwen/Qwen2.5-7B", "qwen2.5-7b", 0.3, [2, 3, 4]), ("/data/ckpt/Qwen2.5-7B-Instruct/", "qwen2.5-7b", 0.3, [2, 3, 4]),
    ("mistralai/Mistral-7B-v0.1", "mistral-7b", 0.1, [3, 4, 5, 6]), ("/data/Mistral-7B-v0.1", "mistral-7b", 0.1, [3, 4, 5, 6])])
def test_paper_7b_settings_are_found_by_hub_id_or_folder_name(name, short, alpha, attn):
    from intattn_tl.config.hparams import hparams_name, load_hparams

    assert hparams_name(name) == short
    hp = load_hparams("intattn", name)
    assert (hp.alpha, hp.layers, hp.attn_layers) == (alpha, [4, 5, 6, 7, 8], attn)
    assert load_hparams("memit", name).layers == [4, 5, 6, 7, 8]
    assert hparams_name("someone/Other-7B") == "someone/Other-7B"


def test_intattn_check_mechanics_pass_on_the_split_model(models):
    from intattn_tl.diagnostics import check

    plain, split = models
    rows = check.run_checks(split, [])
    assert [r.ok for r in rows] == [True] * 5, check.format_rows(rows)
    assert check.param_hashes(split) == check.param_hashes(plain)  # the stored weights, not meta placeholders
