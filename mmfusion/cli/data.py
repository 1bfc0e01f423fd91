"""Data and training subcommands: data clean|augment|split, train, distill, models list|promote|rollback."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_clean(args: argparse.Namespace) -> int:
    from mmfusion.training.clean import CleanOptions, clean_file

    options = CleanOptions(args.image_distance, args.text_similarity, args.audio_distance)
    result, report = clean_file(args.table, args.out, args.report, options)
    dropped = sum(result.counts().values())
    print(f"kept {len(result.kept)} of {len(result.kept) + dropped} rows -> {args.out}")
    for reason, count in sorted(result.counts().items()):
        print(f"  dropped {count:5d}  {reason}")
    flagged = sum(1 for d in result.decisions if d.action == "kept")
    if flagged:
        print(f"  flagged {flagged:5d}  near duplicates with another label (kept)")
    print(f"report: {report}")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from mmfusion.training.augment import augment_file

    originals, added = augment_file(args.table, args.out, args.glossary, args.per_row, args.seed)
    print(f"{originals} rows + {added} new rows -> {args.out}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from mmfusion.training.split import split_file

    paths, counts = split_file(args.table, args.ratios, args.stratify, args.group, args.seed, args.out_dir)
    print(counts)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmfusion.training.finetune import finetune
    from mmfusion.training.options import options_from_args

    model, options = options_from_args(args)
    result = finetune(model, options)
    best = result.history.epochs[result.history.best_epoch - 1]
    print(
        f"version {result.version} -> {result.folder} (best epoch {best['epoch']}: val loss {best['val_loss']:.4f}, "
        f"val accuracy {best['val_accuracy']:.3f}); run record in {result.out}"
    )
    if not options.promote:
        print(f"serve it with: mmfusion models promote {result.folder.parent.parent} --version {result.version}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from mmfusion.training.distill import DistillOptions, distill

    options = DistillOptions(
        data=args.data,
        out=args.out,
        val=args.val,
        head=args.head,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        feature_weight=args.feature_weight,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        promote=args.promote,
    )
    distill(args.teacher, args.student, options)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from mmfusion.repository import versions
    from mmfusion.repository.folder import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    current = versions.current_version(model_dir) or versions.base_version(model_dir)
    base = versions.base_version(model_dir)
    marker = "*" if current == base else " "
    print(f"{marker} {base:3d}  base config.yaml")
    for number in versions.list_versions(model_dir):
        record = versions.read_record(versions.versions_dir(model_dir) / str(number))
        best = record.get("best") or record.get("student_scores") or {}
        accuracy = best.get("val_accuracy", best.get("accuracy"))
        detail = f"{record.get('method', '?')} from {record.get('parent_version', '?')}"
        if accuracy is not None:
            detail += f", val accuracy {accuracy:.3f}"
        print(f"{'*' if number == current else ' '} {number:3d}  {detail}  {record.get('created', '')}")
    return 0


def _cmd_models_promote(args: argparse.Namespace) -> int:
    from mmfusion.repository.folder import resolve_model_dir
    from mmfusion.repository.versions import promote

    model_dir = resolve_model_dir(args.model)
    print(f"{model_dir.name}: current version is now {promote(model_dir, args.version)}")
    return 0


def _cmd_models_rollback(args: argparse.Namespace) -> int:
    from mmfusion.repository.folder import resolve_model_dir
    from mmfusion.repository.versions import rollback

    model_dir = resolve_model_dir(args.model)
    old, new = rollback(model_dir)
    print(f"{model_dir.name}: rolled back from version {old} to {new}")
    return 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="clean, augment and split dataset tables")
    actions = data.add_subparsers(dest="data_command", required=True)
    clean = actions.add_parser("clean", help="drop unreadable rows, duplicates and conflicting labels")
    clean.add_argument("table", type=Path, help="CSV with image|audio|text|video columns and label")
    clean.add_argument("--out", type=Path, required=True, help="cleaned CSV")
    clean.add_argument("--report", type=Path, help="report CSV (default: OUT with .report.csv)")
    clean.add_argument("--image-distance", type=int, default=6, help="perceptual-hash bits (of 64) for near images")
    clean.add_argument("--text-similarity", type=float, default=0.8, help="Jaccard of character 3-grams")
    clean.add_argument("--audio-distance", type=float, default=0.15, help="fingerprint bit error rate")
    clean.set_defaults(run=_cmd_clean)
    augment = actions.add_parser("augment", help="glossary text variants and defect-preserving image transforms")
    augment.add_argument("table", type=Path)
    augment.add_argument("--glossary", type=Path, help="YAML: term: [synonyms or expansions]")
    augment.add_argument("--out", type=Path, required=True)
    augment.add_argument("--per-row", type=int, default=2, help="new rows per source row (at most)")
    augment.add_argument("--seed", type=int, default=0)
    augment.set_defaults(run=_cmd_augment)
    split = actions.add_parser("split", help="stratified, group-preserving train/val/test split")
    split.add_argument("table", type=Path)
    split.add_argument("--ratios", default="8:1:1", help="train:val[:test]")
    split.add_argument("--stratify", default="label", help="column to stratify by")
    split.add_argument("--group", help="column whose rows stay in one set (same part, same recording)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out-dir", type=Path, help="folder for <name>_train.csv ... (default: beside TABLE)")
    split.set_defaults(run=_cmd_split)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `mmfusion` parser."""
    from mmfusion.training.options import add_train_arguments

    _add_data_commands(sub)
    train = sub.add_parser("train", help="fine-tune a model (full, LoRA or prefix) into a new version")
    add_train_arguments(train)
    train.set_defaults(run=_cmd_train)
    distill = sub.add_parser("distill", help="distil a teacher model into a faster student")
    distill.add_argument("--teacher", required=True, help="MODEL[@VERSION]")
    distill.add_argument("--student", required=True, help="MODEL[@VERSION]; its new version is written")
    distill.add_argument("--data", type=Path, required=True, help="training table")
    distill.add_argument("--val", type=Path, help="evaluation table (default: 20%% of DATA held out per class)")
    distill.add_argument("--out", type=Path, default=Path("runs/distill"), help="run folder")
    distill.add_argument("--head")
    distill.add_argument("--epochs", type=int, default=10)
    distill.add_argument("--batch-size", type=int, default=16)
    distill.add_argument("--lr", type=float, default=1e-3)
    distill.add_argument("--temperature", type=float, default=4.0)
    distill.add_argument("--alpha", type=float, default=0.7, help="weight of the soft targets")
    distill.add_argument("--feature-weight", type=float, default=1.0, help="weight of feature matching")
    distill.add_argument("--patience", type=int, default=3)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--device", default="auto")
    distill.add_argument("--promote", action="store_true")
    distill.set_defaults(run=_cmd_distill)
    models = sub.add_parser("models", help="model versions: list, promote, rollback")
    actions = models.add_subparsers(dest="models_command", required=True)
    listing = actions.add_parser("list", help="versions of a model (* = current)")
    listing.add_argument("model")
    listing.set_defaults(run=_cmd_models_list)
    promote = actions.add_parser("promote", help="make a version current (default: the newest)")
    promote.add_argument("model")
    promote.add_argument("--version", type=int)
    promote.set_defaults(run=_cmd_models_promote)
    rollback = actions.add_parser("rollback", help="return to the version promoted before the current one")
    rollback.add_argument("model")
    rollback.set_defaults(run=_cmd_models_rollback)
