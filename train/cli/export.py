"""`cloud export CHECKPOINT --out DIR` and `cloud import-hf DIR --out OUT`."""

from __future__ import annotations

import argparse
import sys

DTYPE_CHOICES = ("float32", "bfloat16")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_export(subparsers)
    _register_import_hf(subparsers)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a self-contained model package from a training checkpoint or a package",
        description=(
            "CHECKPOINT is a pre-training run directory, its checkpoints/ directory, one "
            "checkpoint tag directory (ZeRO stage 0-3 shards of any world size are "
            "consolidated), or an existing package (re-exported in another dtype or format). "
            "--format cloud writes model.safetensors, config.json, vocab.json, README.md and "
            "SHA256SUMS, loadable with cloud.load_pretrained without DeepSpeed; --format hf "
            "writes a Hugging Face BertForMaskedLM directory whose tokenizer.json gives "
            "ScopeTokenizer's ids through AutoTokenizer (post-LN models only; the shipped "
            "pre-training configs are pre-LN: the refusal says how to train a post-LN one)."
        ),
    )
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="run, checkpoint or package dir")
    export.add_argument("--out", required=True, metavar="DIR", help="package directory to write")
    export.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    export.add_argument("--format", choices=("cloud", "hf"), default="cloud", dest="format")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=run_export)


def _register_import_hf(subparsers: argparse._SubParsersAction) -> None:
    importer = subparsers.add_parser(
        "import-hf",
        help="package a Hugging Face BertForMaskedLM CLOUD checkpoint (the released one)",
        description=(
            "DIR holds config.json and model.safetensors (or pytorch_model.bin, read with "
            "torch.load(weights_only=True)) of a BertForMaskedLM. The WordPiece vocabulary "
            "comes from --tokenizer, else DIR/vocab.txt, else the released CLOUD vocabulary "
            "shipped with this package; it is kept in the package so the model reads released "
            "SCOPE strings (tokenizer.released.ReleasedWordPieceTokenizer)."
        ),
    )
    importer.add_argument("directory", metavar="DIR", help="Hugging Face model directory")
    importer.add_argument("--out", required=True, metavar="OUT", help="package directory")
    importer.add_argument(
        "--tokenizer", metavar="TOKDIR", help="directory with vocab.txt [and added_tokens.json]"
    )
    importer.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    importer.add_argument("--force", action="store_true", help="replace a non-empty --out")
    importer.set_defaults(func=run_import_hf)


def run_export(args: argparse.Namespace) -> int:
    from train.export import export_checkpoint

    try:
        out = export_checkpoint(
            args.checkpoint, args.out, dtype=args.dtype, format=args.format, overwrite=args.force
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"cloud export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} package {out} ({args.dtype})")
    return 0


def run_import_hf(args: argparse.Namespace) -> int:
    from train.export import import_hf

    try:
        out = import_hf(
            args.directory,
            args.out,
            tokenizer_dir=args.tokenizer,
            dtype=args.dtype,
            overwrite=args.force,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"cloud import-hf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote package {out} from {args.directory} ({args.dtype})")
    return 0
