"""`python -m trainer <verb>`: JSON for machines on stdout, tables and progress on stderr."""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from handlers.errors import HandlerError  # noqa: E402
from trainer import config  # noqa: E402
from trainer.archive import ArchiveSettings, build_archive  # noqa: E402
from trainer.client import ClientError  # noqa: E402
from trainer.data import DataError  # noqa: E402
from trainer.demo import DemoSettings, run_demo  # noqa: E402
from trainer.train import TrainSettings, run_train  # noqa: E402


def cmd_train(args: argparse.Namespace) -> dict:
    settings = config.from_args(TrainSettings, args)
    return run_train(settings, args.data, Path(args.out), reuse=args.reuse)


def cmd_archive(args: argparse.Namespace) -> dict:
    settings = config.from_args(ArchiveSettings, args)
    mar = build_archive(Path(args.run), args.name, args.version, Path(args.model_store),
                        settings, reuse=args.reuse)
    return {"mar": str(mar), "bytes": mar.stat().st_size}


def cmd_demo(args: argparse.Namespace) -> dict:
    return run_demo(config.from_args(DemoSettings, args), config.from_args(TrainSettings, args),
                    config.from_args(ArchiveSettings, args, prefix="serve_"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True)

    t = verbs.add_parser("train", help="LoRA-train a classifier and write a merged run dir")
    t.add_argument("--data", required=True,
                   help="built-in domain (nyt, movie, amazon, tweets) or a .jsonl/.csv file")
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--reuse", action="store_true",
                   help="skip training when --out was built from the same inputs")
    config.add_arguments(t, TrainSettings)
    t.set_defaults(func=cmd_train)

    a = verbs.add_parser("archive", help="package a run dir as model_store/NAME.vN.mar")
    a.add_argument("--run", required=True, help="run directory from train or adapt")
    a.add_argument("--name", default="sentiment", help="model name (default: sentiment)")
    a.add_argument("--version", default="1", help="model version (default: 1)")
    a.add_argument("--model-store", default="model_store", help="default: model_store")
    a.add_argument("--reuse", action="store_true", help="keep an identical existing .mar")
    config.add_arguments(a, ArchiveSettings)
    a.set_defaults(func=cmd_archive)

    d = verbs.add_parser("demo", help="train on nyt, serve it in TorchServe, score all domains")
    config.add_arguments(d, DemoSettings)
    config.add_arguments(d, TrainSettings)
    config.add_arguments(d, ArchiveSettings, prefix="serve_")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.func(args)
    except (DataError, config.SettingsError, HandlerError, ClientError, FileNotFoundError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
