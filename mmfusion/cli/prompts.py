"""`mmfusion prompts ...`: list and render templates, A/B test variants, compress text, make data, train a decoder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmfusion.types import InputError


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    """NAME=VALUE arguments as a dict; a malformed one names the flag."""
    pairs = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise InputError(f"{flag} {value!r}: expected NAME=VALUE")
        pairs[name] = text
    return pairs


def _cmd_list(args: argparse.Namespace) -> int:
    from mmfusion.templates.schema import library, load_template

    for name, versions in library().items():
        for version in sorted(versions):
            template = load_template(f"{name}@{version}")
            print(f"{template.key:<24} {template.description}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from mmfusion.reports.render import render
    from mmfusion.templates.schema import load_template

    template = load_template(args.template)
    values = _pairs(args.field, "--field")
    rendered = render(template, values)
    if args.json:
        print(json.dumps({"template": rendered.template, "prompt": rendered.text, "examples": len(rendered.examples)}))
    else:
        print(rendered.text)
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from mmfusion.reports.compress import compress

    text = args.text if args.text != "-" else sys.stdin.read()
    print(compress(text, args.max_chars))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from mmfusion.reports.dataset import make_report_suite
    from mmfusion.templates.schema import load_template

    path = make_report_suite(args.folder, args.count, load_template(args.template), args.size, args.seed)
    print(path)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmfusion.reports.train import train_cross_modal

    result = train_cross_modal(args.model, args.data, args.epochs, args.batch_size, args.learning_rate, args.seed, True)
    print(
        f"{result.checkpoint}: {result.rows} reports, {result.vocabulary} words, {result.epochs} epochs, "
        f"loss {result.first_loss:.3f} -> {result.last_loss:.3f} in {result.seconds:.0f} s"
    )
    return 0


def _cmd_ab(args: argparse.Namespace) -> int:
    from mmfusion.pipeline import Pipeline
    from mmfusion.reports.abtest import load_eval_items, run_ab, table, variants_from_files, write_outputs
    from mmfusion.reports.noise import NOISE

    budgets = {}
    for name, value in _pairs(args.compress, "--compress").items():
        if not value.isdigit() or int(value) <= 0:
            raise InputError(f"--compress {name}={value}: expected a positive number of characters")
        budgets[name] = int(value)
    noises = args.noise if args.noise is not None else list(NOISE)
    unknown = [n for n in noises if n not in NOISE]
    if unknown:
        raise InputError(f"--noise {unknown[0]!r}: not known; allowed: {', '.join(NOISE)}")
    variants = variants_from_files(args.variants, budgets)
    items = load_eval_items(args.data)
    pipeline = Pipeline(args.model)
    try:
        result = run_ab(pipeline, variants, items, noises, args.seed, args.resamples, progress=True)
    finally:
        pipeline.close()
    paths = write_outputs(result, args.out)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(table(result))
        print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `prompts list|render|ab|compress|synth|train` on the `mmfusion` parser."""
    prompts = sub.add_parser("prompts", help="report templates, A/B tests of prompts, report decoders")
    commands = prompts.add_subparsers(dest="prompts_command", required=True)

    commands.add_parser("list", help="the template library (name@version)").set_defaults(run=_cmd_list)

    render = commands.add_parser("render", help="print a template's prompt for some inputs")
    render.add_argument("template", help="name, name@version or a .yaml file")
    render.add_argument("--field", action="append", default=[], metavar="NAME=VALUE", help="an input (repeatable)")
    render.add_argument("--json", action="store_true")
    render.set_defaults(run=_cmd_render)

    ab = commands.add_parser("ab", help="A/B test prompt variants on an eval manifest")
    ab.add_argument("--model", required=True, help="a model with a report head (name or folder)")
    ab.add_argument("--variants", nargs="+", required=True, help="template files or library names (two or more)")
    ab.add_argument("--data", required=True, type=Path, help="CSV: image,text[,product][,type,location,severity]")
    ab.add_argument("--out", type=Path, default=Path("out/ab"), help="folder for ab.json, ab.txt, ab.png")
    ab.add_argument("--noise", nargs="*", default=None, help="noise kinds for robustness (default all; none: --noise)")
    ab.add_argument("--compress", action="append", default=[], metavar="FIELD=CHARS", help="add compressed twins")
    ab.add_argument("--seed", type=int, default=0)
    ab.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples")
    ab.add_argument("--json", action="store_true")
    ab.set_defaults(run=_cmd_ab)

    shorten = commands.add_parser("compress", help="shorten a context field to a character budget")
    shorten.add_argument("text", help="the text, or - for stdin")
    shorten.add_argument("--max-chars", type=int, default=80)
    shorten.set_defaults(run=_cmd_compress)

    synth = commands.add_parser("synth", help="write synthetic (part image, report) pairs and reports.csv")
    synth.add_argument("folder", type=Path)
    synth.add_argument("--count", type=int, default=600)
    synth.add_argument("--size", type=int, default=96, help="image side in pixels")
    synth.add_argument("--template", default="defect_inspection@1")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_cmd_synth)

    train = commands.add_parser("train", help="train a model's cross_modal report decoder on (image, report) pairs")
    train.add_argument("--model", required=True)
    train.add_argument("--data", required=True, type=Path, help="CSV: image,report")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=3e-3)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=_cmd_train)
