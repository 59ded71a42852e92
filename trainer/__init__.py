"""Trainer: builds, archives, monitors and rolls out the served classifier.

Sub-packages by role, each importing only the layers below it (checked by import-linter in
`make test`; pyproject.toml's [tool.importlinter]):

    loop        the closed loop and the demo: drive everything below
    ops         against a running TorchServe: serve, client, rollout and its gate, drift, sample
    packaging   a run dir -> a signed .mar archive (and KServe's layout)
    learning    train and adapt: LoRA steps, replay, balancing, distillation, experts
    model       the classifier: PEFT LoRA on a base, its run dir, how it is scored
    data        labelled text, splits, lineage, the drift reference and its texts
    common      errors and exit codes, settings <-> argparse, atomic writes

`__main__` (the `driftserve` command) maps each verb to the module that registers it.
"""
