"""Herding cost: the product's vectorised iCaRL herding against a rank-all greedy, same picks.

    .venv/bin/python bench/herding.py            # n = 10,000 per class, d = 384, m = 20/100/200
    .venv/bin/python bench/herding.py --quick    # small n, for the smoke test

rank_all_order re-ranks every candidate from scratch at every step (it materialises chosen set +
candidate for each of the n candidates), so its cost grows with n*m^2*d; herding_order scores all
candidates from a running sum with one matrix-vector product per step, O(n*m*d). Both run on CPU
in float64 (so rounding cannot split near-ties differently) and their picks must be identical.
Only ratios measured in one run are meaningful: the machines are shared and noisy.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.learning.herding import herding_order, rank_all_order  # noqa: E402


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(n: int, d: int, ms: list[int], seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5  # off-centre, like embeddings
    rows = []
    for m in ms:
        fast, t_fast = timed(herding_order, features, m)
        slow, t_slow = timed(rank_all_order, features, m)
        if not torch.equal(fast, slow):
            first = int((fast != slow).nonzero()[0])
            raise SystemExit(f"picks differ at m={m}, step {first}: {int(fast[first])} vs "
                             f"{int(slow[first])}")
        rows.append({"n": n, "d": d, "m": m, "herding_s": round(t_fast, 4),
                     "rank_all_s": round(t_slow, 4), "speedup": round(t_slow / t_fast, 1),
                     "identical_picks": True})
        print(f"m={m:>4}  herding {t_fast:8.3f} s  rank-all {t_slow:8.3f} s  "
              f"x{t_slow / t_fast:,.1f}  picks identical", file=sys.stderr)
    return rows


def markdown(rows: list[dict], threads: int) -> str:
    lines = [f"Herding on CPU ({threads} torch thread(s), float64): n per class, d features, "
             f"m exemplars; picks identical in every row.", "",
             "| n | d | m | herding (s) | rank-all (s) | rank-all / herding |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']:,} | {r['d']} | {r['m']} | {r['herding_s']:.3f} | {r['rank_all_s']:.3f} "
              f"| {r['speedup']:,.1f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n=500, m=5,20,50 (smoke test)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"),
                   help="folder for herding.json / herding.md (default: bench/results)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, d, ms = (500, 384, [5, 20, 50]) if args.quick else (10_000, 384, [20, 100, 200])
    rows = run(n, d, ms)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "herding-quick" if args.quick else "herding"
    meta = {"quick": args.quick, "threads": args.threads, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "dtype": "float64"}
    atomic_write_json(out / f"{stem}.json", {"settings": meta, "rows": rows}, sort_keys=False)
    atomic_write_text(out / f"{stem}.md", markdown(rows, args.threads))
    print(markdown(rows, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
