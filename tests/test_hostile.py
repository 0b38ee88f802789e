"""Hostile input: settings that cannot silently change, work that is never lost, caches that cannot lie.

Each test is one class of bad or edge input; all run on the tiny random model, most before any
model is loaded at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import intattn_tl.repro.tables  # noqa: F401  imported before `no_model` patches models.load_model,
import intattn_tl.repro.sweep  # noqa: F401  so their own `load_model` names are never bound to the patch
from intattn_tl.cli import main
from intattn_tl.data.records import EditRecord, load_edits
from intattn_tl.edit.transaction import EditError, WeightTransaction, apply_deltas
from intattn_tl.edit.result import apply_saved
from intattn_tl.api import edit
from intattn_tl.evaluation.metrics import EvalConfig
from intattn_tl.config.hparams import RESULTS_DIR, load_hparams

from tiny_edit import EDIT, FAST


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- 1. settings are explicit and recorded


def test_trace_never_changes_the_package_defaults(tmp_path, monkeypatch, capsys):
    from intattn_tl.data.records import KnownFact
    from intattn_tl.model.tokens import answer_ids

    before = {p.name: p.read_bytes() for p in RESULTS_DIR.glob("*.json")}
    fact = ("I Paris is", "Paris", "France")  # as in test_tracing: a tiny-model fact with a defined alpha
    monkeypatch.setattr("intattn_tl.data.records.load_known_facts", lambda: [KnownFact("0", *fact, "P1")] * 2)
    monkeypatch.setattr("intattn_tl.locate.tracing.greedy_token",
                        lambda model, prompt: answer_ids(model.tokenizer, fact[0], fact[2])[0])
    argv = ["trace", "--model", "tiny-llama", "--facts", "2", "--samples", "2", "--window", "2", "--seed", "2",
            "--attn-width", "1", "--mlp-width", "2", "--min-ld-gap=-inf"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "tiny-llama.json").read_text())["n_facts"] == 2  # the run's own copy
    assert "package defaults unchanged" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in RESULTS_DIR.glob("*.json")} == before
    assert main([*argv, "--out", str(tmp_path / "b"), "--install-defaults"]) == 2  # a smoke run never installs
    assert "--install-defaults needs --facts" in _err(capsys)
    assert {p.name: p.read_bytes() for p in RESULTS_DIR.glob("*.json")} == before


def test_saved_edit_records_resolved_settings_and_code(tiny_llama, cache, tmp_path):
    records = load_edits("wiki_counterfact", limit=1)
    result = edit(tiny_llama, records, "intattn", load_hparams("intattn", "tiny-llama", {**FAST, "attn_layers": [0]}))
    try:
        meta = torch.load(result.save(tmp_path / "e.pt"), weights_only=True)["meta"]
    finally:
        result.rollback()
    hp = meta["settings"]["hparams"]
    assert hp["layers"] == [1, 2] and hp["attn_layers"] == [0] and isinstance(hp["alpha"], float)  # resolved, not None
    assert hp["mom2_n_samples"] == 256 and meta["code"]["package"]


def test_resume_with_other_settings_is_refused_with_the_difference(cache, tmp_path):
    from intattn_tl.repro.tables import ReproduceError, TableRun, run_table

    cfg = EvalConfig(fluency=False, progress=False)
    run = TableRun(model="tiny-llama", sizes=(2,), methods=("memit",), out=tmp_path, eval_cfg=cfg,
                   hparam_overrides={"memit": FAST})
    folder = run_table(run)
    cell = json.loads((folder / "cells" / "memit-T2.json").read_text())
    assert cell["settings"]["hparams"]["layers"] == [1, 2] and cell["settings"]["code"]["package"]
    other = TableRun(model="tiny-llama", sizes=(3,), methods=("memit",), out=tmp_path, eval_cfg=cfg,
                     hparam_overrides={"memit": {**FAST, "mom2_update_weight": 7.0}})
    with pytest.raises(ReproduceError, match=r"memit-T2.json.*mom2_update_weight: 15000.0 -> 7.0"):
        run_table(other)
    assert not (folder / "cells" / "memit-T3.json").exists()


# ----------------------------------------------------------------------------- 2. caches verify their contents


def test_swapped_target_files_are_not_trusted(tiny_llama, cache):
    from intattn_tl.edit.targets import TargetHparams, target_deltas

    records = load_edits("wiki_counterfact", limit=2)
    hp = TargetHparams(v_num_grad_steps=3)
    first = target_deltas(tiny_llama, records, 1, hp, prefixes=[""])
    a, b = sorted((cache / "targets-v2").rglob("*.pt"))
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    assert torch.equal(target_deltas(tiny_llama, records, 1, hp, prefixes=[""]), first)  # recomputed, not swapped


def test_altered_prefix_cache_is_rebuilt(tiny_llama, cache, capsys):
    from intattn_tl.edit.prefixes import context_prefixes

    good = context_prefixes(tiny_llama)
    (path,) = (cache / "prefixes-v3").glob("*.json")
    blob = json.loads(path.read_text())
    path.write_text(json.dumps({**blob, "prefixes": ["", "something else. "]}))  # valid JSON, wrong content
    assert context_prefixes(tiny_llama) == good
    assert "does not match its sha256" in capsys.readouterr().err
    path.write_text("")  # empty
    assert context_prefixes(tiny_llama) == good


@pytest.mark.parametrize("content, message", [("", "unreadable"), ("{}", "does not hold"),
                                              ('{"method": "memit", "T": 2}', "does not hold")])
def test_damaged_cell_stops_the_run_before_any_work(tmp_path, no_model, capsys, content, message):
    cells = tmp_path / "table2-tiny-llama" / "cells"
    cells.mkdir(parents=True)
    (cells / "memit-T4.json").write_text(content)
    assert main(["reproduce", "table2", "--model", "tiny-llama", "--sizes", "4", "--methods", "memit",
                 "--out", str(tmp_path), "--no-fluency"]) == 2
    err = _err(capsys)
    assert "memit-T4.json" in err and message in err


def test_altered_cell_is_refused(tmp_path):
    from intattn_tl.repro.tables import ReproduceError, read_cell
    from intattn_tl.core.store import write_json

    path = write_json(tmp_path / "memit-T4.json", {"method": "memit", "T": 4, "edit_succ": 90.0}, {"method": "memit", "T": 4})
    assert read_cell(path)["edit_succ"] == 90.0
    path.write_text(path.read_text().replace("90.0", "99.0"))
    with pytest.raises(ReproduceError, match="sha256"):
        read_cell(path)
    swapped = tmp_path / "rome-T4.json"
    write_json(tmp_path / "x.json", {"method": "memit", "T": 4}, {"method": "memit", "T": 4}).rename(swapped)
    with pytest.raises(ReproduceError, match="made for"):
        read_cell(swapped)


# ----------------------------------------------------------------------------- 3. numbers are validated


def test_limits_mean_the_same_in_api_and_cli(unchecked):
    from intattn_tl.core.checks import CheckError

    everything = load_edits("wiki_counterfact")
    assert load_edits("wiki_counterfact", limit=0) == everything  # 0 = all, as on the CLI
    with pytest.raises(CheckError, match="limit"):
        load_edits("wiki_counterfact", limit=-1)
    with unchecked(), pytest.raises(CheckError, match="integer"):
        load_edits("wiki_counterfact", limit=2.5)


@pytest.mark.parametrize("argv, message", [
    (["--set", "layers=[1.7]"], "layers[0] must be an integer"),
    (["--set", "layers=2"], "layers must be a list"),
    (["--set", "mom2_n_samples=abc"], "mom2_n_samples must be an integer"),
    (["--set", "mom2_n_samples=5000.5"], "mom2_n_samples must be an integer"),
    (["--set", "mom2_update_weight=-1"], "mom2_update_weight must be >= 0"),
    (["--set", "use_prefixes=3"], "use_prefixes must be true or false"),
    (["--set", "v_lr=.nan"], "v_lr must be a finite number"),
    (["--set", "layers=[1"], "not a YAML value"),
    (["--limit", "-4"], "--limit"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device"),
    (["--alpha", "nan"], "--alpha"),
    (["--batch-size", "1.5"], "--batch-size"),
])
def test_bad_edit_values_are_one_line_before_the_model(argv, message, no_model, capsys):
    assert main([*EDIT, *argv]) == 2
    assert message in _err(capsys)


@pytest.mark.parametrize("text, message", [
    ("seed: 2.5\n", "seed must be an integer"),
    ("layers: [1, 2\n", "cannot read hyperparameter file"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("mom2_dataset: 5\n", "mom2_dataset must be a string"),
])
def test_bad_yaml_is_one_line_before_the_model(tmp_path, no_model, capsys, text, message):
    path = tmp_path / "hp.yaml"
    path.write_text(text)
    assert main([*EDIT, "--hparams", str(path)]) == 2
    assert message in _err(capsys)
    assert main([*EDIT, "--hparams", str(tmp_path)]) == 2  # a folder
    assert "is not a file" in _err(capsys)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "table2", "--sizes", "-4"], "--sizes"),
    (["reproduce", "table2", "--sizes", "0"], "--sizes"),
    (["reproduce", "table2", "--methods", "foo"], "unknown 'foo'"),
    (["reproduce", "sweep-alpha", "--grid", "0.5,1.5"], "--grid"),
    (["eval", "--threads", "-1"], "--threads"),
    (["eval", "--batch-size", "0"], "--batch-size"),
    (["trace", "--out", "x", "--noise-scale", "nan"], "--noise-scale"),
    (["trace", "--out", "x", "--kinds", "attn,nope"], "unknown 'nope'"),
])
def test_bad_values_of_other_commands(argv, message, no_model, capsys):
    assert main(argv) == 2
    assert message in _err(capsys)


def test_api_hparams_and_sweep_grid_checked_before_work(tiny_llama, no_model, unchecked):
    from intattn_tl.methods.memit import MEMITHparams
    from intattn_tl.repro.sweep import run_sweep

    records = load_edits("wiki_counterfact", limit=1)
    before = tiny_llama.spec.w_out[1].clone()
    with unchecked(), pytest.raises(EditError, match=r"layers\[0\] must be an integer"):
        edit(tiny_llama, records, "memit", MEMITHparams(**{**FAST, "layers": [1.7]}))
    assert torch.equal(tiny_llama.spec.w_out[1], before)
    with pytest.raises(EditError, match="alpha of the grid"):
        run_sweep("tiny-llama", "zsre", 2, (0.5, 1.5), Path("unused"))


# ----------------------------------------------------------------------------- 4. weights safe in every order


def _delta_file(model, tmp_path) -> Path:
    records = load_edits("wiki_counterfact", limit=1)
    result = edit(model, records, "memit", load_hparams("memit", model.name, FAST))
    path = result.save(tmp_path / "e.pt")
    result.rollback()
    return path


def test_apply_saved_twice_is_refused(tiny_llama, cache, tmp_path):
    path = _delta_file(tiny_llama, tmp_path)
    tx = apply_saved(tiny_llama, path)
    once = [w.clone() for w in tiny_llama.spec.w_out]
    with pytest.raises(EditError, match="already applied"):
        apply_saved(tiny_llama, path)
    assert all(torch.equal(a, b) for a, b in zip(tiny_llama.spec.w_out, once))
    tx.rollback()


def test_interrupted_apply_changes_nothing(tiny_llama, cache, tmp_path, monkeypatch):
    path = _delta_file(tiny_llama, tmp_path)
    before = [w.clone() for w in tiny_llama.spec.w_out]
    real, calls = WeightTransaction.update, []

    def update(self, *a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(WeightTransaction, "update", update)
    with pytest.raises(KeyboardInterrupt):
        apply_saved(tiny_llama, path)
    assert all(torch.equal(a, b) for a, b in zip(tiny_llama.spec.w_out, before))


def test_apply_deltas_applies_only_the_named_keys_and_refuses_bad_ones_whole(tiny_llama):
    spec = tiny_llama.spec
    before = {k: [w.clone() for w in getattr(spec, k)] for k in ("w_out", "w_o")}
    deltas = {"w_out.0": torch.ones_like(spec.w_out[0]), "w_o.1": torch.ones_like(spec.w_o[1])}
    tx = apply_deltas(tiny_llama, deltas, ["w_o.1"])
    assert torch.equal(spec.w_out[0], before["w_out"][0]) and not torch.equal(spec.w_o[1], before["w_o"][1])
    tx.rollback()
    assert all(torch.equal(a, b) for k in before for a, b in zip(getattr(spec, k), before[k]))
    for bad, match in ((["w_out.0", "w_o.7"], "no delta"), (["w_out.0", "bias.1"], "not a weight key")):
        with pytest.raises(EditError, match=match):
            apply_deltas(tiny_llama, deltas | {"bias.1": deltas["w_out.0"]}, bad)
        assert all(torch.equal(a, b) for k in before for a, b in zip(getattr(spec, k), before[k]))
    with pytest.raises(EditError, match="shape"):  # the first key applied, the second refused: both undone
        apply_deltas(tiny_llama, {"w_out.0": deltas["w_out.0"], "w_o.1": torch.ones(2, 2)})
    assert all(torch.equal(a, b) for k in before for a, b in zip(getattr(spec, k), before[k]))


def test_out_of_order_rollback_is_refused_and_newest_first_is_exact(tiny_llama):
    before = [w.clone() for w in tiny_llama.spec.w_out]
    g = torch.Generator().manual_seed(0)
    first, second = WeightTransaction(tiny_llama), WeightTransaction(tiny_llama)
    for tx, layers in ((first, (1, 2)), (second, (2, 3))):
        for layer in layers:
            tx.update("w_out", layer, torch.randn(tiny_llama.spec.w_out[layer].shape, generator=g) * 0.01)
    edited = [w.clone() for w in tiny_llama.spec.w_out]
    with pytest.raises(EditError, match="w_out.2 changed since"):
        first.rollback()  # oldest first would leave part of `second` in place
    assert all(torch.equal(a, b) for a, b in zip(tiny_llama.spec.w_out, edited))  # refused: nothing changed
    second.rollback()
    first.rollback()
    first.rollback()  # twice: a no-op
    assert all(torch.equal(a, b) for a, b in zip(tiny_llama.spec.w_out, before))


# ----------------------------------------------------------------------------- 5. --data-dir reaches WikiText


def test_data_dir_is_used_for_the_corpus(tmp_path, no_model, capsys):
    from intattn_tl.edit.covariance import corpus_source
    from intattn_tl.data.records import data_path

    (tmp_path / "knowedit").mkdir()
    (tmp_path / "knowedit" / "wiki_counterfact-test.json").symlink_to(data_path("wiki_counterfact"))
    assert main([*EDIT, "--data-dir", str(tmp_path)]) == 2  # no corpus in that folder: said so, before the model
    assert f"{tmp_path}/corpus/wikitext-2-raw-test.txt not found" in _err(capsys)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "wikitext-2-raw-test.txt").symlink_to(data_path("wikitext2"))
    assert corpus_source(tmp_path / "corpus" / "wikitext-2-raw-test.txt")[0] == "wikitext2"  # same statistics key


# ----------------------------------------------------------------------------- 6. outputs checked before work


def test_output_paths_checked_before_work(tmp_path, no_model, capsys):
    (tmp_path / "file").write_text("x")
    assert main([*EDIT, "--save", str(tmp_path / "file" / "e.pt")]) == 2  # its folder cannot exist
    assert "not a folder" in _err(capsys)
    assert main(["eval", "--model", "tiny-llama", "--out", str(tmp_path)]) == 2  # a folder, not a file
    assert "is a folder" in _err(capsys)
    assert main(["reproduce", "table2", "--out", str(tmp_path / "file")]) == 2
    assert "not a folder" in _err(capsys)
    if Path("/proc/self").is_dir():  # a folder where nothing can be created, even by root
        assert main([*EDIT, "--save", "/proc/no-such-dir/e.pt"]) == 2
        assert "not writable" in _err(capsys)


def test_missing_output_folder_is_created_and_filled(tmp_path, cache, capsys):
    out = tmp_path / "new" / "sub" / "e.pt"
    assert main([*EDIT, "--save", str(out)]) == 0
    assert torch.load(out, weights_only=True)["meta"]["settings"]["method"] == "memit"


# ----------------------------------------------------------------------------- 8. errors are messages, top layer


def test_top_layer_edit_is_refused_clearly(tiny_llama, capsys):
    top = tiny_llama.spec.n_layers - 1
    records = load_edits("wiki_counterfact", limit=1)
    for method in ("memit", "rome", "alphaedit"):
        with pytest.raises(EditError, match=f"layer {top} is tiny-llama's last"):
            edit(tiny_llama, records, method, load_hparams(method, "tiny-llama", {**FAST, "layers": [top]}))
    assert main([*EDIT, "--set", f"layers=[{top}]"]) == 2
    assert "last" in _err(capsys)


def test_residual_at_the_top_layer_is_a_residual(tiny_llama):
    from intattn_tl.edit.targets import residual_at

    ids = tiny_llama.tokenizer("The Eiffel Tower", return_tensors="pt")["input_ids"]
    top = tiny_llama.spec.n_layers - 1
    assert residual_at(tiny_llama, ids, top).shape[-1] == tiny_llama.spec.d_model


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    monkeypatch.setattr("intattn_tl.cli.models.run", lambda args: 1 / 0)
    assert main(["models", "tiny-llama"]) == 1
    assert "internal error: ZeroDivisionError" in _err(capsys)
    with pytest.raises(ZeroDivisionError):
        main(["models", "tiny-llama", "--debug"])


# ----------------------------------------------------------------------------- 9. long prompts


def test_long_prompt_is_refused_before_any_forward(tiny_llama, monkeypatch, capsys):
    record = EditRecord(id="long", prompt="word " * 5000 + "The Eiffel Tower is in", subject="Eiffel Tower",
                        target_new="Rome", ground_truth=("Paris",))
    monkeypatch.setattr(tiny_llama.bridge, "run_with_hooks", lambda *a, **k: pytest.fail("a forward pass ran"))
    with pytest.raises(EditError, match="max_prompt_tokens=512"):
        edit(tiny_llama, [record], "memit", load_hparams("memit", "tiny-llama", FAST))


def test_nan_noise_is_refused_at_the_first_fact(tiny_llama):
    from intattn_tl.locate.tracing import TraceError, trace_fact

    with pytest.raises(TraceError, match="noise std"):
        trace_fact(tiny_llama, "I Paris is", "Paris", "France", noise_scale=float("nan"), n_samples=2)


def test_eval_refuses_long_prompts_before_evaluating(monkeypatch, capsys):
    import intattn_tl.data.records as data

    long = EditRecord(id="long", prompt="word " * 600 + "The Eiffel Tower is in", subject="Eiffel Tower",
                      target_new="Rome", ground_truth=("Paris",))
    monkeypatch.setattr(data, "load_edits", lambda *a, **k: [long])
    monkeypatch.setattr("intattn_tl.evaluation.metrics.evaluate", lambda *a, **k: pytest.fail("evaluation ran"))
    assert main(["eval", "--model", "tiny-llama", "--quiet", "--no-fluency"]) == 2
    assert "max_prompt_tokens=512" in _err(capsys)


def test_sweep_points_record_settings_and_refuse_other_ones(tmp_path):
    from intattn_tl.repro.sweep import run_sweep

    folder = run_sweep("tiny-llama", "zsre", 2, (0.0,), tmp_path, EvalConfig(fluency=False, progress=False))
    point = json.loads((folder / "points" / "alpha-0.000.json").read_text())
    assert point["settings"]["hparams"]["layers"] and point["settings"]["code"]["package"]
    with pytest.raises(EditError, match=r"alpha-0.000.json.*eval.fluency: False -> True"):
        run_sweep("tiny-llama", "zsre", 2, (1.0,), tmp_path, EvalConfig(fluency=True, progress=False))
    assert not (folder / "points" / "alpha-1.000.json").exists()
