"""The edited model out: an exported folder loads in plain transformers (another process, no intattn_tl) and
gives the in-memory edited model's logits; the card records the edit; a bad target folder loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from intattn_tl.api import edit
from intattn_tl.data.records import EditRecord
from intattn_tl.edit.export import CARD_FILE, ExportError, edit_card, export_model
from intattn_tl.edit.transaction import EditState
from intattn_tl.methods.memit import MEMITHparams
from intattn_tl.model.load import load_model
from intattn_tl.model.tiny import TINY_KINDS

FACT = EditRecord(id="f", prompt="The capital of Zorbania is", subject="Zorbania", target_new="Quix",
                  ground_truth=("Zorb",))
PROMPT = "The capital of Zorbania is"
# Runs in a fresh interpreter with intattn_tl kept off the path: what a user of the exported folder has.
LOAD = """
import json, os, sys
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "intattn_tl"))]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
try:
    import intattn_tl  # noqa: F401
    raise SystemExit("intattn_tl importable in the plain process")
except ImportError:
    pass
folder, prompt, eager = sys.argv[1], sys.argv[2], sys.argv[3] == "eager"
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, **({"attn_implementation": "eager"} if eager else {}))
ids = tok(prompt, return_tensors="pt")["input_ids"]
with torch.no_grad():
    print(json.dumps({"ids": ids[0].tolist(), "dtype": str(model.dtype), "logits": model(ids).logits[0, -1].tolist()}))
"""


def _plain_logits(folder, prompt, eager=False):
    """Logits of `prompt` from the exported folder in a plain process; `eager`: the attention kernel the bridge runs
    (the default, sdpa, sums in another order)."""
    out = subprocess.run([sys.executable, "-c", LOAD, str(folder), prompt, "eager" if eager else "default"],
                         capture_output=True, text=True,
                         timeout=600, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["ids"], got["dtype"], torch.tensor(got["logits"])


def _bridge_logits(model, ids):
    with torch.no_grad():
        return model.bridge(torch.tensor([ids]))[0, -1].float()


def _export_edited_and_compare(model, tmp_path, hp):
    result = edit(model, [FACT], "memit", hp, EditState(data={"prefixes": [""]}))
    try:
        folder = export_model(model, tmp_path / "edited", [edit_card(result)])
        ids, dtype, plain = _plain_logits(folder, PROMPT)
        edited = _bridge_logits(model, ids)
    finally:
        result.rollback()
    unedited = _bridge_logits(model, ids)
    assert (edited - unedited).abs().max() > 1e-3  # the edit moved these logits
    torch.testing.assert_close(plain, edited, atol=2e-4, rtol=1e-4)  # and the export carries it
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["base_model"] == model.name and card["edits"][0]["method"] == "memit"
    assert card["edits"][0]["requests"][0]["target_new"] == "Quix" and card["code"]["package"]
    assert "Zorbania" in (folder / "README.md").read_text()
    assert dtype == "torch.float32"
    return folder


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_export_loads_in_plain_transformers_with_the_edited_logits(request, name, tmp_path):
    model = request.getfixturevalue(name)
    hp = MEMITHparams(layers=[1, 2], mom2_update_weight=1.0, mom2_n_samples=256, v_num_grad_steps=10,
                      clamp_norm_factor=10.0, v_lr=0.5, v_lr_units="absolute")
    folder = _export_edited_and_compare(model, tmp_path, hp)
    with pytest.raises(ExportError, match="exists"):
        export_model(model, folder)
    assert (folder / CARD_FILE).is_file()  # the refused export left the earlier one whole


def test_unwritable_folder_is_refused_cleanly(tiny_llama, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write"):
        export_model(tiny_llama, blocker / "out")
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.real_model
def test_export_of_edited_smollm(smollm, tmp_path):
    hp = MEMITHparams(layers=[3, 4], mom2_n_samples=20_000, v_num_grad_steps=10, v_lr=0.5, v_lr_units="absolute")
    _export_edited_and_compare(smollm, tmp_path, hp)


def test_apply_cli_exports_a_saved_edit_and_generate_shows_before_after(tiny_llama, tmp_path, capsys):
    from intattn_tl.cli import main

    hp = MEMITHparams(layers=[1, 2], mom2_update_weight=1.0, mom2_n_samples=256, v_num_grad_steps=10,
                      clamp_norm_factor=10.0, v_lr=0.5, v_lr_units="absolute")
    result = edit(tiny_llama, [FACT], "memit", hp, EditState(data={"prefixes": [""]}))
    try:
        saved = result.save(tmp_path / "edit.pt")
        ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
        edited = _bridge_logits(tiny_llama, ids)
    finally:
        result.rollback()
    assert main(["apply", str(saved), "--model", "tiny-llama", "--export", str(tmp_path / "out")]) == 0
    assert "exported it to" in capsys.readouterr().out
    _, _, plain = _plain_logits(tmp_path / "out", PROMPT)
    torch.testing.assert_close(plain, edited, atol=2e-4, rtol=1e-4)
    assert json.loads((tmp_path / "out" / CARD_FILE).read_text())["edits"][0]["method"] == "memit"
    assert main(["apply", str(saved), "--model", "tiny-llama", "--export", str(tmp_path / "out")]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-llama", "--apply", str(saved), "--tokens", "3", PROMPT]) == 0
    out = capsys.readouterr().out
    assert PROMPT in out and "before:" in out and "after:" in out
    assert main(["generate", "--model", str(tmp_path / "out"), "--tokens", "3", PROMPT]) == 0  # the export loads too


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_export_of_every_tiny_architecture_carries_the_edit_exactly(kind, tmp_path):
    """In float64, so that the comparison is exact: in float32 an edit with large entries (tiny models' statistics
    are poorly conditioned) turns the different summation order of the bridge's and plain transformers' kernels into
    differences of ~1e-5 relative (6e-4 on GPT-J's residual at norm 44), which vanish (~1e-12) in float64."""
    model = load_model(f"tiny-{kind}", dtype=torch.float64)
    hp = MEMITHparams(layers=[1, 2], mom2_update_weight=1.0, mom2_n_samples=256, v_num_grad_steps=10,
                      clamp_norm_factor=10.0, v_lr=0.5, v_lr_units="absolute")
    result = edit(model, [FACT], "memit", hp, EditState(data={"prefixes": [""]}))
    try:
        folder = export_model(model, tmp_path / "edited", [edit_card(result)])
        ids, dtype, plain = _plain_logits(folder, PROMPT, eager=True)
        edited = _bridge_logits(model, ids).double()
    finally:
        result.rollback()
    assert dtype == "torch.float64"
    assert (edited - _bridge_logits(model, ids).double()).abs().max() > 1e-3  # the edit moved these logits
    # 1e-6, not 1e-12: NeoX's float64 copies already differ by 5e-8 before any edit (the in-memory rotary
    # frequencies were cast to float64); GPT-J's residuals agree to 1e-12
    torch.testing.assert_close(plain.double(), edited, atol=1e-6, rtol=1e-6)
