"""`intattn edit`: apply a batch of edits with one method and print the pre/post metrics table."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from intattn_tl.repro import tracking


def add_arguments(p) -> None:
    from intattn_tl.api import MAX_PROMPT_TOKENS
    from intattn_tl.cli.common import add_dtype_argument, add_placement_arguments
    from intattn_tl.core.checks import device, in_file, integer, out_file, real
    from intattn_tl.data.records import EDIT_DATASETS
    from intattn_tl.model.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"known model, HF id or local dir (default {DEFAULT_MODEL})")
    p.add_argument("--method", default="intattn", help="intattn, memit, alphaedit, rome, r-rome, ft (default intattn)")
    p.add_argument("--dataset", default="wiki_counterfact", choices=EDIT_DATASETS)
    p.add_argument("--limit", type=integer(lo=0), default=100, help="first N records (default 100; 0 = all)")
    p.add_argument("--alpha", type=real(0, 1), help="IntAttn-Edit's attention share (default: the tracing result)")
    p.add_argument("--hparams", type=in_file, help="YAML hyperparameter file (default hparams/<method>/<model>.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyperparameter (YAML value), e.g. --set mom2_n_samples=20000; repeatable")
    p.add_argument("--batch-size", type=integer(lo=0), default=0,
                   help="sequential editing: batches of B records one after another (default 0: all at once)")
    p.add_argument("--fact", nargs="+", action="append", metavar=("PROMPT SUBJECT TARGET", "GROUND_TRUTH"),
                   help="edit your own fact instead of a benchmark: PROMPT SUBJECT TARGET [GROUND_TRUTH] (default "
                        "ground truth: the model's own answer); repeatable")
    p.add_argument("--requests", type=in_file, metavar="FILE",
                   help="your own edit requests: .json / .jsonl / .csv with EasyEdit's fields (prompt, subject, "
                        "target_new, optional ground_truth, rephrase_prompt, locality, portability)")
    p.add_argument("--save", type=out_file, help="write the weight deltas here (load with editing.apply_saved)")
    p.add_argument("--export", metavar="DIR", help="write the edited model here as a Hugging Face checkpoint "
                   "(safetensors + tokenizer + a model card recording the edits)")
    p.add_argument("--max-prompt-tokens", type=integer(lo=1), default=MAX_PROMPT_TOKENS,
                   help=f"refuse records with a longer prompt or probe, before any forward pass (default {MAX_PROMPT_TOKENS})")
    p.add_argument("--allow-conflicts", action="store_true",
                   help="edit records with one prompt and subject but different targets as given (the benchmark "
                        "files hold some; by default such a batch is refused and exact repeats are merged)")
    p.add_argument("--force", action="store_true",
                   help="keep an edit that fails the post-edit sanity check (chain statistics far off, or unrelated "
                        "prompts' next tokens all changed); by default it is rolled back exactly")
    p.add_argument("--no-fluency", action="store_true", help="skip text generation in the evaluation")
    p.add_argument("--no-eval", action="store_true", help="edit only; print no metrics table")
    p.add_argument("--data-dir", help="benchmark folder, WikiText-2 included (default $INTATTN_DATA, else the copies shipped with the package)")
    p.add_argument("--device", default="cpu", type=device)
    add_dtype_argument(p)
    add_placement_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    tracking.add_arguments(p)  # one run: resolved hparams, chain statistics, weight changes, pre/post metrics


def parse_overrides(items: list[str], alpha: float | None) -> dict:
    from intattn_tl.config.hparams import HparamsError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HparamsError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise HparamsError(f"--set {item!r}: {value!r} is not a YAML value") from None
    if alpha is not None:
        out["alpha"] = alpha
    return out


def batches(records: list, size: int) -> list[list]:
    if size < 0:
        from intattn_tl.edit.transaction import EditError

        raise EditError(f"--batch-size must be >= 0, got {size}")
    size = size or len(records)
    return [records[i:i + size] for i in range(0, len(records), size)]


def merged(results: list):
    """One EditResult covering sequential batches: the first original of each weight, deltas summed."""
    from intattn_tl.edit.result import EditResult
    from intattn_tl.edit.transaction import WeightTransaction

    first = results[0]
    tx = WeightTransaction(first.model)
    for r in results:
        for key, original in r.tx.originals.items():
            tx.originals.setdefault(key, original)
        for key, delta in r.tx.deltas.items():
            tx.deltas[key] = tx.deltas[key] + delta if key in tx.deltas else delta.clone()
        tx.after.update(r.tx.after)
    return EditResult(model=first.model, method=first.method, hparams=first.hparams,
                      records=[x for r in results for x in r.records], tx=tx, stats=results[-1].stats)


def run(args) -> int:
    import sys

    from tqdm.auto import tqdm

    from intattn_tl.api import check_hparams, check_lengths, edit, fill_ground_truth
    from intattn_tl.cli.common import placement
    from intattn_tl.config.hparams import load_hparams
    from intattn_tl.core.settings import edit_settings
    from intattn_tl.data.conflicts import resolve
    from intattn_tl.data.records import data_path, load_edits
    from intattn_tl.data.requests import checked_records
    from intattn_tl.edit.transaction import EditError, EditState
    from intattn_tl.model.load import load_model

    # everything that can be checked without the model is checked before loading it
    hp = load_hparams(args.method, args.model, parse_overrides(args.overrides, args.alpha), path=args.hparams)
    if args.data_dir and getattr(hp, "mom2_dataset", "") is None:  # WikiText-2 from --data-dir, same cache key
        hp.mom2_dataset = str(data_path("wikitext2", args.data_dir))
    if args.export and Path(args.export).exists():
        raise EditError(f"--export {args.export} exists; choose a new folder")
    own = own_requests(args)
    records = checked_records(own) if own else load_edits(args.dataset, limit=args.limit, data_dir=args.data_dir)
    policy = "allow" if args.allow_conflicts else "refuse"
    records, repeats = resolve(records, policy)  # the whole request, before the model loads
    for note in repeats:
        print(f"intattn edit: note: {note}", file=sys.stderr)
    groups = batches(records, args.batch_size)
    model = load_model(args.model, dtype=args.dtype, **placement(args))
    if own:  # the model's own answers stand in for missing ground truths
        records = fill_ground_truth(model, records)
        groups = batches(records, args.batch_size)
        for r in records:
            print(f"{r.id}: {r.prompt!r} -> {r.target_new!r} (was {r.ground_truth[0]!r})")
    check_hparams(args.method, hp, model)
    check_lengths(model, records, args.max_prompt_tokens)
    if not args.no_eval:
        from intattn_tl.evaluation.metrics import EvalConfig, evaluate, locality_reference, summarize

        cfg = EvalConfig(fluency=not args.no_fluency, progress=not args.quiet)
        ref = locality_reference(model, records, cfg)
        pre_rows = evaluate(model, records, cfg, locality_ref=ref)
        pre = summarize(pre_rows)
    t0 = time.time()
    state, results = EditState(), []
    for group in tqdm(groups, desc=f"{args.method} batches", disable=args.quiet or len(groups) == 1):
        results.append(edit(model, group, args.method, hp, state, progress=not args.quiet,
                            max_prompt_tokens=args.max_prompt_tokens, conflicts=policy, force=args.force))
    t_edit = time.time() - t0
    label = {"model": args.model, "method": args.method, "dataset": "own facts" if own else args.dataset,
             "n": str(len(records))}
    if not args.no_eval:
        from intattn_tl.evaluation.metrics import format_table

        post_rows = evaluate(model, records, cfg, locality_ref=ref)
        post = summarize(post_rows)
        print(format_table([{**label, "": "pre", **pre}, {**label, "": "post", **post}]))
    alpha = results[-1].stats.get("alpha")
    print(f"\n{len(records)} edits in {len(groups)} batch(es), {t_edit:.1f}s"
          + (f"; alpha={alpha:.3f}" if alpha is not None else ""))
    if args.save:
        print(f"deltas: {merged(results).save(args.save)}")
    if args.export:
        from intattn_tl.edit.export import edit_card, export_model

        print(f"edited model: {export_model(model, args.export, [edit_card(r) for r in results])}")
    if tracking.wanted(args):
        config = tracking.command_config(args, settings=edit_settings(args.method, hp, model), n_records=len(records),
                                         record_ids=[r.id for r in records], n_batches=len(groups),
                                         eval_config=None if args.no_eval else vars(cfg))
        summary, tables = tracking.edit_log(results)
        summary |= {"n_records": len(records), "edit_seconds": t_edit}
        if not args.no_eval:
            summary |= {f"pre/{k}": v for k, v in pre.items()} | {f"post/{k}": v for k, v in post.items()}
            tables["per_record"] = [{"stage": stage, **row} for stage, rows in (("pre", pre_rows), ("post", post_rows))
                                    for row in rows]
        print(tracking.where(tracking.log_run("edit", config, summary, tables,
                                              name=f"edit-{args.method}-{args.model}-{len(records)}")))
    return 0


def own_requests(args) -> list:
    """--fact / --requests as EditRequests (empty: edit benchmark records)."""
    from intattn_tl.data.records import DataError
    from intattn_tl.data.requests import EditRequest, read_requests

    facts = args.fact or []
    bad = [f for f in facts if len(f) not in (3, 4)]
    if bad:
        raise DataError(f"--fact takes PROMPT SUBJECT TARGET [GROUND_TRUTH], got {len(bad[0])} value(s): {bad[0]}")
    out = [EditRequest(*f[:3], ground_truth=tuple(f[3:])) for f in facts]
    return out + (read_requests(args.requests) if args.requests else [])
