"""The classifier itself: a base model with a PEFT LoRA adapter (built, merged), the run dir it
is stored in, and how it is scored (accuracy, macro-F1, churn between versions, the guard
against useless models, continual-learning metrics). May import trainer.data and common."""
