"""`adapt --route`: the new version keeps every old domain's version as its expert and learns a
router from the texts it has of each domain (handlers/routing.py says why)."""

import hashlib
import json
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from handlers.routing import (
    NEWEST,
    ROUTER_FILE,
    RoutedClassifier,
    Router,
    hashed_features,
    load_expert,
)
from trainer.common.errors import DataError
from trainer.data.reference_texts import distil_half
from trainer.data.sources import Example

ROUTER_TEXTS = "router_texts.json"  # what the router learnt each domain from, for the next step
MAX_ROUTER_TEXTS = 2000  # per domain: the file, and the fit, stay small down a long chain

# Inverse L2 strength of the router's softmax regression. Its features are binary and
# L2-normalised, so a text's score is bounded and a weak penalty lets the few hundred texts of
# a new domain speak; not tuned on any data set.
ROUTER_C = 10.0


def inherited_experts(parent: Path, seen: Sequence[str]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Each old domain's expert file and the files themselves: the parent's own weights answer
    the domains it answered itself, under a content name, so no name ever means two models."""
    parent = Path(parent)
    own = (parent / NEWEST).read_bytes()
    own_name = f"expert-{hashlib.sha256(own).hexdigest()[:12]}.safetensors"
    if (parent / ROUTER_FILE).is_file():  # the map only, not the weights
        owners = json.loads((parent / ROUTER_FILE).read_text())["experts"]
    else:
        owners = {d: NEWEST for d in seen}
    experts, files = {}, {}
    for d in seen:
        name = owners.get(d, NEWEST)
        if name == NEWEST:
            experts[d], files[own_name] = own_name, own
        else:
            experts[d] = name
            if name not in files:
                files[name] = (parent / name).read_bytes()
    return experts, files


def features(tokenizer: Any, texts: Sequence[str], max_length: int, dims: int) -> csr_matrix:
    rows = []
    for start in range(0, len(texts), 256):
        batch = tokenizer(list(texts[start:start + 256]), truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        rows += hashed_features(batch["input_ids"], batch["attention_mask"], dims)
    data = np.concatenate([np.full(len(r), 1 / np.sqrt(max(1, len(r)))) for r in rows])
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    return csr_matrix((data, np.concatenate(rows), indptr), shape=(len(rows), dims))


def fit_router(tokenizer: Any, texts: Mapping[str, Sequence[str]], experts: Mapping[str, str],
               max_length: int, seed: int, dims: int = 1 << 18) -> Router:
    """Softmax regression of domain on hashed token grams, each domain weighing the same
    whatever its number of texts (a new domain arrives with a few hundred)."""
    from sklearn.linear_model import LogisticRegression

    domains = [d for d in texts if texts[d]]
    if len(domains) < 2:
        raise DataError(f"routing needs texts of at least 2 domains, got {domains}")
    x = features(tokenizer, [t for d in domains for t in texts[d]], max_length, dims)
    y = np.concatenate([np.full(len(texts[d]), i) for i, d in enumerate(domains)])
    fit = LogisticRegression(C=ROUTER_C, max_iter=2000, class_weight="balanced",
                             random_state=seed).fit(x, y)
    coef, bias = fit.coef_, fit.intercept_
    if len(domains) == 2:  # sklearn keeps one row for two classes: p(second) = sigmoid(row)
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    return Router(domains, {d: experts[d] for d in domains},
                  np.ascontiguousarray(coef.T, dtype=np.float32), bias.astype(np.float32))


def routed_share(router: Router, tokenizer: Any, tests: Mapping[str, Sequence[str]],
                 max_length: int) -> dict[str, float]:
    """Per domain: the share of its texts the router sends to that domain's own expert."""
    out = {}
    for d, texts in tests.items():
        if d not in router.experts or not texts:
            continue
        x = features(tokenizer, texts, max_length, router.dims)
        best = (x @ router.weights + router.bias).argmax(axis=1)
        out[d] = round(float(np.mean([router.experts[router.domains[i]] == router.experts[d]
                                      for i in np.asarray(best).ravel()])), 4)
    return out


def route_step(parent: Path, newest: Any, tokenizer: Any, domain: str,
               texts: Mapping[str, Sequence[str]], tests: Mapping[str, Sequence[str]],
               max_length: int, seed: int) -> tuple[RoutedClassifier, dict[str, bytes],
                                                     dict[str, Any]]:
    """The served model of a step (its router over the parent's experts and `newest` for
    `domain`), the files its run dir adds, and what the report says of it. `texts`: what the
    router learns each domain from (never a test text); `tests`: where its routing is scored."""
    from safetensors.torch import load

    experts, files = inherited_experts(parent, [d for d in texts if d != domain])
    experts[domain] = NEWEST
    files = {n: b for n, b in files.items() if n in experts.values()}
    router = fit_router(tokenizer, texts, experts, max_length, seed)
    served = RoutedClassifier({NEWEST: newest, **{n: load_expert(newest, load(b), n)
                                                  for n, b in files.items()}}, router)
    summary = {"experts": router.experts, "router_texts": {d: len(t) for d, t in texts.items()},
               "routed_to_own_version": routed_share(router, tokenizer, tests, max_length)}
    learnt = (json.dumps(dict(texts), indent=1) + "\n").encode()
    return served, {**files, **router.to_files(), ROUTER_TEXTS: learnt}, summary


def router_texts(held_out: Mapping[str, Sequence[str]], replay: Sequence[Example],
                 seen: Sequence[str], domain: str, labelled_new: Sequence[Example],
                 unlabelled_new: Sequence[str], tests: Collection[str],
                 carried: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """What the router learns each domain from: an old domain's texts its parent's router
    learnt (`carried`: labelled and unlabelled texts of the step that brought it), its replay
    exemplars and the half of its held-out texts the gate does not judge on (`distil_half`);
    the new domain's labelled rows and its unlabelled texts. At most MAX_ROUTER_TEXTS per
    domain, never one of `tests` (a few-shot domain's held-out texts are its test texts):
    routing is judged on texts it never saw."""
    out: dict[str, list[str]] = {d: list((carried or {}).get(d, [])) for d in seen if d != domain}
    for ex in replay:
        if ex.domain in out:
            out[ex.domain].append(ex.text)
    for d in out:
        out[d] += [t for t in held_out.get(d, []) if distil_half(t)]
    out[domain] = [ex.text for ex in labelled_new] + list(unlabelled_new)
    return {d: kept[:MAX_ROUTER_TEXTS] for d, t in out.items()
            if (kept := [x for x in dict.fromkeys(t) if x not in tests])}


def read_router_texts(run_dir: Path) -> dict[str, list[str]]:
    path = Path(run_dir) / ROUTER_TEXTS
    return json.loads(path.read_text()) if path.is_file() else {}


def routing_plan(route: bool, texts: dict[str, list[str]], seen: Sequence[str], domain: str
                 ) -> dict[str, list[str]]:
    """The router's texts, or {} (no routing) when `route` is off or no old domain has any;
    an old domain without texts is said: the router cannot send its texts home."""
    if not route:
        return {}
    old = [d for d in seen if d != domain]
    missing = [d for d in old if d not in texts]
    if missing:
        print(f"note: --route has no texts of old domain(s) {missing} (no replay exemplars, no "
              "held-out texts): "
              + ("the new version answers every text" if len(missing) == len(old) else
                 "their texts go to whichever domain's version the router picks"),
              file=sys.stderr)
    return texts if len(texts) >= 2 and domain in texts else {}
