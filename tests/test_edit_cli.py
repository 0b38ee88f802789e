"""`intattn edit` end to end on the tiny model: table, sequential batches, --save, and clear errors."""

import json

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


def test_trace_with_a_saved_edit_applied_traces_the_edited_model_and_leaves_it_unedited(tmp_path, capsys):
    saved = tmp_path / "edit.pt"
    fact = ["The capital of Zorbania is", "Zorbania"]
    assert main(["edit", "--method", "memit", "--fact", *fact, "Quix", "--no-eval", "--quiet", "--model", "tiny-llama",
                 "--set", "layers=[1, 2]", "--set", "mom2_n_samples=256", "--set", "v_num_grad_steps=10",
                 "--set", "use_prefixes=false", "--save", str(saved)]) == 0
    model = load_model("tiny-llama")
    before = {k: v.clone() for k, v in ((("w_out", 1), model.spec.w_out[1]), (("w_out", 2), model.spec.w_out[2]))}
    common = ["trace", "--model", "tiny-llama", "--fact", *fact, "Quix", "--samples", "2", "--window", "2",
              "--kinds", "attn_window,mlp_window", "--min-ld-gap=-inf", "--no-wandb"]
    p_clean = {}
    for name, extra in (("unedited", []), ("edited", ["--apply", str(saved)])):
        main([*common, "--out", str(tmp_path / name), *extra])
        p_clean[name] = json.loads((tmp_path / name / "facts.json").read_text())["facts"][0]["p_clean"]
    assert "tracing with the edit" in capsys.readouterr().out
    assert p_clean["edited"] > p_clean["unedited"] + 1e-3  # the edit raised P(Quix): the edited model was traced
    for (kind, layer), w in before.items():  # and was rolled back after
        assert torch.equal(getattr(model.spec, kind)[layer], w)
    # --key-tokens: the same alpha and layers from the two tokens they are read at
    widths = ["--attn-width", "1", "--mlp-width", "2"]
    for name, extra in (("full", []), ("key", ["--key-tokens"])):
        assert main([*common, *widths, "--out", str(tmp_path / name), *extra]) == 0
    full, key = (json.loads((tmp_path / n / "tiny-llama.json").read_text()) for n in ("full", "key"))
    assert key["alpha"] == pytest.approx(full["alpha"], abs=1e-6) and key["attn_layers"] == full["attn_layers"]
    # a folder traced without the edit is not resumed with it: the settings differ
    assert main([*common, "--out", str(tmp_path / "unedited"), "--apply", str(saved)]) == 2
    assert main([*common, "--out", str(tmp_path / "x"), "--apply", str(tmp_path / "missing.pt")]) == 2
    assert main([*common, "--out", str(tmp_path / "x"), "--apply", str(saved), "--install-defaults"]) == 2
