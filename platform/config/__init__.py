"""Configuration: the NeMo-style prompt-learning schema (`schema.PromptLearningConfig`, `load_config`), the
run settings (trainer, experiment manager), NeMo key lists, the checks across keys that report every problem at
once, and the offline-inference config. The `ray:` and `search:` sections belong to the job config
(promptray.jobs.config.JobConfig, which extends the schema through its hooks). Reads YAML and overrides; loads
no model."""
