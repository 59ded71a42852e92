"""`python -m trainer <verb>`: JSON for machines on stdout, tables and progress on stderr."""

import argparse
import importlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trainer import distributed  # noqa: E402
from trainer.errors import EXPECTED_ERRORS, exit_code_for  # noqa: E402

# Each verb module has `register(verbs)`, which adds its subparser and sets `func`.
# `func(args)` returns (JSON-able result, exit code).
VERBS = ["trainer.train", "trainer.adapt", "trainer.evaluate_cli", "trainer.keys",
         "trainer.archive", "trainer.drift_cli", "trainer.rollout", "trainer.demo", "trainer.loop",
         "trainer.kserve", "trainer.serve", "trainer.sample"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    for module in VERBS:
        importlib.import_module(module).register(verbs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    distributed.init_from_env()  # under torchrun: join the group; train/adapt run data-parallel
    main_rank = distributed.is_main()
    try:
        if getattr(args, "engine", "local") == "ray":
            result, code = distributed.run_on_ray(args)
        else:
            result, code = args.func(args)
    except EXPECTED_ERRORS as e:  # a user's mistake: one line, exit 2 (trainer/errors.py);
        print(f"error: {e}", file=sys.stderr)  # anything else is a bug and keeps its traceback
        return exit_code_for(e)
    finally:
        distributed.close()
    if main_rank:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
