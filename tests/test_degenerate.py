"""Degenerate input fails loudly: contradicting requests, broken edits, a hostile machine, Unicode forms,
finished folders made with other settings. Each test is one class of problem, on the tiny random models."""

from __future__ import annotations

import errno
import inspect
import json
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import intattn_tl.repro.tables  # noqa: F401  imported before `no_model` patches models.load_model
import intattn_tl.repro.sweep  # noqa: F401
from intattn_tl import api
from intattn_tl.methods import registry
from intattn_tl.cli import main
from intattn_tl.data.conflicts import ConflictError
from intattn_tl.data.records import EditRecord, load_edits, validate
from intattn_tl.edit.sanity import InsaneEditError
from intattn_tl.methods.registry import Method
from intattn_tl.api import edit
from intattn_tl.edit.transaction import fingerprint
from intattn_tl.errors import EnvironmentProblem, IntattnError
from intattn_tl.evaluation.metrics import EvalConfig
from intattn_tl.config.hparams import load_hparams

from tiny_edit import EDIT, FAST


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


def _weights(model) -> dict:
    return {(k, l): fingerprint(getattr(model.spec, k)[l]) for k in ("w_out", "w_o") for l in range(model.spec.n_layers)}


def _record(i: int, target: str, prompt: str = "The Eiffel Tower is located in the city of") -> EditRecord:
    return EditRecord(id=f"r/{i}", prompt=prompt, subject="Eiffel Tower", target_new=target, ground_truth=("Paris",))


# ----------------------------------------------------------------------------- conflicting requests


def test_conflicting_requests_are_refused_before_any_work(tiny_llama, monkeypatch):
    ran = []
    monkeypatch.setattr(api, "probe", lambda *a: ran.append("probe"))
    before = _weights(tiny_llama)
    batch = [_record(0, "Rome"), _record(1, "Berlin", prompt="The  Eiffel Tower is located in the city of ")]
    with pytest.raises(ConflictError, match=r"r/0 -> 'Rome' vs r/1 -> 'Berlin'"):
        edit(tiny_llama, batch, "memit", load_hparams("memit", "tiny-llama", FAST))
    assert not ran and _weights(tiny_llama) == before  # refused before the first forward pass
    assert issubclass(ConflictError, IntattnError)


def test_repeated_requests_are_merged_with_a_note(tiny_llama, cache, capsys):
    batch = [_record(0, "Rome"), _record(1, " Rome "), _record(2, "Madrid", prompt="Where is the Eiffel Tower? In")]
    result = edit(tiny_llama, batch, "memit", load_hparams("memit", "tiny-llama", FAST))
    result.rollback()
    assert [r.id for r in result.records] == ["r/0", "r/2"]
    assert "r/1" in result.stats["merged"][0] and "r/0" in result.stats["merged"][0]
    assert "merged into r/0" in capsys.readouterr().err


def test_benchmark_batches_with_conflicts_refused_on_the_cli_unless_allowed(no_model, capsys):
    # the first 300 WikiData_counterfact records hold three such pairs (13/255, 194/251, 243/298)
    assert main([*EDIT[:4], "300", *EDIT[5:]]) == 2
    err = _err(capsys)
    assert "wiki_counterfact/13" in err and "wiki_counterfact/255" in err and "--allow-conflicts" in err
    records = load_edits("wiki_counterfact", limit=300)
    from intattn_tl.data.conflicts import resolve

    assert resolve(records, "allow") == (records, [])  # the tables edit the files as given


# ----------------------------------------------------------------------------- post-edit sanity


@dataclass
class WreckHparams:
    scale: float = 1000.0
    chain_ratio: float = 1.0


def _wreck(model, records, hp, tx, state) -> dict:
    """A method whose update is far too large (a broken statistics matrix does this), and which reports a
    chain account of its choosing."""
    gen = torch.Generator().manual_seed(0)
    for layer in range(model.spec.n_layers):
        w = model.spec.w_out[layer]
        tx.update("w_out", layer, hp.scale * w.norm() * torch.randn(w.shape, generator=gen) / w.numel() ** 0.5)
    return {"steps": [{"kind": "w_out", "layer": 1, "delta_norm": 1.0, "chain": (0.9, hp.chain_ratio)}]}


@pytest.fixture
def wreck(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "wreck", Method("wreck", WreckHparams, _wreck, batch=True))


@pytest.fixture
def opinionated_llama():
    """A tiny model with peaked next-token distributions (a random one's are nearly uniform, so nothing an edit
    does moves them far): its final norm scaled up."""
    from intattn_tl.model.load import load_model

    model = load_model("tiny-llama")
    with torch.no_grad():
        model.hf_model.model.norm.weight.mul_(30.0)
    return model


def test_an_edit_that_changes_every_unrelated_prediction_is_rolled_back_exactly(opinionated_llama, wreck):
    before = _weights(opinionated_llama)
    with pytest.raises(InsaneEditError, match=r"rolled back exactly.*unrelated prompts.*KL .* nats.*only 0% kept"):
        edit(opinionated_llama, [_record(0, "Rome")], "wreck", WreckHparams(scale=10.0))
    assert _weights(opinionated_llama) == before
    edit(opinionated_llama, [_record(0, "Rome")], "wreck", WreckHparams(scale=0.05)).rollback()  # a small change passes


def test_sanity_limits_are_named_settings(opinionated_llama, wreck):
    from intattn_tl.edit.sanity import SanityLimits

    loose = SanityLimits(max_probe_kl=1e3)
    edit(opinionated_llama, [_record(0, "Rome")], "wreck", WreckHparams(), sanity=loose).rollback()
    edit(opinionated_llama, [_record(0, "Rome")], "wreck", WreckHparams(), sanity=None).rollback()  # not checked


def test_a_runaway_chain_is_rolled_back(tiny_llama, wreck):
    before = _weights(tiny_llama)
    with pytest.raises(InsaneEditError, match=r"w_out\[1\] moved the residual 50.0x.*max_chain_ratio"):
        edit(tiny_llama, [_record(0, "Rome")], "wreck", WreckHparams(scale=1e-6, chain_ratio=50.0))
    assert _weights(tiny_llama) == before


def test_force_keeps_a_wrecking_edit_with_a_warning_and_it_still_rolls_back(opinionated_llama, wreck, capsys):
    before = _weights(opinionated_llama)
    result = edit(opinionated_llama, [_record(0, "Rome")], "wreck", WreckHparams(), force=True)
    assert _weights(opinionated_llama) != before and result.stats["sanity"]["problems"]
    assert result.stats["sanity"]["weight_change"]["w_out.0"] > 100  # recorded, not limited
    assert "kept by force" in capsys.readouterr().err
    result.rollback()
    assert _weights(opinionated_llama) == before


def test_a_normal_edit_passes_and_records_its_probe(tiny_llama, cache):
    result = edit(tiny_llama, [_record(0, "Rome")], "memit", load_hparams("memit", "tiny-llama", FAST))
    result.rollback()
    s = result.stats["sanity"]
    assert s["problems"] == [] and s["probe_kl"] >= 0 and 0 <= s["probe_agreement"] <= 1


def test_cli_refuses_a_wrecking_edit_unless_forced(wreck, cache, capsys, monkeypatch):
    monkeypatch.setattr("intattn_tl.config.hparams.load_hparams", lambda *a, **k: WreckHparams(scale=1e-6, chain_ratio=50.0))
    argv = ["edit", "--model", "tiny-llama", "--limit", "1", "--no-eval", "--quiet", "--method", "wreck"]
    assert main(argv) == 2
    assert "rolled back exactly" in _err(capsys)
    assert main([*argv, "--force"]) == 0


# ----------------------------------------------------------------------------- the environment, before work


def test_every_user_error_class_is_an_intattn_error():
    import pkgutil

    import intattn_tl

    modules = [m.name for m in pkgutil.walk_packages(intattn_tl.__path__, "intattn_tl.") if not m.name.endswith("__main__")]
    found = {name: cls for m in modules for name, cls in inspect.getmembers(
        __import__(m, fromlist=["x"]), inspect.isclass)
        if name.endswith(("Error", "Problem")) and cls.__module__.startswith("intattn_tl")}
    assert len(found) >= 12 and all(issubclass(c, IntattnError) for c in found.values())


def test_missing_corpus_in_set_is_refused_before_the_model(no_model, capsys, tmp_path):
    assert main([*EDIT, "--set", f"mom2_dataset={tmp_path / 'missing.txt'}"]) == 2
    assert "mom2_dataset" in _err(capsys)
    (tmp_path / "folder.txt").mkdir()
    assert main(["reproduce", "table2", "--model", "tiny-llama", "--methods", "memit", "--out", str(tmp_path / "o"),
                 "--set", f"memit.mom2_dataset={tmp_path / 'folder.txt'}"]) == 2
    assert "memit.mom2_dataset" in _err(capsys) and not (tmp_path / "o").exists()


def test_unwritable_cache_is_refused_before_the_model(no_model, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INTATTN_CACHE", str(tmp_path / "ro"))
    monkeypatch.setattr("intattn_tl.core.checks._can_create_in", lambda folder: False)  # EROFS, or root-proof EACCES
    assert main(EDIT) == 2
    err = _err(capsys)
    assert "cache folder" in err and "INTATTN_CACHE" in err


def test_full_disk_is_refused_before_the_model(no_model, capsys, tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr("intattn_tl.core.environment.shutil.disk_usage",
                        lambda p: real(p)._replace(free=40_000) if str(p).startswith(str(tmp_path / "out")) else real(p))
    (tmp_path / "out").mkdir()
    assert main(["reproduce", "table2", "--quick", "--model", "tiny-llama", "--methods", "memit",
                 "--out", str(tmp_path / "out")]) == 2
    err = _err(capsys)
    assert "--out" in err and "MiB free" in err and str(tmp_path / "out") in err


def test_a_cold_load_needs_room_for_its_cache(cache, monkeypatch):
    from intattn_tl.model.gguf import cache_bytes_needed
    from intattn_tl.model.load import load_model

    assert cache_bytes_needed("tiny-llama", "float32") == 0
    need = cache_bytes_needed("smollm2-135m", "bfloat16")  # no cache, no GGUF file in this fresh cache
    assert need > 135_000_000 * 2
    monkeypatch.setattr("intattn_tl.core.environment.shutil.disk_usage",
                        lambda p: type("U", (), {"free": need // 2})())
    with pytest.raises(EnvironmentProblem, match="cache folder .* needs about"):
        load_model("smollm2-135m", dtype="bfloat16")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied"), (errno.EDQUOT, "quota")])
def test_environment_errors_during_work_are_one_line_exit_2(code, words, cache, capsys, tmp_path, monkeypatch):
    path = tmp_path / "out" / "table2-tiny-llama" / "table.md"

    def fail(*a, **k):
        raise OSError(code, "as the OS says it", str(path))
    monkeypatch.setattr("intattn_tl.repro.tables.write_table", fail)
    assert main(["reproduce", "table2", "--quick", "--model", "tiny-llama", "--methods", "memit", "--no-fluency",
                 "--sizes", "2", "--set", "memit.layers=[1, 2]", "--set", "memit.mom2_n_samples=256",
                 "--out", str(tmp_path / "out")]) == 2
    err = _err(capsys)
    assert words in err and str(path) in err and "--out" in err
    assert list((tmp_path / "out" / "table2-tiny-llama" / "cells").glob("memit-T2.json"))  # finished cells kept


def test_wandb_online_without_credentials_runs_offline_and_says_so_first(cache, capsys, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    said_before = []
    monkeypatch.setattr("intattn_tl.evaluation.metrics.evaluate",
                        lambda *a, **k: said_before.append("logging offline" in capsys.readouterr().err) or [{"id": "x"}])
    monkeypatch.setattr("intattn_tl.evaluation.metrics.summarize", lambda rows: {"edit_succ": 1.0})
    assert main(["eval", "--model", "tiny-llama", "--limit", "1", "--no-fluency", "--quiet", "--wandb"]) == 0
    assert said_before == [True]  # told before the evaluation, not after it
    assert list((tmp_path / "wb").rglob("offline-run-*"))


def test_wandb_refusing_a_run_is_an_environment_message(cache, capsys, tmp_path, monkeypatch):
    import wandb

    def refuse(**k):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
    monkeypatch.setattr(wandb, "init", refuse)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setattr("intattn_tl.evaluation.metrics.evaluate", lambda *a, **k: [{"id": "x"}])
    monkeypatch.setattr("intattn_tl.evaluation.metrics.summarize", lambda rows: {"edit_succ": 1.0})
    assert main(["eval", "--model", "tiny-llama", "--limit", "1", "--no-fluency", "--quiet", "--wandb"]) == 2
    assert "W&B could not start a run" in _err(capsys)


# ----------------------------------------------------------------------------- a finished folder, other settings


def test_a_complete_sweep_folder_is_checked_against_the_asked_settings(cache, tmp_path):
    from intattn_tl.edit.transaction import EditError
    from intattn_tl.repro.sweep import run_sweep

    cfg = EvalConfig(fluency=False, progress=False)
    folder = run_sweep("tiny-llama", "zsre", 2, (0.0,), tmp_path, cfg)
    figure = (folder / "points.csv").read_text()
    with pytest.raises(EditError, match="dtype"):  # every point exists; a bfloat16 run may not show them
        run_sweep("tiny-llama", "zsre", 2, (0.0,), tmp_path, cfg, placement={"dtype": "bfloat16"})
    assert (folder / "points.csv").read_text() == figure
    run_sweep("tiny-llama", "zsre", 2, (0.0,), tmp_path, cfg)  # the same settings: shown again


# ----------------------------------------------------------------------------- Unicode


ZOE_NFC = unicodedata.normalize("NFC", "Zoë Saldaña")
ZOE_NFD = unicodedata.normalize("NFD", ZOE_NFC)


def test_decomposed_subject_in_composed_prompt_is_one_subject(tiny_llama, cache):
    assert ZOE_NFD != ZOE_NFC
    r = EditRecord(id="z/0", prompt=f"{ZOE_NFC} was born in", subject=ZOE_NFD, target_new="Rom" + "\u0065\u0301",
                   ground_truth=("New Jersey",))
    validate(r)  # today: "subject 'Zoë Saldaña' does not occur in prompt 'Zoë Saldaña was born …'"
    assert r.subject == ZOE_NFC and r.target_new == "Romé"
    edit(tiny_llama, [r], "memit", load_hparams("memit", "tiny-llama", FAST)).rollback()


def test_tokens_name_a_unicode_form_difference(tiny_llama):
    from intattn_tl.model.tokens import TokenError, subject_span

    with pytest.raises(TokenError, match="another Unicode form"):
        subject_span(tiny_llama.tokenizer, f"{ZOE_NFC} was born in", ZOE_NFD)


def test_cli_text_and_facts_are_nfc(tiny_llama):
    from intattn_tl.core.checks import free_text
    from intattn_tl.data.records import KnownFact, Probe
    from intattn_tl.locate.tracing import prepare_fact

    assert free_text(ZOE_NFD) == ZOE_NFC
    assert KnownFact("1", f"{ZOE_NFD} was born in", ZOE_NFD, "Passaic", "P19").subject == ZOE_NFC
    assert Probe(ZOE_NFD, (ZOE_NFD,)) == Probe(ZOE_NFC, (ZOE_NFC,))
    prepare_fact(tiny_llama, f"{ZOE_NFC} was born in", ZOE_NFD, "Passaic")  # the Python tracing API too
