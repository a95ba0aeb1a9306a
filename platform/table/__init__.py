"""The prompt table: versioned task prompts (`table.PromptTable`) over a storage backend, its manifest with
compare-and-swap, the safetensors codec of one prompt, and export to / import from PEFT prompt-tuning adapters."""
