"""`intattn check` on tiny models: passes on intact ones, fails (exit 1) on a deliberately broken one."""

from __future__ import annotations

import pytest
import torch

from intattn_tl.cli import main
from intattn_tl.diagnostics import check
from intattn_tl.model.load import load_model


def _rows(rows):
    return {r.check.split(" (")[0].split(",")[0]: r for r in rows}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_mechanics_pass_on_intact_tiny_models(fixture, request):
    model = request.getfixturevalue(fixture)
    rows = check.run_checks(model, [])
    assert [r.ok for r in rows] == [True] * 5, check.format_rows(rows)
    names = [r.check for r in rows]
    assert ("spec.w_out -> hook_mlp_out (through the post-norm)" in names) == (fixture == "tiny_gemma")
    assert rows[0].measured.startswith(f"{1 + 7 * model.spec.n_layers}/{1 + 7 * model.spec.n_layers} fire")


@pytest.mark.parametrize("name, kind", [("tiny-llama", "w_out"), ("tiny-gemma3", "w_o")])
def test_a_spec_pointing_at_the_wrong_matrices_fails(name, kind):
    model = load_model(name)
    handles = getattr(model.spec, kind)
    setattr(model.spec, kind, handles[1:] + handles[:1])  # right shapes, other layers' matrices
    rows = _rows(check.run_checks(model, []))
    broken = next(r for k, r in rows.items() if k.startswith(f"spec.{kind} "))
    intact = next(r for k, r in rows.items() if k.startswith("spec.") and not k.startswith(f"spec.{kind} "))
    assert not broken.ok and float(broken.measured.split()[3]) > 0.1
    assert intact.ok


def test_command_exit_status_follows_the_checks(monkeypatch, capsys):
    from intattn_tl.model import load as models

    assert main(["check", "--model", "tiny-llama", "--records", "0"]) == 0
    assert "5/5 passed" in capsys.readouterr().out

    def broken(*args, **kwargs):
        model = load_model("tiny-llama")
        model.spec.w_out = model.spec.w_out[::-1]
        return model

    monkeypatch.setattr(models, "load_model", broken)
    assert main(["check", "--model", "tiny-llama", "--records", "0"]) == 1
    captured = capsys.readouterr()
    assert "| FAIL |" in captured.out and "FAILED: spec.w_out -> hook_mlp_out" in captured.err


def test_edit_checks_measure_and_roll_back(tiny_llama, wiki_records, tmp_path, monkeypatch):
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path))
    corpus = tmp_path / "corpus.txt"  # small: the byte tokenizer would take a minute over all of WikiText-2
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    before = check.param_hashes(tiny_llama)
    rows = check.run_checks(tiny_llama, wiki_records[:2], {"mom2_n_samples": 256, "mom2_dataset": str(corpus)})
    by = _rows(rows)
    assert len(rows) == 9
    for key in ("ROME", "MEMIT"):
        assert "edit success" in by[key].measured, by[key]  # a measurement, not an error
    target = next(r for r in rows if r.check.startswith("targets at layer"))
    assert "of target tokens" in target.measured
    assert by["rollback after ROME + MEMIT"].ok
    assert check.param_hashes(tiny_llama) == before


def test_rollback_check_sees_a_changed_weight(tiny_llama):
    ids = check.probe_batch(tiny_llama)
    with torch.no_grad():
        logits = tiny_llama.bridge(ids)
    hashes = check.param_hashes(tiny_llama)
    assert check.check_rollback(tiny_llama, ids, hashes, logits).ok
    w = tiny_llama.spec.w_o[1]
    saved = w.clone()
    try:
        w[0, 0] += 1e-3
        row = check.check_rollback(tiny_llama, ids, hashes, logits)
    finally:
        w.copy_(saved)
    assert not row.ok and row.measured.startswith("1/")


def test_a_check_that_raises_is_a_failed_row():
    def boom(*args):
        raise RuntimeError("no such layer")

    row = check.guarded("targets", boom, None)
    assert not row.ok and "RuntimeError: no such layer" in row.measured


@pytest.mark.parametrize("argv, message", [(["--records", "-1"], "--records"), (["--stats-tokens", "10"], "--stats-tokens")])
def test_bad_arguments_are_refused_before_loading(argv, message, capsys):
    assert main(["check", "--model", "tiny-llama", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.real_model
def test_check_smollm_mechanics(smollm):
    """The mechanics rows only (~35 s here under load); the edit rows take minutes: docs/models.md has full runs."""
    rows = check.run_checks(smollm, [])
    assert all(r.ok for r in rows), check.format_rows(rows)
