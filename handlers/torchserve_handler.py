"""TorchServe adapter over ModelRuntime. A `.mar` handler file must define exactly one class."""

import logging
from typing import Any

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from handlers import runtime as rt
from handlers import signing
from handlers.bins import bin_label
from handlers.errors import HandlerError, UnsupportedMediaType

log = logging.getLogger(__name__)
EVALUATION_HEADER = "x-driftserve-evaluation"  # "true": answer, but keep out of drift statistics
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
FORM_BODY = ("form-encoded body (curl -d sends application/x-www-form-urlencoded, which "
             "TorchServe splits into fields); send -H 'Content-Type: text/plain' "
             "--data-binary 'TEXT', or -H 'Content-Type: application/json' with {\"text\": ...}")


def _is_evaluation(context: Any, idx: int) -> bool:
    for name in (EVALUATION_HEADER, EVALUATION_HEADER.title()):
        value = context.get_request_header(idx, name)
        if isinstance(value, str):
            return value.lower() == "true"
    return False


def _is_describe(data: list[dict[str, Any]], context: Any) -> bool:
    """TorchServe's own describe call is a batch of one that the front end sends without the
    url_path header it adds to every inference request: a client's `describe` header on a
    prediction must neither read the metadata nor break the batch it shares."""
    return (len(data) == 1 and context.get_request_header(0, "describe") == "True"
            and context.get_request_header(0, "url_path") is None)


def _is_form(row: Any, context: Any, idx: int) -> bool:
    """TorchServe splits a form body into fields (and drops the empty ones), so the request's
    own Content-Type says it best; without one, fields other than body/data do."""
    for name in ("Content-Type", "content-type"):
        value = context.get_request_header(idx, name)
        if isinstance(value, str):
            return value.split(";")[0].strip().lower() in FORM_TYPES
    return isinstance(row, dict) and bool(row) and not {"body", "data"} & row.keys()


def _body_and_type(row: Any, context: Any, idx: int, per_request: bool
                   ) -> tuple[Any, str | None]:
    """TorchServe puts a raw POST body under "body" (or "data"), its content type per parameter.
    Behind a KServe envelope a row is one instance instead: {"text": ...}, a string, or a v2
    input whose "data" is the text."""
    if per_request and _is_form(row, context, idx):
        raise UnsupportedMediaType(FORM_BODY)
    if not isinstance(row, dict) or "text" in row:
        return row, None
    name = "data" if "data" in row else "body"
    header = context.get_request_header(idx, name) if per_request else None
    content_type = header.get("content-type") if isinstance(header, dict) else header
    return row.get(name), content_type


class SentimentHandler:
    """initialize -> ModelRuntime.load; handle -> decode each request, predict the good ones."""

    def __init__(self) -> None:
        self.runtime: rt.ModelRuntime | None = None
        self.initialized = False
        self._gauges_at = 0.0
        self._bins_declared = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        trusted = signing.trusted_keys_from_env()  # DRIFTSERVE_TRUSTED_KEYS on the server
        if trusted is not None:  # before any file of the archive is parsed
            document = signing.verify_model_dir(props["model_dir"], trusted)
            log.info("archive signature verified (key %s)", document["key_id"])
        yaml_config = context.model_yaml_config or {}
        settings = rt.RuntimeSettings.from_dict(yaml_config.get("handler"))
        model = (context.manifest or {}).get("model", {})
        self.runtime = rt.ModelRuntime.load(
            props["model_dir"], rt.select_device(props.get("gpu_id")), settings,
            name=context.model_name or model.get("modelName", "model"),
            version=str(model.get("modelVersion", "1")),
        )
        log.info("loaded %s v%s on %s", self.runtime.name, self.runtime.version,
                 self.runtime.device)
        metrics = getattr(context, "metrics", None)
        if metrics is not None and self.runtime.monitor is not None:
            dims = self._dims()
            self._emit_bins(metrics, dims)  # every series exists from zero on
            self.runtime.monitor.export = lambda: self._emit_bins(metrics, dims)
        self.initialized = True

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        if _is_describe(data, context):
            return [self.runtime.describe()]
        # One row per request, unless a KServe envelope handed over the instances of one
        # request: then errors stay inline and the request's own status is left alone.
        requests = len(getattr(context, "request_processor", None) or [])
        per_request = len(data) == requests
        results: list[Any] = [None] * len(data)
        good: list[int] = []
        texts: list[str] = []
        for idx, row in enumerate(data):
            try:
                body, content_type = _body_and_type(row, context, idx, per_request)
                texts.append(rt.decode_request(body, content_type, self.runtime.settings.max_chars))
                good.append(idx)
            except HandlerError as e:
                if per_request:
                    context.set_response_status(e.status, e.message, idx)
                results[idx] = {"error": e.message, "status": e.status}
        monitored = [requests == 0 or not _is_evaluation(context, idx if per_request else 0)
                     for idx in good]
        for idx, prediction in zip(good, self.runtime.predict(texts, monitored)):
            results[idx] = prediction
        for idx in range(len(data) if per_request else 0):
            context.set_response_content_type(idx, "application/json")
        self._emit_metrics(context, [results[i] for i in good])
        return results

    def _emit_metrics(self, context: Any, predictions: list[dict[str, Any]]) -> None:
        """Prometheus series declared in metrics.yaml (dimension order must match it)."""
        metrics = context.metrics
        if metrics is None or not predictions:
            return
        dims = self._dims()
        metrics.add_metric("DriftRequests", len(predictions), "Count", None, list(dims))
        counts: dict[str, int] = {}
        for p in predictions:
            counts[p["label"]] = counts.get(p["label"], 0) + 1
            metrics.add_metric("DriftConfidence", max(p["probabilities"].values()), "ratio",
                               None, list(dims), MetricTypes.HISTOGRAM)
        for label, n in counts.items():
            metrics.add_metric("DriftPredictedClass", n, "Count", None,
                               [*dims, Dimension("Label", label)])
        result = self.runtime.monitor.last_result if self.runtime.monitor else None
        if result and result["checked_at"] != self._gauges_at:
            self._gauges_at = result["checked_at"]
            for name, value in (("DriftKSMax", result["max_ks"]),
                                ("DriftAlarm", int(result["is_drift"])),
                                ("DriftWindowSize", result["window_size"]),
                                ("DriftEstimatedAccuracy", result.get("estimated_accuracy"))):
                if value is not None:
                    metrics.add_metric(name, value, "", None, list(dims), MetricTypes.GAUGE)

    def _dims(self) -> list[Dimension]:
        return [Dimension("ModelName", self.runtime.name), Dimension("Level", "Model")]

    def _emit_bins(self, metrics: Any, dims: list[Dimension]) -> None:
        """DriftFeatureBin{Feature, Bin}: requests per reference-decile bin, which Prometheus
        sums over replicas. Every series is declared once at zero (at load), so an increase()
        over a range counts the first requests too. After that the monitor's thread flushes the
        pending counts about once a second: a line per feature per batch had cost 10-20 %
        of served throughput (bench/serve.py). A worker that stops loses at most that second."""
        monitor = self.runtime.monitor  # set: the handler calls this only when there is one
        counts = monitor.drain_bins()
        for feature, row in zip(monitor.reference.names, counts):
            for b, n in enumerate(row):
                if n or not self._bins_declared:
                    metrics.add_metric("DriftFeatureBin", int(n), "Count", None,
                                       [*dims, Dimension("Feature", feature),
                                        Dimension("Bin", bin_label(b))])
        self._bins_declared = True
