"""`trainer sample`: N served texts for a labeller -- of the traffic that drifted, spread like it.

Workers capture the texts of their newest requests when the archive says `--capture N`. A
capture that ran since the version went live holds the old, in-domain traffic too; labelled as
the new domain, it would teach the old domain's answers under that name. So by default this
verb finds the drifted tail of the capture: the newest k texts whose features depart most
significantly from the version's drift reference (max KS distance over the monitored features,
scaled by the two-sample sqrt(k m / (k + m)); when the newest m rows drifted, that peaks near
k = m). It picks from that tail, split evenly over the served model's predicted classes (a
drifted domain is often answered mostly one way), by herding within each class (the rows whose
mean best matches that class's rows). A per-row novelty score cannot do this: on MiniLM's
features a tweet is as close to the nyt reference as an nyt sentence is (measured; see README).

Each row carries the served label and confidence as a hint and an empty "label" to fill in;
`trainer adapt --data FILE` takes the labelled file back (a row whose label is still empty
stops it, naming the line). `--select before-drift` picks from the texts before the tail
instead, herded but not balanced by class: the old traffic, as evidence for the rollout gate
(`rollout --traffic`). `--select all` samples every captured text; `--newest N` only the newest
N.
"""

import argparse
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import ks_2samp

from handlers.features import REFERENCE_FILE, Reference
from handlers.stats import captured
from trainer.common.artifacts import atomic_write_bytes
from trainer.common.errors import ClientError, DataError, SettingsError
from trainer.learning.herding import herding_order
from trainer.ops.client import TorchServeClient, add_server_arguments, target_from_args
from trainer.ops.drift_cli import load_reference, served_stats

SELECT = ("drifted", "before-drift", "all")
MIN_TAIL = 20  # the shortest tail judged: KS on fewer rows says little


def stats_dir_of(client: TorchServeClient, model: str, version: str | None
                 ) -> tuple[Path, list, str]:
    """Where the version's workers keep their windows, its labels and which version it is,
    from its describe (same host only)."""
    try:
        meta, stats = served_stats(client, model, version)
    except ClientError as e:
        if e.status != 404:  # an authorization failure or a server error says so itself
            raise
        raise DataError(f"model {model!r}{f' v{version}' if version else ''} is not registered "
                        f"on {client.management_url} ({e})") from e
    if not stats.get("capture_per_worker"):
        raise DataError(f"capture is off for {model} v{meta.get('version')}: archive it with "
                        "`trainer archive --capture N` to keep texts for labelling")
    return Path(stats["stats_dir"]), meta["labels"], str(meta.get("version"))


def drifted_tail(traffic: dict[str, Any], reference: Reference, order: np.ndarray,
                 step: int = 5) -> tuple[np.ndarray, dict[str, Any]]:
    """The newest k of the rows `order` (indices, oldest first) that depart most significantly
    from the reference (see the module docstring), and what was found."""
    names = [n for n in traffic["names"] if n in reference.names]
    if not names:
        raise DataError(f"the captured features {traffic['names']} do not match the reference's "
                        f"{reference.names}")
    ref = {n: reference.features[:, reference.names.index(n)] for n in names}
    col = {n: traffic["names"].index(n) for n in names}
    m = len(reference.features)
    best = (-1.0, len(order), 0.0)
    for k in sorted({*range(min(MIN_TAIL, len(order)), len(order) + 1, step), len(order)}):
        tail = traffic["features"][order[-k:]]
        d = max(ks_2samp(tail[:, col[n]], ref[n]).statistic for n in names)
        best = max(best, (float(d * np.sqrt(k * m / (k + m))), k, float(d)))
    _, k, d = best
    return order[-k:], {"drifted_tail": k, "tail_ks": round(d, 4),
                        "tail_since": float(traffic["times"][order[-k]]) if k else None}


def balanced_quota(available: dict[int, int], n: int) -> dict[int, int]:
    """n picks split as evenly as the classes allow; a class short of its share passes the
    rest on."""
    quota = dict.fromkeys(available, 0)
    left = n
    while left:
        open_ = [c for c in sorted(available) if quota[c] < available[c]]
        share = max(1, left // len(open_))
        for c in open_:
            take = min(share, available[c] - quota[c], left)
            quota[c] += take
            left -= take
            if not left:
                break
    return quota


def pick(traffic: dict[str, Any], n: int, labels: list[str], reference: Reference | None = None,
         newest: int = 0, before: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows to label, how they were chosen). With `reference`, from the drifted tail (when it
    is shorter than n, the next newest rows fill up, said); with `before` too, from the rows
    before it instead, as gate evidence on what already worked: herded over all of them, not
    balanced by class, so they stay spread like the traffic they stand for."""
    have = len(traffic["texts"])
    if n < 1:
        raise SettingsError(f"--n must be >= 1, got {n}")
    pool = np.argsort(traffic["times"], kind="stable")  # oldest first; ties keep window order
    if newest:
        pool = pool[-newest:]
    if n > len(pool):
        raise DataError(f"only {len(pool)} texts are captured"
                        f"{' among the newest ' + str(newest) if newest else ''}; ask for at "
                        f"most {len(pool)} (--n)")
    how: dict[str, Any] = {"captured": have, "considered": len(pool)}
    if reference is not None:
        tail, found = drifted_tail(traffic, reference, pool)
        how.update(found)
        if before:
            pool = pool[:len(pool) - len(tail)]
            if n > len(pool):
                raise DataError(f"only {len(pool)} captured texts came before the drifted tail "
                                f"(the newest {len(tail)}); ask for at most {len(pool)} (--n)")
        elif len(tail) < n:
            print(f"note: the drifted tail holds {len(tail)} texts; the {n - len(tail)} next "
                  "newest fill up the picks (they may be of the old traffic)", file=sys.stderr)
            pool = pool[-n:]
        else:
            pool = tail
    pcs = [i for i, name in enumerate(traffic["names"]) if name.startswith("pc")]
    conf = traffic["names"].index("confidence")
    classes = np.asarray(traffic["classes"], dtype=int)
    available = ({-1: len(pool)} if before else
                 {int(c): int((classes[pool] == c).sum()) for c in np.unique(classes[pool])})
    chosen: list[int] = []
    for c, k in balanced_quota(available, n).items():
        members = pool if c == -1 else pool[classes[pool] == c]
        feats = torch.from_numpy(np.ascontiguousarray(traffic["features"][members][:, pcs]))
        chosen += members[herding_order(feats, k).numpy()].tolist() if k else []
    rows = [{"text": traffic["texts"][i], "label": "",
             "predicted": labels[int(classes[i])],
             "confidence": round(float(traffic["features"][i, conf]), 4)} for i in chosen]
    picked = set(chosen)
    how["unpicked"] = [traffic["texts"][i] for i in pool.tolist() if i not in picked]
    return rows, how


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                    for r in rows).encode())


def archived_reference(model_store: Path, model: str, version: str) -> Reference:
    """The served version's drift reference, from its archive in the model store."""
    mar = Path(model_store) / f"{model}.v{version}.mar"
    try:
        with zipfile.ZipFile(mar) as z:
            return Reference.from_bytes(z.read(REFERENCE_FILE))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{mar}: cannot read its {REFERENCE_FILE} ({e}); give --reference "
                        "RUN_DIR, or --select all") from e


def sample_served(client: TorchServeClient, model: str, version: str | None, n: int,
                  select: str = "drifted", newest: int = 0,
                  reference: Reference | None = None, model_store: Path = Path("model_store")
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(N rows to label, how they were chosen) from a version served on this host."""
    directory, labels, served = stats_dir_of(client, model, version)
    if not directory.is_dir():
        raise DataError(f"{directory}: the server's statistics are not on this host; run "
                        "`trainer sample` where TorchServe runs, or copy the directory "
                        "and pass --stats-dir")
    if select != "all" and reference is None:
        reference = archived_reference(model_store, model, served)
    return choose(captured(directory), n, labels, select, newest, reference)


def choose(traffic: dict[str, Any], n: int, labels: list[str], select: str, newest: int,
           reference: Reference | None) -> tuple[list[dict[str, Any]], dict]:
    if select not in SELECT:
        raise SettingsError(f"--select must be one of {SELECT}, got {select!r}")
    if select != "all" and reference is None:
        raise SettingsError(f"--select {select} needs the served version's drift reference: "
                            "--reference RUN_DIR (or --select all)")
    rows, how = pick(traffic, n, labels, reference if select != "all" else None, newest,
                     before=select == "before-drift")
    how["predicted"] = dict(sorted(Counter(r["predicted"] for r in rows).items()))
    return rows, how


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    reference = load_reference(Path(args.reference)) if args.reference else None
    if args.stats_dir:
        directory, labels = Path(args.stats_dir), args.labels.split(",")
        if not directory.is_dir():
            raise FileNotFoundError(f"--stats-dir {directory}: no such directory")
        rows, how = choose(captured(directory), args.n, labels, args.select, args.newest,
                           reference)
    else:
        target = target_from_args(args)
        store = Path(args.model_store or target.model_store or "model_store")
        rows, how = sample_served(target.client(), args.model, args.version, args.n,
                                  args.select, args.newest, reference, store)
    out, unpicked = Path(args.out), how.pop("unpicked")
    write_rows(out, rows)
    if args.unlabelled_out:
        write_rows(Path(args.unlabelled_out), [{"text": t} for t in unpicked])
        print(f"wrote the {len(unpicked)} texts of the same pool not picked to "
              f"{args.unlabelled_out} (for adapt --unlabelled)", file=sys.stderr)
    part = "before the drifted tail" if args.select == "before-drift" else "from the drifted tail"
    print(f"wrote {len(rows)} rows to {out}: predicted {how['predicted']}"
          + (f"; {part} (the newest {how['drifted_tail']} of {how['considered']} captured "
             f"texts, max KS {how['tail_ks']:.3f} against the reference)"
             if "drifted_tail" in how else ""), file=sys.stderr)
    return {"out": str(out), "rows": len(rows), **how}, 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("sample", help="N captured texts of the served traffic to label "
                                        "(herding on the served features)")
    p.add_argument("--model", help="model name in TorchServe")
    p.add_argument("--version", help="version (default: the default version)")
    p.add_argument("--n", type=int, default=200, help="rows to write (default: 200)")
    p.add_argument("--out", required=True, help="JSONL to write: text, label (empty), "
                                                "predicted, confidence")
    p.add_argument("--select", choices=SELECT, default="drifted",
                   help="drifted: the newest captured texts that depart from the served "
                        "version's reference (default), to label; before-drift: the texts "
                        "before them, for `rollout --traffic`; all: every captured text")
    p.add_argument("--unlabelled-out", help="also write the texts of the same pool that were "
                                            "not picked (JSONL, text only): adapt's "
                                            "--unlabelled")
    p.add_argument("--newest", type=int, default=0,
                   help="only the newest N captured texts (default: 0, all)")
    p.add_argument("--reference", help="the served version's run dir or drift_reference.json "
                                       "(default: read from its archive in the model store)")
    p.add_argument("--model-store", help="where the served archive is (default: the server "
                                         "record's, else model_store)")
    add_server_arguments(p)
    p.add_argument("--stats-dir", help="instead of the server: a version's stats directory")
    p.add_argument("--labels", default="negative,neutral,positive",
                   help="with --stats-dir: the model's labels in class order")

    def checked(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
        if not args.stats_dir and not args.model:
            raise SettingsError("give --model (ask TorchServe) or --stats-dir")
        return run(args)

    p.set_defaults(func=checked)
