"""Everything done against a running TorchServe: start one (`serve`, server), call it (client),
roll a version out or back behind the gate (rollout, gate, gate_evidence, holdout, the serving
record), read its drift monitor (`drift`) and sample its traffic for a labeller (`sample`).
May import trainer.packaging and the layers below it."""
