"""Configuration: the NeMo-style prompt-learning schema (`schema.PromptLearningConfig`, `load_config`), the
run settings (trainer, experiment manager), NeMo key lists, the checks across keys that report every problem at
once, and the offline-inference config. The `ray:` and `search:` sections (`ray_config`, `search_config`) live
here for now and move to `jobs/` later. Reads YAML and overrides; loads no model."""
