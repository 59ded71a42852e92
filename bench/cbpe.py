"""NannyML's CBPE on the probabilities bench/accuracy_estimate.py saved (`--probs`), for its
`--cbpe` column. nannyml is no project dependency: run this in a venv of its own.

    python -m venv /tmp/nannyml && /tmp/nannyml/bin/pip install nannyml statsmodels
    /tmp/nannyml/bin/python bench/cbpe.py PROBS.npz OUT.json

CBPE is fitted on v1's validation probabilities (the first version's `val`) for every version:
few-shot v2 has no validation data of its own, as for the other methods. Each domain's test
split is one chunk."""

import json
import os
import sys

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # it would phone home otherwise

import nannyml as nml  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def frame(probs: np.ndarray, truth: np.ndarray | None = None) -> pd.DataFrame:
    df = pd.DataFrame({f"p{i}": probs[:, i] for i in range(probs.shape[1])})
    df["y_pred"] = probs.argmax(axis=1)
    if truth is not None:
        df["y_true"] = truth
    return df


def main(path: str, out: str) -> int:
    saved = np.load(path)
    versions = list(json.loads(str(saved["meta"])))
    val = versions[0]
    reference = frame(saved[f"{val}|val/probs"], saved[f"{val}|val/truth"])
    classes = reference.shape[1] - 2
    result: dict[str, dict[str, float]] = {}
    for name in versions:
        for key in saved.files:
            if not key.startswith(f"{name}|") or not key.endswith("/probs") or "|val/" in key:
                continue
            domain = key.split("|", 1)[1].split("/")[0]
            estimator = nml.CBPE(problem_type="classification_multiclass",
                                 y_pred_proba={i: f"p{i}" for i in range(classes)},
                                 y_pred="y_pred", y_true="y_true", metrics=["accuracy"],
                                 chunk_number=1)
            estimator.fit(reference)
            df = estimator.estimate(frame(saved[key])).filter(period="analysis").to_df()
            result.setdefault(name, {})[domain] = float(df[("accuracy", "value")].iloc[0])
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
