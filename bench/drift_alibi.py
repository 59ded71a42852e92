"""alibi-detect's detectors on bench/drift.py's streams, in their own virtualenv (alibi-detect
0.13 pins numpy < 2 and transformers < 5, which the project's cannot share):

    make .venv-alibi && .venv-alibi/bin/python bench/drift_alibi.py streams.npz out.json

Same protocol as bench/drift.py: a windowed detector is checked every `check_every` requests on
the newest requests (after the switch only, for delays); the online detector sees every request
from the first, and an alarm in the history before a switch is recorded and its state reset.
"""

import json
import sys
import time

import numpy as np
from alibi_detect.cd import CVMDriftOnline, KSDrift


def first_ks_alarm(det: KSDrift, x: np.ndarray, start: int, every: int, window: int,
                   smallest: int) -> int | None:
    for t in range(start + every, len(x) + 1, every):
        if t < smallest:
            continue
        if det.predict(x[max(0, t - window):t])["data"]["is_drift"]:
            return t
    return None


def cvm_alarms(det: CVMDriftOnline, x: np.ndarray, switch: int) -> tuple[int | None, int | None]:
    """(first alarm before the switch, first alarm after it); one request at a time. Before a
    switch only the last largest-window requests are fed: the detector's whole state is its
    windows (its in-domain false alarms are measured on the in-domain streams)."""
    det.reset_state()
    history = None
    first = 0 if switch >= len(x) else max(0, switch - max(det.window_sizes))
    for t in range(first, len(x)):
        if det.predict(x[t], return_test_stat=False)["data"]["is_drift"]:
            if t + 1 <= switch:
                history = history or t + 1
                det.reset_state()  # the operator acknowledges; the detector starts over
            else:
                return history, t + 1
    return history, None


def main(path: str, out: str) -> None:
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    ref = data["reference"]
    started = time.time()
    ks = KSDrift(ref, p_val=0.05)  # alibi's defaults: Bonferroni over the features
    cvm = CVMDriftOnline(ref, ert=meta["ert"], window_sizes=meta["cvm_windows"],
                         n_bootstraps=meta["n_bootstraps"], verbose=False)
    configure_s = time.time() - started
    results: dict[str, list[dict]] = {"alibi_ksdrift": [], "alibi_cvm_online": []}
    for i, stream in enumerate(meta["streams"]):
        x = data[f"stream{i}"]
        switch = stream["switch"]
        results["alibi_ksdrift"].append({
            "history_alarm": first_ks_alarm(ks, x, 0, meta["check_every"], meta["ks_window"],
                                            meta["min_window"]) if switch >= len(x) else None,
            "alarm": None if switch >= len(x) else first_ks_alarm(
                ks, x, switch, meta["check_every"], meta["ks_window"], meta["min_window"])})
        history, alarm = cvm_alarms(cvm, x, switch)
        results["alibi_cvm_online"].append({"history_alarm": history, "alarm": alarm})
        print(f"alibi stream {i + 1}/{len(meta['streams'])}", file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"results": results, "cvm_configure_s": round(configure_s, 1),
                   "seconds": round(time.time() - started, 1)}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
