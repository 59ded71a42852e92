"""Baseline (b) of bench/serve.py: the pattern users copy from TorchServe's Hugging Face example.

Written for the benchmark, not copied: a BaseHandler subclass, each request tokenised on its own
and padded to max_length, the PEFT adapter left unmerged, TorchServe batch size 1. It gets the
same inference_mode and thread count as the product handler, so only the pattern differs.
"""

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

MAX_LENGTH = 128


class StockHandler(BaseHandler):
    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        threads = ((context.model_yaml_config or {}).get("handler") or {}).get("threads", 0)
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        base = AutoModelForSequenceClassification.from_pretrained(model_dir / "base",
                                                                  local_files_only=True)
        self.model = PeftModel.from_pretrained(base, model_dir).eval()
        self.labels = [base.config.id2label[i] for i in range(base.config.num_labels)]
        self.initialized = True

    def preprocess(self, requests):
        ids, masks = [], []
        for request in requests:
            body = request.get("data") or request.get("body")
            text = json.loads(body)["text"] if isinstance(body, (bytes, bytearray)) else body["text"]
            encoded = self.tokenizer(text, max_length=MAX_LENGTH, padding="max_length",
                                     truncation=True, return_tensors="pt")
            ids.append(encoded["input_ids"])
            masks.append(encoded["attention_mask"])
        return torch.cat(ids), torch.cat(masks)

    def inference(self, data, *args, **kwargs):
        ids, mask = data
        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=mask).logits

    def postprocess(self, data):
        probs = torch.softmax(data, dim=-1).tolist()
        return [{"label": self.labels[max(range(len(p)), key=p.__getitem__)],
                 "probabilities": dict(zip(self.labels, p))} for p in probs]
