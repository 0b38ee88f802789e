"""`intattn edit` end to end on the tiny model: table, sequential batches, --save, and clear errors."""

import pytest
import torch

from intattn_tl.cli import main
from intattn_tl.edit.result import apply_saved
from intattn_tl.model.load import load_model

FAST = ["--model", "tiny-llama", "--dataset", "wiki_counterfact", "--limit", "2", "--no-fluency", "--quiet",
        "--set", "layers=[1, 2]", "--set", "mom2_n_samples=256", "--set", "v_num_grad_steps=3",
        "--set", "use_prefixes=false"]


def test_edit_prints_pre_post_table_and_saves(tmp_path, capsys):
    out = tmp_path / "edit.pt"
    rc = main(["edit", "--method", "intattn", "--alpha", "0.4", "--set", "attn_layers=[0]", *FAST, "--save", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Edit Succ." in text and "Locality" in text and "| pre |" in text and "| post |" in text
    assert "alpha=0.400" in text
    fresh = load_model("tiny-llama")
    before = fresh.spec.w_o[0].clone()
    tx = apply_saved(fresh, out)
    assert set(tx.deltas) == {("w_o", 0), ("w_out", 1), ("w_out", 2)}
    assert not torch.equal(fresh.spec.w_o[0], before)
    tx.rollback()
    assert torch.equal(fresh.spec.w_o[0], before)


def test_sequential_batches(tmp_path, capsys):
    out = tmp_path / "seq.pt"
    rc = main(["edit", "--method", "alphaedit", "--batch-size", "1", "--no-eval", *FAST,
               "--set", "nullspace_threshold=0.5", "--save", str(out)])
    assert rc == 0 and "2 edits in 2 batch(es)" in capsys.readouterr().out
    blob = torch.load(out, weights_only=True)
    assert blob["meta"]["n_records"] == 2 and set(blob["deltas"]) == {"w_out.1", "w_out.2"}


@pytest.mark.parametrize("extra, message", [
    (["--method", "intattn", "--alpha", "1.5"], "alpha"),
    (["--method", "memit", "--alpha", "0.5"], "unknown memit hyperparameter"),
    (["--method", "memit", "--set", "layers=[7]"], "layers"),
    (["--method", "memit", "--set", "oops"], "KEY=VALUE"),
    (["--method", "nope"], "unknown method"),
    (["--method", "memit", "--batch-size", "-1"], "batch-size"),
])
def test_bad_arguments_give_clear_errors(extra, message, capsys):
    assert main(["edit", *FAST, "--no-eval", *extra]) == 2
    assert message in capsys.readouterr().err


def test_hparams_file_for_another_model_is_refused(capsys):
    from intattn_tl.config.hparams import HPARAMS_DIR

    rc = main(["edit", *FAST, "--no-eval", "--method", "memit", "--hparams", str(HPARAMS_DIR / "memit" / "smollm2-135m.yaml")])
    assert rc == 2 and "smollm2-135m" in capsys.readouterr().err
