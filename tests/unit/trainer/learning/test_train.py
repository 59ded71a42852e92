"""LoRA training and merging: merged == unmerged, run dir contents, reuse, bad input stops early."""

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from handlers.manifest import MANIFEST_NAME, verify_manifest
from trainer.common.errors import DataError, SettingsError
from trainer.data.sources import load_vader
from trainer.learning.train import TrainSettings, run_train
from trainer.model.lora import apply_lora, default_base_model, load_classifier, merge

LABELS = ["negative", "neutral", "positive"]


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_merged_outputs_equal_unmerged_peft_outputs(which, tiny_base):
    base_dir = tiny_base if which == "tiny" else default_base_model()
    torch.manual_seed(0)
    model, tokenizer = load_classifier(base_dir, LABELS, new_head=True)
    peft_model = apply_lora(model, r=8, alpha=16, dropout=0.1, target_modules=["query", "value"])
    with torch.no_grad():  # a trained-looking adapter: B is zero at init, which would hide bugs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    texts = [e.text for e in load_vader("tweets")[:16]]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        unmerged = peft_model(**batch).logits
        with peft_model.disable_adapter():
            without_adapter = peft_model(**batch).logits
    merged_model = merge(copy.deepcopy(peft_model))
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    with torch.inference_mode():
        merged = merged_model(**batch).logits
    assert (merged - unmerged).abs().max().item() <= 1e-4
    assert (unmerged - without_adapter).abs().max().item() > 1e-3  # the adapter matters


def test_run_dir_has_everything_and_verifies(tiny_run, tiny_settings):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "labels.json", "report.json",
            MANIFEST_NAME} <= names
    assert not names & {"pytorch_model.bin", "adapter_model.safetensors"}
    assert set(verify_manifest(tiny_run)) == names - {MANIFEST_NAME}
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["settings"]["lora_r"] == tiny_settings.lora_r
    assert 0 < report["parameters"]["share"] < 0.5
    assert report["labels"] == LABELS and report["best_epoch"] == 1
    for split in ("train", "val", "test"):
        m = report["metrics"][split]
        assert round(m["accuracy"] * m["n"]) / m["n"] == pytest.approx(m["accuracy"], abs=1e-4)
        assert set(m["per_class_f1"]) == set(LABELS)  # (a share of n rows, to 4 decimals)
    assert report["metrics"]["train"]["n"] == tiny_settings.max_train


def test_reuse_skips_only_when_inputs_match(tiny_run, tiny_settings, tmp_path):
    before = (tiny_run / "model.safetensors").stat().st_mtime_ns
    run_train(tiny_settings, "nyt", tiny_run, reuse=True)
    assert (tiny_run / "model.safetensors").stat().st_mtime_ns == before
    out = tmp_path / "v1"
    changed = TrainSettings(**{**tiny_settings.__dict__, "max_train": 32})
    report = run_train(changed, "nyt", out, reuse=True)
    assert report["metrics"]["train"]["n"] == 32 and out.is_dir()


def test_training_is_seeded(tiny_settings, tmp_path):
    a = run_train(tiny_settings, "nyt", tmp_path / "a")
    b = run_train(tiny_settings, "nyt", tmp_path / "b")
    assert a["history"] == b["history"] and a["metrics"] == b["metrics"]


def test_bad_data_row_stops_before_anything_is_written(tiny_settings, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine", "label": "positive"}\n{"text": "x", "label": "meh"}\n')
    out = tmp_path / "runs" / "v1"
    with pytest.raises(DataError, match=r"data.jsonl:2: unknown label 'meh'"):
        run_train(dataclasses.replace(tiny_settings, labels=LABELS), str(data), out)
    assert not (tmp_path / "runs").exists()


def test_settings_report_every_problem():
    with pytest.raises(SettingsError) as info:
        TrainSettings(epochs=0, lr=5.0, lora_dropout=1.5, labels=["a"]).validate()
    for field in ("epochs", "lr", "lora_dropout", "labels"):
        assert field in str(info.value)


def test_cli_bad_row_exits_nonzero_with_file_and_line(tmp_path):
    data = tmp_path / "d.csv"
    data.write_bytes(b"text,label\nok,positive\n\xff\xfe,negative\n")
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--data", str(data),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{data}:3: undecodable bytes" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_bug_inside_a_verb_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    """A user's mistake is one line and exit 2; an unexpected ValueError is a bug, not bad input."""
    import trainer.__main__ as cli
    import trainer.learning.train as train_module

    def bug(*_args, **_kwargs):
        raise ValueError("shape mismatch deep inside")

    monkeypatch.setattr(train_module, "run_train", bug)
    with pytest.raises(ValueError, match="shape mismatch deep inside"):
        cli.main(["train", "--data", "nyt", "--out", str(tmp_path / "out")])

    def user_mistake(*_args, **_kwargs):
        raise SettingsError("--out must differ")

    monkeypatch.setattr(train_module, "run_train", user_mistake)
    assert cli.main(["train", "--data", "nyt", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --out must differ")


@pytest.mark.parametrize("verb", ["train", "adapt", "evaluate", "keygen", "archive", "drift",
                                  "rollout", "rollback", "restore", "demo", "loop",
                                  "kserve-export", "serve start", "sample"])
def test_every_verb_has_help(verb, capsys, monkeypatch):
    """In this process (a fresh one per verb cost 5 s each); the fresh-process import path is
    checked by test_verb_table_matches_what_modules_register and the e2e `driftserve` call."""
    import trainer.__main__ as cli

    monkeypatch.setattr(cli, "quiet_libraries", lambda verbose: None)  # process-wide filters
    with pytest.raises(SystemExit) as exit_:
        cli.main([*verb.split(), "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"python -m trainer {verb}" in out
    assert "(default:" in out or verb == "keygen"  # keygen's one option is required


def test_verb_table_matches_what_modules_register():
    """`python -m trainer VERB` imports only VERB's module: the table must name every verb."""
    from trainer.__main__ import VERBS, parser

    (verbs,) = [a for a in parser()._actions if a.dest == "verb"]
    assert set(verbs.choices) == set(VERBS)
    code = ("import sys; from trainer.__main__ import parser; parser('rollout'); "
            "print(sorted(m for m in ('peft', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_prefixed_settings_take_the_dashed_flag_the_readme_shows_and_the_old_one():
    from trainer.__main__ import parser

    for spelling in ("--adapt-epochs", "--adapt_epochs"):
        args = parser("loop").parse_args(["loop", spelling, "3", "--no-serve-merge"])
        assert args.adapt_epochs == 3 and args.serve_merge is False
