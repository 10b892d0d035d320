"""Training: `P2OTrainer` (TRL GRPO + templated rollouts + context distillation) and the round loop."""
