"""Training: from a checked config to a ready model (`engine`), the train and validation steps, the step loop
with checkpoints and metrics, torch.distributed data parallelism, publishing trained prompts to the prompt table,
and `trainer.train`, the single-process entry point that Ray Train workers also build on."""
