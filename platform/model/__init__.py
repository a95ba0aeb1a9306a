"""The model: loading a base model (built-in names, Hugging Face folders) and fingerprinting it, the prompt
encoders (prompt tuning's embedding table, p-tuning's MLP/LSTM), `PromptLearningModel` (the frozen base model with
virtual-token embeddings spliced into its input), training prefix layouts, devices and the model's limits."""
