"""Benchmark loaders: KnowEdit ZsRE / WikiData_counterfact, CounterFact, known_1000, MQuAKE-hard, WikiText-2.

Every file is checked against the sha256 in the benchmark MANIFEST.md before it is parsed. Edit requests
of every benchmark become one record type, `EditRecord`.

Where the files come from, first match wins: an explicit folder (`data_dir=` / `--data-dir`), then
`$INTATTN_DATA`, then the gzip-compressed copies shipped inside the package (`benchmarks/`, licences in
`benchmarks/LICENSES.md`), decompressed once into the cache (`paths.cache_dir() / "benchmarks"`) and
verified on every use. `load_hub_knowedit` fetches KnowEdit from the Hugging Face hub instead (needs a
network; not tested here).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from intattn_tl.core.checks import check_limit
from intattn_tl.core.paths import cache_dir, data_dir, packaged_data_dir
from intattn_tl.core.store import _atomic
from intattn_tl.errors import IntattnError


class DataError(IntattnError, ValueError):
    """A benchmark file is missing, corrupt, or holds a record we cannot use."""


@dataclass(frozen=True)
class DataFile:
    path: str
    records: int
    sha256: str


FILES: dict[str, DataFile] = {
    "zsre": DataFile("knowedit/ZsRE-test-all.json", 1301, "0e0214dda853a906ef02bef58c7ce2978af5a962e91fc4a10827e0125459905c"),
    "wiki_counterfact": DataFile("knowedit/wiki_counterfact-test.json", 885, "a24a8e21b48b3343d08d3e9264d255ec3475270ec2580d475deb2b12a81964e4"),
    "counterfact": DataFile("counterfact/counterfact-edit.json", 10000, "20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967"),
    "known_1000": DataFile("known_1000.json", 1209, "61daca55318bb5260c1e62e133debef9102c7b278bbc7b19dd2ac655543f333a"),
    "mquake_hard": DataFile("mquake/MQuAKE-hard.json", 429, "fc78dc7bec4625d3ce6e2923acae7f1920691b0b23e663182bf799f2856f2a11"),
    "wikitext2": DataFile("corpus/wikitext-2-raw-test.txt", 0, "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"),
}
EDIT_DATASETS = ("zsre", "wiki_counterfact", "counterfact")
HUB_NAMES = {"zsre": ("zjunlp/KnowEdit", "ZsRE/ZsRE-test-all.json"),
             "wiki_counterfact": ("zjunlp/KnowEdit", "wiki_counterfact/test_cf.json")}


def nfc(text):
    """`text` in Unicode NFC (composed: "ë" one code point); any other value unchanged. Every text enters the
    toolkit through this, so a subject typed or stored decomposed still occurs in its composed prompt."""
    return unicodedata.normalize("NFC", text) if isinstance(text, str) else text


def _nfc_fields(obj, *names: str) -> None:
    """NFC every named field of frozen dataclass `obj`: a str, or a tuple of str."""
    for name in names:
        value = getattr(obj, name)
        object.__setattr__(obj, name, tuple(map(nfc, value)) if isinstance(value, tuple) else nfc(value))


@dataclass(frozen=True)
class Probe:
    """A prompt and its acceptable answers (aliases; the first is the canonical one)."""

    prompt: str
    answers: tuple[str, ...]

    def __post_init__(self):
        _nfc_fields(self, "prompt", "answers")


@dataclass(frozen=True)
class EditRecord:
    """One edit request: make `prompt` (which mentions `subject`) continue with `target_new`."""

    id: str
    prompt: str
    subject: str
    target_new: str
    ground_truth: tuple[str, ...]
    rephrase: tuple[str, ...] = ()
    portability: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    locality: dict[str, tuple[Probe, ...]] = field(default_factory=dict)

    def __post_init__(self):
        _nfc_fields(self, "prompt", "subject", "target_new", "ground_truth", "rephrase")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KnownFact:
    """A known_1000 fact: the prompt's next tokens should be `attribute`."""

    id: str
    prompt: str
    subject: str
    attribute: str
    relation_id: str

    def __post_init__(self):
        _nfc_fields(self, "prompt", "subject", "attribute")


@dataclass(frozen=True)
class MQuAKECase:
    id: str
    edits: tuple[EditRecord, ...]
    questions: tuple[str, ...]
    answer: tuple[str, ...]  # before the edits (answer + aliases)
    new_answer: tuple[str, ...]  # after all edits


# ----------------------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_path(name: str, root: str | Path | None = None, verify: bool = True) -> Path:
    """The verified path of benchmark file `name` (a key of FILES): in `root`, else in `$INTATTN_DATA`, else
    the packaged copy (decompressed into the cache)."""
    if name not in FILES:
        raise DataError(f"Unknown benchmark {name!r}; known: {', '.join(FILES)}")
    spec = FILES[name]
    folder = Path(root) if root else data_dir()
    if folder is None:
        return _unpacked(spec)
    path = folder / spec.path
    if not path.is_file():
        source = "the data folder given" if root else "$INTATTN_DATA"
        raise DataError(f"Benchmark file {path} not found in {source} ({folder}): point it at a folder laid out as "
                        f"MANIFEST.md says, or unset it to use the copies shipped with the package")
    if verify and (digest := sha256_file(path)) != spec.sha256:
        raise DataError(f"{path} has sha256 {digest}, the manifest says {spec.sha256}: the file is corrupt or changed")
    return path


def _unpacked(spec: DataFile) -> Path:
    """The packaged copy of `spec`, decompressed into the cache; a cached copy is used only if its sha256 is
    the manifest's, otherwise it is written again (atomically)."""
    path = cache_dir() / "benchmarks" / spec.path
    if path.is_file() and sha256_file(path) == spec.sha256:
        return path
    packed = packaged_data_dir() / f"{spec.path}.gz"
    if not packed.is_file():
        raise DataError(f"the packaged benchmark copy {packed} is missing: reinstall intattn-tl, or set INTATTN_DATA")
    data = gzip.decompress(packed.read_bytes())
    if (digest := hashlib.sha256(data).hexdigest()) != spec.sha256:
        raise DataError(f"{packed} decompresses to sha256 {digest}, the manifest says {spec.sha256}: reinstall intattn-tl")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def _read_json(name: str, root) -> list[dict]:
    return json.loads(data_path(name, root).read_text())


# ----------------------------------------------------------------------------- normalisation


def answers(value) -> tuple[str, ...]:
    """Accept every ground-truth shape the files use: "a", ["a", "b"], [["a", "a'"], ["b"]] -> flat aliases."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict) and "str" in value:
        return (value["str"],)
    if isinstance(value, (list, tuple)):
        flat: list[str] = []
        for item in value:
            flat.extend(answers(item))
        return tuple(dict.fromkeys(flat))  # de-duplicated, order kept
    raise DataError(f"Unsupported ground_truth shape: {value!r}")


def _probes(block: dict | None) -> dict[str, tuple[Probe, ...]]:
    return {
        kind: tuple(Probe(item["prompt"], answers(item["ground_truth"])) for item in items)
        for kind, items in (block or {}).items()
        if items
    }


def validate(record: EditRecord) -> None:
    """Raise DataError naming the record if it cannot be edited."""
    if not record.target_new.strip():
        raise DataError(f"record {record.id}: target_new is empty")
    if not record.subject.strip():
        raise DataError(f"record {record.id}: subject is empty")
    if record.subject not in record.prompt:
        raise DataError(f"record {record.id}: subject {record.subject!r} does not occur in prompt {record.prompt!r}")


def _checked(records: list[EditRecord], skip_invalid: bool) -> list[EditRecord]:
    good, bad = [], []
    for r in records:
        try:
            validate(r)
            good.append(r)
        except DataError as err:
            if not skip_invalid:
                raise
            bad.append(str(err))
    if bad:
        print(f"[intattn] skipped {len(bad)} invalid record(s), e.g. {bad[0]}")
    return good


# ----------------------------------------------------------------------------- loaders


def _knowedit(name: str, raw: list[dict]) -> list[EditRecord]:
    out = []
    for i, r in enumerate(raw):
        rephrase = r.get("rephrase_prompt") or r.get("rephrase") or ()
        out.append(EditRecord(
            id=f"{name}/{i}", prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"],
            ground_truth=answers(r["ground_truth"]),
            rephrase=(rephrase,) if isinstance(rephrase, str) else tuple(rephrase),
            portability=_probes(r.get("portability")), locality=_probes(r.get("locality")),
        ))
    return out


def load_edits(name: str, limit: int | None = None, data_dir: str | Path | None = None,
               skip_invalid: bool = False) -> list[EditRecord]:
    """Edit requests of `zsre`, `wiki_counterfact` or `counterfact`: the first `limit` records (None or 0: all;
    every loader here reads limits the same way, `checks.check_limit`)."""
    if name not in EDIT_DATASETS:
        raise DataError(f"{name!r} is not an edit benchmark; choose one of {', '.join(EDIT_DATASETS)}")
    limit = check_limit(limit)
    raw = _read_json(name, data_dir)
    if name == "counterfact":
        records = [EditRecord(
            id=f"counterfact/{r['case_id']}", prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"],
            ground_truth=answers(r["ground_truth"]), rephrase=(r["rephrase_prompt"],),
            locality={"Neighborhood": (Probe(r["locality_prompt"], answers(r["locality_ground_truth"])),)},
        ) for r in raw]
    else:
        records = _knowedit(name, raw)
    return _checked(records[:limit] if limit is not None else records, skip_invalid)


def load_known_facts(limit: int | None = None, data_dir: str | Path | None = None) -> list[KnownFact]:
    limit = check_limit(limit)
    raw = _read_json("known_1000", data_dir)
    facts = [KnownFact(str(r["known_id"]), r["prompt"], r["subject"], r["attribute"], r["relation_id"]) for r in raw]
    return facts[:limit] if limit is not None else facts


def load_mquake(limit: int | None = None, data_dir: str | Path | None = None) -> list[MQuAKECase]:
    limit = check_limit(limit)
    raw = _read_json("mquake_hard", data_dir)
    cases = []
    for r in raw[:limit] if limit is not None else raw:
        edits = tuple(EditRecord(
            id=f"mquake/{r['case_id']}/{j}", prompt=rw["prompt"].format(rw["subject"]), subject=rw["subject"],
            target_new=rw["target_new"]["str"], ground_truth=(rw["target_true"]["str"],),
        ) for j, rw in enumerate(r["requested_rewrite"]))
        cases.append(MQuAKECase(
            id=str(r["case_id"]), edits=edits, questions=tuple(r["questions"]),
            answer=(r["answer"], *r.get("answer_alias", [])), new_answer=(r["new_answer"], *r.get("new_answer_alias", [])),
        ))
    return cases


def load_corpus(data_dir: str | Path | None = None) -> str:
    """WikiText-2 raw test text (for key second-moment statistics)."""
    return data_path("wikitext2", data_dir).read_text(encoding="utf-8")


def load_hub_knowedit(name: str, limit: int | None = None) -> list[EditRecord]:
    """KnowEdit from the Hugging Face hub (needs network); same records as the local files."""
    from huggingface_hub import hf_hub_download

    limit = check_limit(limit)
    repo, filename = HUB_NAMES[name]
    try:
        path = hf_hub_download(repo, filename, repo_type="dataset")
    except Exception as err:
        raise DataError(f"Could not fetch {repo}/{filename} from the hub ({err}); use the local files instead") from err
    records = _knowedit(name, json.loads(Path(path).read_text()))
    return _checked(records[:limit] if limit is not None else records, skip_invalid=False)


def as_dataset(records: list[EditRecord]):
    """The records as a `datasets.Dataset` (probes flattened to lists of dicts)."""
    import datasets

    rows = []
    for r in records:
        d = r.to_dict()
        for key in ("portability", "locality"):
            d[key] = [{"kind": k, "prompt": p["prompt"], "answers": list(p["answers"])} for k, ps in d[key].items() for p in ps]
        d["ground_truth"], d["rephrase"] = list(d["ground_truth"]), list(d["rephrase"])
        rows.append(d)
    return datasets.Dataset.from_list(rows)
