"""Command-line interface: a thin layer over ptlab's Python API. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ptlab.errors import PtlabError, one_line
from ptlab.train.host import prefer_passive_waiting

OVERRIDES_HELP = ("config overrides as dotted key=value pairs, e.g. train.max_steps=200 model.d_model=128 "
                  "'data.train_files=[a.jsonl.gz,b.jsonl.gz]'")


def _cmd_demo(args: argparse.Namespace) -> None:
    from ptlab.lab.demo import run_demo

    run_demo(args.config, args.overrides, show_progress=not args.quiet)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from ptlab.config import load_config
    from ptlab.train.loop import pretrain

    cfg = load_config(args.config, args.overrides)
    resume = "always" if args.resume else "never" if args.restart else "auto"
    result = pretrain(cfg, show_progress=not args.quiet, resume=resume, allow_data_change=args.allow_data_change)
    if result.interrupted:
        print(f"ptlab: {result.interrupted} at step {result.steps}: saved {result.checkpoint}; run the same command "
              "again to resume", file=sys.stderr)
        sys.exit(130 if result.interrupted == "SIGINT" else 143)
    def figure(value: float | None) -> str:
        return f"{value:.3f}" if value is not None else "-"

    bpb = (f" ({figure(result.initial_val_bpb)} -> {figure(result.final_val_bpb)} bits per byte)"
           if result.final_val_bpb is not None else "")
    print(f"done: {result.steps} steps, validation loss {figure(result.initial_val_loss)} -> "
          f"{figure(result.final_val_loss)}{bpb}, "
          f"{result.tokens_per_second:,.0f} tokens/s; checkpoint {result.checkpoint}")


def _add_reader_options(parser: argparse.ArgumentParser, skip_bad: str, skip_bad_group=None) -> None:
    from ptlab.data.readers import TEXT_MODES

    parser.add_argument("--text-field", default="text",
                        help="the JSONL/Parquet/datasets field holding the text (default: %(default)s)")
    parser.add_argument("--text-mode", choices=TEXT_MODES, default="file",
                        help=".txt inputs: a whole file is one document, or each blank-line-separated block is "
                             "(default: %(default)s)")
    (skip_bad_group or parser).add_argument("--skip-bad", action="store_true", help=skip_bad)


def _reader_options(args: argparse.Namespace):
    """The reader keyword arguments the flags ask for, with a fresh `ReadStats` to count what --skip-bad skips."""
    from ptlab.data.readers import ReadStats

    stats = ReadStats()
    return {"text_field": args.text_field, "text_mode": args.text_mode, "skip_bad": args.skip_bad,
            "stats": stats}, stats


def _report_skipped(stats) -> None:
    if stats.bad:
        print(f"ptlab: skipped {stats.bad:,} bad input record(s); the first: {stats.examples[0]}", file=sys.stderr)


def _cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from ptlab.data.corpus import iter_texts
    from ptlab.data.tokenizer import train_tokenizer

    options, stats = _reader_options(args)
    texts = iter_texts(args.input, args.source or (), **options)
    tokenizer = train_tokenizer(texts, args.kind, args.vocab_size, args.sentinels, show_progress=not args.quiet)
    _report_skipped(stats)
    tokenizer.save(args.output)
    specials = tokenizer.specials
    print(f"saved {args.kind} tokenizer with {tokenizer.vocab_size:,} ids to {args.output}/tokenizer.json "
          f"(pad={specials.pad} eos={specials.eos} unk={specials.unk}"
          + (f", <extra_id_0>={specials.sentinels[0]}" if specials.sentinels else "") + ")")


def _cmd_tokenize(args: argparse.Namespace) -> None:
    from ptlab.data.tokenize_parallel import tokenize_to_shard
    from ptlab.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    options, stats = _reader_options(args)
    shard = tokenize_to_shard(args.input, tokenizer, args.output, args.separator, args.source or (),
                              workers=args.workers, engine=args.engine, show_progress=not args.quiet, **options)
    _report_skipped(stats)
    pieces = len(shard.index.get("pieces", [])) or 1
    print(f"wrote {shard.num_tokens:,} tokens from {shard.index['num_documents']:,} documents to {args.output} "
          f"({shard.index['dtype']}, {pieces} piece{'s' if pieces > 1 else ''})")


def _cmd_objectives_list(args: argparse.Namespace) -> None:
    from ptlab.lab.preview import format_list

    print(format_list())


def _cmd_objectives_show(args: argparse.Namespace) -> None:
    import json

    from ptlab.lab.preview import format_shown, show_objective

    if args.text_file:
        path = Path(args.text_file)
        if not path.is_file():
            raise PtlabError(f"text file not found: {path}")
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise PtlabError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    else:
        texts = [args.text]
    objective, shown = show_objective(args.name, texts, args.tokenizer, args.seed, args.set or [])
    if args.json:
        for item in shown:
            print(json.dumps({"inputs": item["inputs"], "targets": item["targets"]}, ensure_ascii=False))
    else:
        print(format_shown(objective, shown))


def _cmd_import_hf(args: argparse.Namespace) -> None:
    from ptlab.train.interop import import_hf

    out = import_hf(args.hf_dir, args.out_dir)
    print(f"imported {args.hf_dir} into the ptlab checkpoint {out}")


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from ptlab.train.interop import export_hf

    out, notes = export_hf(args.checkpoint, args.out_dir)
    for note in notes:
        print(f"ptlab: note: {note}", file=sys.stderr)
    print(f"exported {args.checkpoint} to {out} (load it with transformers' AutoModelForSeq2SeqLM / "
          "AutoModelForCausalLM)")


def _cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from ptlab.models.generate import GenerationOptions, generate
    from ptlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    model = load_model(args.checkpoint)
    tokenizer = load_checkpoint_tokenizer(args.checkpoint)
    cfg = model.config
    ids = tokenizer.encode(args.prompt)
    if model.is_encoder_decoder:
        ids = ids + [cfg.eos_token_id]  # encoder inputs end with EOS, as in pre-training
    elif cfg.bos_token_id is not None and cfg.bos_token_id != cfg.eos_token_id:
        ids = [cfg.bos_token_id] + ids
    if not ids:
        raise PtlabError("--prompt is empty")
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                length_penalty=args.length_penalty, do_sample=args.sample,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                use_cache=not args.no_cache)
    for _ in range(args.num_samples):
        new = generate(model, torch.tensor([ids]), options=options)[0].tolist()
        if cfg.eos_token_id in new:
            new = new[:new.index(cfg.eos_token_id)]
        print(tokenizer.decode(new, skip_special_tokens=False) if args.show_special else tokenizer.decode(new))
        if options.seed is not None:
            options.seed += 1


def _cmd_plot(args: argparse.Namespace) -> None:
    from ptlab.lab.plot import plot_runs

    out = plot_runs(args.run_dirs, args.output, args.x, args.log)
    print(f"wrote {out}")


def _cmd_clean(args: argparse.Namespace) -> None:
    from ptlab.clean.engine import clean_files, print_report
    from ptlab.clean.rules import CleanConfig

    cfg = CleanConfig(skip=frozenset(args.skip or ()), language=args.language,
                      min_language_probability=args.min_language_probability, rules=args.rules)
    report = clean_files(args.inputs, args.output, args.report, cfg, workers=args.workers, engine=args.engine,
                         strict=args.strict, show_progress=not args.quiet, text_field=args.text_field,
                         text_mode=args.text_mode)
    print_report(report, cfg)
    print(f"\nwrote {report.docs_out:,} documents to {args.output}" + (f"; report {args.report}" if args.report else ""))


def _task_config(args: argparse.Namespace):
    from ptlab.config import TaskConfig, from_dict, parse_value

    data = {"name": args.task} if args.task else {}
    for item in args.task_set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise PtlabError(f"--set {item!r} must look like key=value (a task key, e.g. test=my.csv)")
        data[key.strip()] = parse_value(raw)
    cfg = from_dict(TaskConfig, data, "task.")
    cfg.validate()
    return cfg


def _cmd_finetune(args: argparse.Namespace) -> None:
    from ptlab.config import FinetuneConfig, load_config
    from ptlab.downstream.evaluate import print_scores
    from ptlab.downstream.finetune import finetune

    cfg = load_config(args.config, args.overrides, cls=FinetuneConfig)
    resume = "always" if args.resume else "never" if args.restart else "auto"
    result = finetune(cfg, show_progress=not args.quiet, resume=resume)
    if result.interrupted:
        print(f"ptlab: {result.interrupted} at step {result.steps}: saved {result.checkpoint}; run the same command "
              "again to resume", file=sys.stderr)
        sys.exit(130 if result.interrupted == "SIGINT" else 143)
    print_scores(f"validation (best, step {result.best_step})", result.validation)
    if result.test is not None:
        print_scores("test", result.test)
    print(f"best weights: {result.checkpoint}; predictions and scores in {result.run_dir}")


def _cmd_tapt(args: argparse.Namespace) -> None:
    from ptlab.config import FinetuneConfig, load_config
    from ptlab.downstream.evaluate import print_scores
    from ptlab.lab.adaptive import tapt

    cfg = load_config(args.config, args.overrides, cls=FinetuneConfig)
    result = tapt(cfg, steps=args.steps, out=args.out, show_progress=not args.quiet)
    if result.interrupted:
        print(f"ptlab: {result.interrupted}: run the same command again to resume", file=sys.stderr)
        sys.exit(130 if result.interrupted == "SIGINT" else 143)
    ft = result.finetune
    print(f"adapted {cfg.init} on the training inputs of the task for {result.steps} steps: {result.adapt_dir}")
    print_scores(f"validation (best, step {ft.best_step})", ft.validation)
    if ft.test is not None:
        print_scores("test", ft.test)
    print(f"best weights: {ft.checkpoint}; predictions and scores in {ft.run_dir}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ptlab.downstream.evaluate import evaluate_checkpoint, print_scores

    if args.limit is not None and args.limit < 1:
        raise PtlabError(f"--limit must be at least 1, got {args.limit}")
    if args.harness:
        from ptlab.downstream.harness import print_harness, run_harness

        print_harness(run_harness(args.checkpoint, args.harness, limit=args.limit, output=args.scores))
        return
    if args.shots is not None:
        from ptlab.downstream.incontext import evaluate_prompted, print_prompted

        task_cfg = _task_config(args)
        if args.limit:
            task_cfg.max_eval_examples = args.limit
        scores = evaluate_prompted(args.checkpoint, task_cfg, args.shots, args.seed, args.split, args.output,
                                   args.scores, args.context, show_progress=not args.quiet)
        print_prompted(f"{args.task or 'task'} {args.split}", scores)
    else:
        scores = evaluate_checkpoint(args.checkpoint, _task_config(args), args.split, args.output,
                                     show_progress=not args.quiet)
        print_scores(f"{args.task or 'task'} {args.split}", scores)
        if args.scores:
            from ptlab.files import json_text, write_text_atomic

            write_text_atomic(args.scores, json_text(scores, indent=2) + "\n")
    for path, what in ((args.output, "predictions"), (args.scores, "scores")):
        if path:
            print(f"{what} written to {path}")


def _cmd_probe(args: argparse.Namespace) -> None:
    from ptlab.downstream.probe import linear_probe

    accuracy = linear_probe(args.checkpoint, _task_config(args), split=args.split)
    print(f"linear probe on mean-pooled states, {args.task or 'task'} {args.split}: accuracy {accuracy:.2f}")


def _cmd_study(args: argparse.Namespace) -> None:
    from ptlab.lab.study import estimate_seconds, format_plan, load_study, plan_study, run_study

    if args.jobs < 1:
        raise PtlabError(f"--jobs must be at least 1, got {args.jobs}")
    study, base_dir = load_study(args.config, args.overrides)
    plan = plan_study(study, base_dir)
    if args.dry_run:
        print(format_plan(plan, estimate_seconds(plan, args.jobs), args.jobs))
        return
    run_study(plan, jobs=args.jobs, show_progress=not args.quiet)


def _cmd_cost(args: argparse.Namespace) -> None:
    from ptlab.lab.cost import PRESETS, estimate, format_estimate

    targets = list(PRESETS) if args.target == "all" else [args.target]
    print("\n\n".join(format_estimate(estimate(t, args.tokens, args.gpu, args.mfu, args.price_per_hour))
                       for t in targets))


def _scaling_outputs(*paths: str | None) -> None:
    """Check every output path before the fit, so that a mistake there costs no work and writes nothing."""
    from ptlab.files import prepare_output

    for path in paths:
        if path:
            prepare_output(path)


def _cmd_scaling_fit(args: argparse.Namespace) -> None:
    from ptlab.files import json_text, write_text_atomic
    from ptlab.lab.scaling import compute_frontier, fit_law, isoflop_parabolas, plot_scaling, read_runs
    from ptlab.lab.scaling.fit import GRIDS
    from ptlab.lab.scaling.report import format_fit

    _scaling_outputs(args.json, args.plot)
    runs = read_runs(args.table)
    fit = fit_law(runs, args.bootstrap, args.seed, args.grid)
    isoflops = isoflop_parabolas(runs)
    print(format_fit(fit, len(GRIDS[args.grid]()), [compute_frontier(runs), isoflops]))
    if args.plot:
        print(f"plot: {plot_scaling(fit, args.plot, isoflops)}")
    if args.json:
        write_text_atomic(args.json, json_text(fit.to_json(), indent=2) + "\n")
        print(f"fit: {args.json}")


def _cmd_scaling_predict(args: argparse.Namespace) -> None:
    from ptlab.lab.scaling import plot_scaling, predict_holdout, read_runs
    from ptlab.lab.scaling.report import format_holdout

    _scaling_outputs(args.plot)
    holdout = predict_holdout(read_runs(args.table), args.holdout, args.bootstrap, args.seed, args.grid)
    print(format_holdout(holdout))
    if args.plot:
        print(f"plot: {plot_scaling(holdout.fit, args.plot, holdout=holdout)}")


def _cmd_scaling_allocate(args: argparse.Namespace) -> None:
    from ptlab.files import read_json_object
    from ptlab.lab.cost import estimate_size
    from ptlab.lab.scaling import allocate, fit_from_json, fit_law, price, read_runs
    from ptlab.lab.scaling.allocate import check_flops
    from ptlab.lab.scaling.report import format_allocation, format_law

    check_flops(args.flops)
    estimate_size(1, 1, args.gpu, args.mfu, args.price_per_hour)  # the pricing options' errors, before any fit
    source = Path(args.source)
    if source.suffix.lower() == ".json":
        if not source.is_file():
            raise PtlabError(f"fit file not found: {source}")
        fitted = fit_from_json(read_json_object(source), str(source))
        print(f"law from {source}: {format_law(fitted)} (no bootstrap: no intervals)")
    else:
        fitted = fit_law(read_runs(source), args.bootstrap, args.seed, args.grid)
        print(f"fitted to {len(fitted.runs)} runs of {source}: {format_law(fitted.law)}")
    allocation = allocate(fitted, args.flops)
    print(format_allocation(allocation, price(allocation, args.gpu, args.mfu, args.price_per_hour)))


def _cmd_scaling_ladder(args: argparse.Namespace) -> None:
    from ptlab.lab.scaling.ladder import (estimate_seconds, fit_ladder, format_ladder_plan, load_ladder, plan_ladder,
                                         run_ladder)

    if args.jobs < 1:
        raise PtlabError(f"--jobs must be at least 1, got {args.jobs}")
    plan = plan_ladder(*load_ladder(args.config, args.overrides))
    if args.dry_run:
        print(format_ladder_plan(plan, estimate_seconds(plan, args.jobs), args.jobs))
        return
    fit_ladder(run_ladder(plan, jobs=args.jobs, show_progress=not args.quiet))


def _cmd_scaling_compare(args: argparse.Namespace) -> None:
    from ptlab.files import json_text, write_text_atomic
    from ptlab.lab.scaling import fit_law, read_runs
    from ptlab.lab.scaling.compare import Curve, compare, format_comparison, named_table
    from ptlab.lab.scaling.plot import plot_comparison

    if len(args.tables) < 2:
        raise PtlabError(f"a comparison needs two tables or more, got {len(args.tables)}")
    _scaling_outputs(args.json, args.plot)
    tables = [named_table(table) for table in args.tables]
    runs = [(name, read_runs(path)) for name, path in tables]  # every table read before any fit
    comparison = compare([Curve.of(name, fit_law(table, args.bootstrap, args.seed, args.grid))
                          for name, table in runs])
    print(format_comparison(comparison))
    if args.plot:
        print(f"plot: {plot_comparison(comparison, args.plot)}")
    if args.json:
        write_text_atomic(args.json, json_text(comparison.to_json(), indent=2) + "\n")
        print(f"comparison: {args.json}")


# ---- the parser: one function per command (or pair of commands), listed in `COMMANDS` ---------------------------

Subparsers = argparse._SubParsersAction


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_corpus_input(parser: argparse.ArgumentParser) -> None:
    """--input and the reader options of the commands that read a corpus to tokenize it."""
    parser.add_argument("--input", nargs="+", required=True,
                        help="corpus files, directories or glob patterns (quote globs)")
    _add_reader_options(parser, "skip (and count) corrupt files and records instead of stopping at the first")


def _add_gpu_price(parser: argparse.ArgumentParser, gpu_default: str | None, gpu_default_help: str) -> None:
    """--gpu, --mfu and --price-per-hour: what a run costs on a GPU (`cost`, `scaling allocate`)."""
    parser.add_argument("--gpu", default=gpu_default,
                        help=f"v100, a100, h100, h200 or b200 (default: {gpu_default_help})")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default: %(default)s)")
    parser.add_argument("--price-per-hour", type=float, help="USD per GPU-hour (default: an on-demand list price)")


def _add_group(sub: Subparsers, name: str, **texts) -> Subparsers:
    """A command whose subcommands do the work (`ptlab tokenizer train`); on its own it prints its help."""
    group = sub.add_parser(name, **texts)
    group.set_defaults(help_parser=group)
    return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def _add_demo(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="the whole path on the bundled corpus in a few minutes",
                          description="Does pre-training pay off? Train (or reuse) a tokenizer on the bundled "
                                      "corpus, build token shards, pre-train a tiny T5 with BART's denoising "
                                      "objective (the config's), show its validation loss against a unigram "
                                      "baseline and its predictions on held-out passages, then fine-tune it next to "
                                      "the same model from scratch on debian_summaries and rt_polarity and print a "
                                      "verdict for each, with a 95% interval.")
    demo.add_argument("--config", default="configs/demo.yaml", help="demo config (default: %(default)s)")
    _add_quiet(demo)
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    demo.set_defaults(func=_cmd_demo)


def _add_pretrain(sub: Subparsers) -> None:
    pre = sub.add_parser("pretrain", help="pre-train a model from a YAML config",
                         description="Pre-train as configured: the tokenizer and token shards are built on first "
                                     "use; metrics go to RUN_DIR/metrics.jsonl (and RUN_DIR/tensorboard) and "
                                     "checkpoints to RUN_DIR/checkpoints/step_N/. A run directory that holds a "
                                     "checkpoint is resumed exactly where it stopped. Ctrl-C or SIGTERM saves a "
                                     "checkpoint and exits. For several processes or GPUs: torchrun "
                                     "--nproc_per_node=N -m ptlab pretrain ... (train.distributed: ddp or fsdp).")
    pre.add_argument("--config", help="YAML config file (default: built-in defaults)")
    again = pre.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="require a checkpoint in run_dir to continue from (default: continue when there is one)")
    again.add_argument("--restart", action="store_true",
                       help="delete run_dir's checkpoints and metrics and start afresh")
    pre.add_argument("--allow-data-change", action="store_true",
                     help="resume even though the data, tokenizer, objective, seed or batch size changed")
    _add_quiet(pre)
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    pre.set_defaults(func=_cmd_pretrain)


def _add_tokenizer(sub: Subparsers) -> None:
    tok_sub = _add_group(sub, "tokenizer", help="train a tokenizer", description="Tokenizer commands.")
    train = tok_sub.add_parser(
        "train", help="train a Unigram (T5-style) or byte-level BPE (GPT-style) tokenizer",
        description="Train a tokenizer on corpus files (JSON Lines, .txt, each optionally .gz or .zst; Parquet; "
                    "`datasets` save_to_disk directories; directories and glob patterns). Special ids: "
                    "<pad>=0, </s>=1, <unk>=2; sentinels <extra_id_0..K-1> at the top of the vocabulary with "
                    "<extra_id_0> highest, as in T5. Writes OUTPUT/tokenizer.json (standard HF format).")
    _add_corpus_input(train)
    train.add_argument("--kind", choices=["unigram", "bpe"], default="unigram",
                       help="unigram: SentencePiece-style with byte fallback; bpe: byte-level (default: %(default)s)")
    train.add_argument("--vocab-size", type=int, default=8192, help="total ids, specials included (default: %(default)s)")
    train.add_argument("--sentinels", type=int, default=100, help="number of <extra_id_N> tokens (default: %(default)s)")
    train.add_argument("--source", action="append", help="only records with this 'source' value (repeatable)")
    train.add_argument("--output", required=True, help="directory to write tokenizer.json into")
    _add_quiet(train)
    train.set_defaults(func=_cmd_tokenizer_train)


def _add_clean(sub: Subparsers) -> None:
    from ptlab.clean.rules import ALL_RULES, RULES

    clean = sub.add_parser(
        "clean", help="clean raw web-like text the way C4 was cleaned, with a report of what each rule removed",
        description="C4's cleaning (tensorflow-datasets c4_utils, C4 3.1.0 en), in C4's order: " + ", ".join(RULES)
                    + ". Inputs are JSON Lines (.gz/.zst), Parquet or `datasets` directories (the --text-field per "
                      "record; url, timestamp, id and other fields are kept) or .txt files (see --text-mode); "
                      "directories are read recursively, globs expanded. The kept records are written in input "
                      "order with their cleaned text.",
        epilog="example: ptlab clean data/messy/spam_assassin.jsonl.gz --output runs/clean.jsonl "
               "--report runs/clean-report.json --workers 2")
    clean.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="corpus files (JSON Lines, .txt, Parquet, `datasets` directories), directories or globs")
    clean.add_argument("--output", required=True, help="JSONL file to write (.gz to compress)")
    clean.add_argument("--report", help="also write the report as JSON here")
    clean.add_argument("--workers", type=int, default=1, help="worker processes (default: %(default)s)")
    clean.add_argument("--skip", action="append", choices=ALL_RULES, metavar="RULE",
                       help=f"a rule to leave out (repeatable): {', '.join(ALL_RULES)}")
    clean.add_argument("--rules", choices=["c4", "gopher"], default="c4",
                       help="c4: C4's line rules; gopher: Gopher's page-level quality rules in their place (word "
                            "count, word length, symbols, bullets, ellipses, letters, stop words); default: "
                            "%(default)s")
    clean.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local processes, or Ray Data (pip install 'ptlab[ray]'); default: %(default)s")
    clean.add_argument("--language", default="en", help="language to keep (langdetect code; default: %(default)s)")
    clean.add_argument("--min-language-probability", type=float, default=0.99,
                       help="langdetect probability needed to keep a page (default: %(default)s)")
    bad_input = clean.add_mutually_exclusive_group()
    bad_input.add_argument("--strict", action="store_true",
                           help="stop at the first bad input record instead of skipping")
    _add_reader_options(clean, "skip and report bad input records (clean's default; --strict stops instead)",
                        bad_input)
    _add_quiet(clean)
    clean.set_defaults(func=_cmd_clean)


def _add_objectives(sub: Subparsers) -> None:
    obj_sub = _add_group(sub, "objectives", help="list the pre-training objectives or show one on a text",
                         description="The pre-training objectives and their parameters.")
    listing = obj_sub.add_parser("list", help="every objective with its parameters and defaults",
                                 description="Every objective name usable as objective.name in a config, with its "
                                             "parameters (set them as objective.KEY in a config).")
    listing.set_defaults(func=_cmd_objectives_list)
    show = obj_sub.add_parser(
        "show", help="show what an objective does to a text",
        description="Apply an objective to a text and print the inputs and targets a model would see. Sentinels "
                    "print as <extra_id_N>, the mask as <mask>, EOS as </s>.",
        epilog="example: ptlab objectives show span_corruption --tokenizer words --set noise_density=0.3 "
               "--text \"Thank you for inviting me to your party last week .\"")
    show.add_argument("name", help="objective name (see `ptlab objectives list`)")
    source = show.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to corrupt")
    source.add_argument("--text-file", help="a UTF-8 file; each non-empty line is one document")
    show.add_argument("--tokenizer", default="words",
                      help="'words' (whitespace-separated words; default) or a directory holding tokenizer.json")
    show.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    show.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="an objective parameter, e.g. noise_density=0.3 (repeatable)")
    show.add_argument("--json", action="store_true",
                      help='one JSON object per document: {"inputs": [...], "targets": [...]} with token strings')
    show.set_defaults(func=_cmd_objectives_show)


def _add_finetune(sub: Subparsers) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a checkpoint (or a fresh model) on a text-to-text task",
                        description="Fine-tune from `init` (a checkpoint or run directory; `none` trains from "
                                    "scratch) on a bundled task (rt_polarity, bible_paraphrase, debian_summaries, "
                                    "ddtp_en_de, ddtp_en_fr, bible_en_es, spam_ham) or your own JSONL/CSV task "
                                    "defined in the config. Keeps the weights with the best validation score "
                                    "(early stopping), saves them to RUN_DIR/best and scores the test split.",
                        epilog="example: ptlab finetune --config configs/finetune-rt.yaml init=runs/demo")
    ft.add_argument("--config", help="YAML fine-tuning config (keys: run_dir, seed, init, tokenizer, model, task, "
                                     "train, epochs, patience)")
    again = ft.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="require a checkpoint in RUN_DIR to continue from (the default continues one if there is "
                            "one: a killed fine-tune resumes to the scores of an uninterrupted one)")
    again.add_argument("--restart", action="store_true",
                       help="delete RUN_DIR's checkpoints, best weights, metrics and scores, and start afresh")
    _add_quiet(ft)
    ft.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. task.name=spam_ham")
    ft.set_defaults(func=_cmd_finetune)


def _add_tapt(sub: Subparsers) -> None:
    tapt = sub.add_parser(
        "tapt", help="task-adaptive pre-training: continue pre-training on a task's inputs, then fine-tune",
        description="Task-adaptive pre-training (TAPT; Gururangan et al. 2020, \"Don't Stop Pretraining\"): "
                    "continue pre-training the config's init checkpoint on the unlabeled inputs of the task's "
                    "training split, with the objective it was pre-trained with, then fine-tune from the adapted "
                    "weights. Writes OUT/adapt and OUT/finetune; run it again to resume.",
        epilog="example: ptlab tapt --config configs/finetune-rt.yaml init=runs/demo --steps 300")
    tapt.add_argument("--config", help="YAML fine-tuning config whose init is a ptlab pre-training checkpoint")
    tapt.add_argument("--steps", type=int, help="continued pre-training steps (default: about 3 passes over the "
                                                "task's training inputs, printed)")
    tapt.add_argument("--out", help="run directory for adapt/ and finetune/ (default: the config's run_dir)")
    _add_quiet(tapt)
    tapt.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fine-tuning config overrides")
    tapt.set_defaults(func=_cmd_tapt)


def _add_evaluate_and_probe(sub: Subparsers) -> None:
    """Two commands that score a checkpoint on a task split, with the same first options."""
    for name, helper, func in (("evaluate", "score a checkpoint on a task split (writes predictions)", _cmd_evaluate),
                               ("probe", "linear probe: logistic regression on a checkpoint's frozen, mean-pooled "
                                         "states", _cmd_probe)):
        command = sub.add_parser(name, help=helper, description=helper[0].upper() + helper[1:] + ".")
        command.add_argument("checkpoint", help="a checkpoint directory or run directory")
        command.add_argument("--task", help="a bundled task name")
        command.add_argument("--set", dest="task_set", action="append", metavar="KEY=VALUE",
                             help="task keys for a custom task (train=, test=, input_template=, target_field=, "
                                  "labels=, metrics=; for --shots: prompt=, verbalizer=)")
        command.add_argument("--split", default="test" if name == "evaluate" else "validation",
                             help="split to score (default: %(default)s)")
        if name == "evaluate":
            command.add_argument("--output", help="JSONL file for the predictions")
            command.add_argument("--scores", help="JSON file for the scores")
            command.add_argument("--shots", type=int, metavar="K",
                                 help="prompt the (pre-trained) model instead: the task's prompt after K "
                                      "demonstrations from the train split (0: zero-shot); labels ranked by "
                                      "likelihood, summed and per token; generation stops at a newline")
            command.add_argument("--seed", type=int, default=0, help="--shots: seed of the demonstrations' draw "
                                                                     "(default: %(default)s)")
            command.add_argument("--context", type=int, metavar="TOKENS",
                                 help="--shots: the model's context (default: its learned positions, or the "
                                      "length it was pre-trained on)")
            command.add_argument("--limit", type=int, metavar="N", help="--shots/--harness: the first N examples")
            command.add_argument("--harness", metavar="TASKS",
                                 help="run lm-evaluation-harness (extra [harness]) on the transformers export, "
                                      "offline: comma-separated harness task names or YAML files (e.g. "
                                      "ptlab_rt_polarity, shipped)")
            _add_quiet(command)
        command.set_defaults(func=func)


def _add_plot(sub: Subparsers) -> None:
    plot = sub.add_parser("plot", help="draw the loss curves of one or several runs into a PNG",
                          description="Training loss (lines) and validation loss (markers) from each RUN_DIR's "
                                      "metrics.jsonl, one colour per run, and beside them validation bits per "
                                      "byte where the runs logged it (comparable across tokenizers).")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    plot.add_argument("--output", default="loss.png", help="PNG to write (default: %(default)s)")
    plot.add_argument("--x", choices=["step", "tokens"], default="step", help="x axis (default: %(default)s)")
    plot.add_argument("--log", action="store_true", help="logarithmic loss axis")
    plot.set_defaults(func=_cmd_plot)


def _add_hf(sub: Subparsers) -> None:
    imp = sub.add_parser("import-hf", help="import a Hugging Face transformers model as a ptlab checkpoint",
                         description="Read a save_pretrained directory of T5ForConditionalGeneration, "
                                     "BartForConditionalGeneration, GPT2LMHeadModel or LlamaForCausalLM (config.json "
                                     "and safetensors weights; tokenizer.json when present) and write a ptlab "
                                     "checkpoint directory. Settings ptlab does not implement are an error.")
    imp.add_argument("hf_dir", help="the transformers model directory")
    imp.add_argument("out_dir", help="the ptlab checkpoint directory to create")
    imp.set_defaults(func=_cmd_import_hf)

    exp = sub.add_parser("export-hf", help="export a ptlab checkpoint for Hugging Face transformers",
                         description="Write config.json, model.safetensors and the tokenizer files so that "
                                     "transformers' AutoModelForSeq2SeqLM / AutoModelForCausalLM and AutoTokenizer "
                                     "load the model with no custom code.")
    exp.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    exp.add_argument("out_dir", help="the directory to create")
    exp.set_defaults(func=_cmd_export_hf)


def _add_generate(sub: Subparsers) -> None:
    gen = sub.add_parser("generate", help="generate text from a checkpoint",
                         description="Encoder-decoders generate the target for the prompt; decoder-only models "
                                     "continue it. Greedy by default; --num-beams for beam search, --sample for "
                                     "sampling. Uses a KV cache.")
    gen.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    gen.add_argument("--prompt", required=True, help="the input text")
    gen.add_argument("--max-new-tokens", type=int, default=32, help="default: %(default)s")
    gen.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (default: greedy)")
    gen.add_argument("--length-penalty", type=float, default=1.0,
                     help="beam search: score = log p / length ** penalty (default: %(default)s)")
    gen.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    gen.add_argument("--seed", type=_seed, help="sampling seed, for reproducible samples")
    gen.add_argument("--num-samples", type=int, default=1, help="how many outputs to print (default: 1)")
    gen.add_argument("--no-cache", action="store_true", help="recompute every step (slower; for checking)")
    gen.add_argument("--show-special", action="store_true", help="print sentinels and other special tokens")
    gen.set_defaults(func=_cmd_generate)


def _add_study(sub: Subparsers) -> None:
    study = sub.add_parser(
        "study", help="a grid of pre-training settings, each fine-tuned on downstream tasks: T5's tables in miniature",
        description="Run a study config (configs/study-*.yaml): every cell pre-trains from the same base config and "
                    "token budget (an objective, architecture, corruption setting or data mix), then fine-tunes with "
                    "one recipe on each task and seed. Writes RUN_DIR/table.md, table.csv and chart.png (mean +- std "
                    "over seeds, and the average over tasks). Rerunning a killed study skips finished work.",
        epilog="Scale up without editing the file: ptlab study configs/study-tiny.yaml size=base "
               "common.train.device=cuda run_dir=runs/study-base")
    _add_plan_options(study, "study", "the plan with parameters, FLOPs and a time estimate (from a few steps of "
                                      "each cell's model, timed with --jobs' threads)", "cells run",
                      "size=small seeds=[0] common.train.max_steps=500")
    study.set_defaults(func=_cmd_study)


def _add_plan_options(parser: argparse.ArgumentParser, what: str, dry_run: str, jobs: str, example: str) -> None:
    """CONFIG, --dry-run, --jobs, --quiet and KEY=VALUE overrides: a command that plans runs and then runs them
    (`study`, `scaling ladder`)."""
    parser.add_argument("config", help=f"{what} YAML file")
    parser.add_argument("--dry-run", action="store_true", help=f"print {dry_run}, and run nothing")
    parser.add_argument("--jobs", type=int, default=1, help=f"{jobs} side by side, each with cores/jobs threads "
                                                            "(default: %(default)s)")
    _add_quiet(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"override {what} keys, e.g. {example}")


def _add_cost(sub: Subparsers) -> None:
    cost = sub.add_parser(
        "cost", help="FLOPs, GPU-hours and money of a pre-training run (a config or a published model)",
        description="Estimate a pre-training run: FLOPs = (6N + 12 * layers * d_model * seq) per token, GPU-hours = "
                    "FLOPs / (MFU * peak), money = GPU-hours * price. Presets use the published size and token "
                    "count and the GPU generation the model was trained on; configs use their own steps x batch.")
    cost.add_argument("target", help="a ptlab pre-training config file, a preset (bert-base, bert-large, gpt2, gpt3, "
                                     "t5-base, t5-11b, llama-7b, llama-13b, llama-33b, llama-65b), or 'all'")
    cost.add_argument("--tokens", type=float, help="training tokens (default: the preset's or the config's)")
    _add_gpu_price(cost, None, "the preset's own; h100 for configs")
    cost.set_defaults(func=_cmd_cost)


def _add_fit_options(command: argparse.ArgumentParser) -> None:
    """How `ptlab scaling` fits the law: its bootstrap and its starting grid."""
    command.add_argument("--bootstrap", type=int, default=200, metavar="N",
                         help="bootstrap resamples for the 95%% intervals; 0 for none (default: %(default)s)")
    command.add_argument("--seed", type=_seed, default=0, help="seed of the resampling (default: %(default)s)")
    command.add_argument("--grid", choices=["coarse", "hoffmann"], default="coarse",
                         help="L-BFGS-B starts: 72 (coarse) or Hoffmann et al.'s 4,500, minutes (default: "
                              "%(default)s)")


def _add_scaling(sub: Subparsers) -> None:
    scaling_sub = _add_group(
        sub, "scaling", help="fit a scaling law to a table of runs; predict a held-out larger run; allocate a budget; "
                             "train a ladder; compare strategies as curves",
        description="Chinchilla's law L(N, D) = E + A / N^alpha + B / D^beta, fitted the way Besiroglu et al. 2024 "
                    "replicated Hoffmann et al. 2022 (Huber loss, delta 1e-3, on log-loss summed over runs; "
                    "L-BFGS-B from a grid of starts; bootstrap intervals), to a CSV with the columns params, tokens "
                    "(or flops, then tokens = flops / 6 params) and loss; other columns (name, cell) are allowed. "
                    "N is whatever the table counts. A bad table is one line naming the file, line and column.",
        epilog="example: ptlab scaling fit data/scaling/hoffmann-synthetic.csv --json runs/fit.json")
    scaling_fit = scaling_sub.add_parser(
        "fit", help="fit E, A, B, alpha, beta with intervals, and the compute-optimal tokens per parameter",
        description="Fit the law to every run of TABLE and print E, A, B, alpha and beta with bootstrap intervals, "
                    "the compute-optimal allocation (N* ~ C^a, tokens per parameter beside Chinchilla's ~20), and "
                    "Hoffmann's approaches 1 (compute frontier) and 2 (isoFLOP parabolas) where the table allows.",
        epilog="example: ptlab scaling fit runs.csv --json fit.json --plot fit.png")
    scaling_fit.add_argument("table", help="CSV of runs: params, tokens (or flops), loss")
    scaling_fit.add_argument("--json", metavar="OUT", help='write the fit as one JSON object: {"E": {"value": ..., '
                                                          '"interval": [low, high]}, "A": ..., "B": ..., "alpha": '
                                                          '..., "beta": ...}')
    scaling_fit.add_argument("--plot", metavar="OUT.png", help="loss against compute with the law's compute-optimal "
                                                               "frontier, and the isoFLOP curves if any")
    _add_fit_options(scaling_fit)
    scaling_fit.set_defaults(func=_cmd_scaling_fit)

    scaling_predict = scaling_sub.add_parser(
        "predict", help="fit without the largest-compute run(s), then predict their loss",
        description="Hold out the K runs with the largest compute (the flops column, else 6ND), fit the law to the "
                    "rest and print each held-out run's predicted loss with its bootstrap interval against the "
                    "measured one.",
        epilog="example: ptlab scaling predict runs.csv --holdout 2 --plot predict.png")
    scaling_predict.add_argument("table", help="CSV of runs: params, tokens (or flops), loss")
    scaling_predict.add_argument("--holdout", type=int, default=1, metavar="K",
                                 help="largest-compute runs to hold out (default: %(default)s)")
    scaling_predict.add_argument("--plot", metavar="OUT.png", help="loss against compute and predicted against "
                                                                   "measured")
    _add_fit_options(scaling_predict)
    scaling_predict.set_defaults(func=_cmd_scaling_predict)

    scaling_allocate = scaling_sub.add_parser(
        "allocate", help="the compute-optimal model for a FLOP budget, and its price",
        description="N* and D* minimising the law on C = 6ND (closed form), the tokens per parameter and the "
                    "predicted loss there, with bootstrap intervals when fitted from a table; and what training "
                    "that model costs (ptlab cost at 6N FLOPs per token).",
        epilog="example: ptlab scaling allocate fit.json --flops 1e21 --gpu h100")
    scaling_allocate.add_argument("source", help="a CSV of runs (fitted first) or a JSON fit from `ptlab scaling "
                                                 "fit --json`")
    scaling_allocate.add_argument("--flops", type=float, required=True, metavar="C", help="the budget in FLOPs")
    _add_gpu_price(scaling_allocate, "h100", "%(default)s")
    _add_fit_options(scaling_allocate)
    scaling_allocate.set_defaults(func=_cmd_scaling_allocate)

    scaling_ladder = scaling_sub.add_parser(
        "ladder", help="train model sizes x token budgets, each to a decayed learning rate, then fit and predict",
        description="Run a ladder config (configs/scaling-*.yaml): per size one warmup-stable-decay run, its stable "
                    "phase trained once and a short decay branched from it at each token budget (an exact copy of "
                    "the WSD run of that budget). Each point records N (with and without embeddings), D, C (FLOPs) "
                    "and the validation bits per byte in RUN_DIR/points.csv; then the law is fitted, the "
                    "largest-compute point predicted without it, and the compute-optimal allocation printed, with "
                    "plots. With `cells`, one law per strategy and a comparison (compare.json). Rerunning skips "
                    "finished points.",
        epilog="example: ptlab scaling ladder configs/scaling-gpt2.yaml --jobs 2")
    _add_plan_options(scaling_ladder, "ladder", "the points with parameters, tokens, steps and FLOPs and a time "
                                                "estimate", "runs go", "fit.bootstrap=50 common.train.device=cuda")
    scaling_ladder.set_defaults(func=_cmd_scaling_ladder)

    scaling_compare = scaling_sub.add_parser(
        "compare", help="strategies as scaling curves: a law per table, exponents side by side, where curves cross",
        description="Fit a law to each TABLE (a strategy: an objective, an architecture) and print alpha, beta and "
                    "the compute exponent of each with bootstrap intervals, and where their compute-optimal curves "
                    "L*(C) cross, if they do (C = k N D with k from each table's flops column).",
        epilog="example: ptlab scaling compare lm=runs/lm/points.csv span=runs/span/points.csv --plot compare.png")
    scaling_compare.add_argument("tables", nargs="+", metavar="[NAME=]TABLE",
                                 help="CSV of runs, two or more (named after the file, or its folder for points.csv)")
    scaling_compare.add_argument("--json", metavar="OUT", help="write the comparison as one JSON object")
    scaling_compare.add_argument("--plot", metavar="OUT.png", help="each strategy's runs and compute-optimal curve")
    _add_fit_options(scaling_compare)
    scaling_compare.set_defaults(func=_cmd_scaling_compare)


def _add_tokenize(sub: Subparsers) -> None:
    shard = sub.add_parser("tokenize", help="tokenize a corpus into memory-mapped token shards",
                           description="Stream documents (JSON Lines, .txt, each optionally .gz or .zst; Parquet; "
                                       "`datasets` directories; directories and globs) through a tokenizer into "
                                       "OUTPUT/tokens.bin "
                                       "(uint16 when the vocabulary fits), OUTPUT/doc_starts.npy and "
                                       "OUTPUT/index.json; with --workers N or --engine ray, into "
                                       "OUTPUT/pieces/ and OUTPUT/manifest.json. List shard directories in "
                                       "data.train_files to train on them.")
    shard.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    _add_corpus_input(shard)
    shard.add_argument("--output", required=True, help="shard directory to write")
    shard.add_argument("--separator", choices=["eos", "none"], default="eos",
                       help="what goes between documents (default: %(default)s)")
    shard.add_argument("--source", action="append", help="only records with this 'source' value (repeatable)")
    shard.add_argument("--workers", type=int, default=1,
                       help="tokenizing processes; above 1, OUTPUT holds one piece per chunk of documents plus "
                            "manifest.json, with the same tokens as 1 worker writes (default: %(default)s)")
    shard.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local processes, or Ray Data tasks on the cluster RAY_ADDRESS names, else a local one "
                            "(pip install 'ptlab[ray]'; default: %(default)s)")
    _add_quiet(shard)
    shard.set_defaults(func=_cmd_tokenize)


# The commands in the order `ptlab --help` lists them, each with the stage of the pipeline it belongs to.
COMMANDS = (
    _add_demo,  # lab: the whole path in a few minutes
    _add_pretrain,  # train
    _add_tokenizer,  # data
    _add_clean,  # clean
    _add_objectives,  # objectives
    _add_finetune,  # downstream
    _add_tapt,  # lab: task-adaptive pre-training
    _add_evaluate_and_probe,  # downstream
    _add_plot,  # lab: loss curves
    _add_hf,  # models: import-hf, export-hf
    _add_generate,  # models
    _add_study,  # lab: studies
    _add_cost,  # lab: cost
    _add_scaling,  # lab: scaling laws
    _add_tokenize,  # data
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptlab",
        description="ptlab: a pre-training lab for T5, BART, GPT-2 and Llama-style Transformer language models, "
                    "from a laptop CPU up. End to end: clean raw text (C4's rules) -> train a tokenizer and tokenize "
                    "-> pre-train (T5, BART, UL2 or LM objectives) -> fine-tune and evaluate on downstream tasks -> "
                    "compare pre-training strategies in a study -> export to Hugging Face transformers.",
        epilog="Run `ptlab COMMAND --help` for each command's options. Configs are YAML files (see configs/); any "
               "key can be overridden on the command line as section.key=value.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _seed(text: str) -> int:
    """An argparse type: a seed numpy and torch both take."""
    from ptlab.config import seed_problem

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    problem = seed_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def main(argv: list[str] | None = None) -> int:
    # Before any command imports torch: the OpenMP runtime reads its waiting policy once, when torch loads it.
    prefer_passive_waiting()
    parser = build_parser()
    # KEY=VALUE overrides may come after options (`study CONFIG --jobs 2 size=small`); argparse stops collecting a
    # positional list at the first option, so the stragglers are gathered here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        args.func(args)
    except PtlabError as err:
        print(f"ptlab: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ptlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ptlab objectives list | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not raise again
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
