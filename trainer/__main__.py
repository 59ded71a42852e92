"""`driftserve <verb>` (or `python -m trainer <verb>`): JSON for machines on stdout, tables and
progress on stderr."""

import argparse
import importlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trainer.common.errors import EXPECTED_ERRORS, exit_code_for  # noqa: E402

# verb -> the module whose `register(verbs)` adds its subparser and sets `func`;
# `func(args)` returns (JSON-able result, exit code). Only the invoked verb's module is
# imported: `serve status` or `rollout` need not load transformers and PEFT (seconds per call).
VERBS = {"train": "trainer.learning.train", "adapt": "trainer.learning.adapt",
         "evaluate": "trainer.learning.evaluate_cli", "keygen": "trainer.packaging.keys",
         "archive": "trainer.packaging.archive", "drift": "trainer.ops.drift_cli",
         "rollout": "trainer.ops.rollout", "rollback": "trainer.ops.rollout",
         "restore": "trainer.ops.rollout", "demo": "trainer.loop.demo",
         "loop": "trainer.loop.closed_loop", "kserve-export": "trainer.packaging.kserve",
         "serve": "trainer.ops.serve", "sample": "trainer.ops.sample"}
DATA_PARALLEL = {"train", "adapt"}  # the verbs torchrun and Ray Train run on every rank


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Every verb, or (given a known `verb`) just the module that registers it."""
    prog = "driftserve" if Path(sys.argv[0]).name == "driftserve" else "python -m trainer"
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    modules = [VERBS[verb]] if verb in VERBS else list(dict.fromkeys(VERBS.values()))
    for module in modules:
        importlib.import_module(module).register(verbs)
    for sub in verbs.choices.values():
        sub.add_argument("--verbose", action="store_true",
                         help="also show the libraries' own logs, warnings and progress bars")
    return p


def quiet_libraries(verbose: bool) -> None:
    """Before transformers is imported: its load report (the new head is MISSING, as it must
    be), deprecation warnings and progress bars say nothing a user can act on, and progress
    bars written to a file or a CI log are kilobytes of carriage returns."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def stop_on_sigterm() -> None:
    """SIGTERM (kill, systemd, a CI timeout) unwinds like Ctrl-C: every `with TorchServe(...)`
    stops the server it started instead of leaving it holding the ports."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_libraries("--verbose" in argv)
    args = parser(argv[0] if argv else None).parse_args(argv)
    if args.verb not in DATA_PARALLEL:
        return _finish(*_run(args.func, args))
    from trainer.learning import distributed

    distributed.init_from_env()  # under torchrun: join the group; train/adapt run data-parallel
    main_rank = distributed.is_main()
    try:
        if args.engine == "ray":
            outcome = _run(distributed.run_on_ray, args)
        else:
            outcome = _run(args.func, args)
    finally:
        distributed.close()
    return _finish(*outcome) if main_rank else outcome[1]


def _run(func, args: argparse.Namespace) -> tuple[object, int]:
    try:
        return func(args)
    except EXPECTED_ERRORS as e:  # a user's mistake: one line, exit 2 (trainer/common/errors.py);
        print(f"error: {e}", file=sys.stderr)  # anything else is a bug and keeps its traceback
        return None, exit_code_for(e)


def _finish(result: object, code: int) -> int:
    if result is not None:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return code


def cli() -> None:
    """The `driftserve` command: the same verbs and flags as `python -m trainer`."""
    stop_on_sigterm()
    sys.exit(main())


if __name__ == "__main__":
    cli()
