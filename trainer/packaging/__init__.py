"""A run dir becomes something a server loads: the signed `.mar` archive (`archive`), the
signing keys (`keygen`), KServe's folder layout (`kserve-export`). May import trainer.learning
and the layers below it."""
