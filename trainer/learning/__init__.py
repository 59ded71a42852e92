"""How a version learns: the `train` and `adapt` verbs and the parts they are made of (the
shared fit loop and settings, replay with herding, class balancing, distillation, self-training,
the contrastive stage, domain experts and their router, bf16 and data-parallel training), plus
`evaluate`. May import trainer.model, data and common."""
