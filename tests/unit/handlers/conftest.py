"""The handler tests' shared parts: TorchServe's own Context and request unpacking, and one
initialized handler per test module."""

import pytest
from ts.context import Context
from ts.service import Service

from handlers.torchserve_handler import SentimentHandler


def make_context(model_dir, yaml_config=None):
    manifest = {"model": {"modelName": "sentiment", "modelVersion": "2"}}
    return Context("sentiment", str(model_dir), manifest, 8, None, "0.12.0",
                   model_yaml_config=yaml_config or {"handler": {"max_chars": 50}})


def batch_of(bodies, headers=None):
    """Raw requests as the worker receives them: (content type, body) per request."""
    batch = [{"requestId": f"r{i}".encode(), "headers": headers or [],
              "parameters": [{"name": "body", "contentType": ct, "value": body}]}
             for i, (ct, body) in enumerate(bodies)]
    headers, inputs, ids = Service.retrieve_data_for_inference(batch)
    return headers, inputs, ids


@pytest.fixture(scope="module")
def handler_and_context(tiny_run):
    ctx = make_context(tiny_run)
    handler = SentimentHandler()
    handler.initialize(ctx)
    return handler, ctx
