"""Data: task templates with `<|VIRTUAL_PROMPT_n|>` markers and `{field}` slots, JSONL data files (local or
S3), tokenised examples (truncate_field, answer_only_loss, add_eos), virtual-token encoding, and batching of
mixed-task examples into padded tensors. Also the demo's data sets. No model."""
