"""Configuration: the one config loader (`loader`: YAML or dict, dotted overrides, `${...}`, validation, one
report of every problem) that training, inference, the Ray job and search and the SDK all use; the NeMo-style
prompt-learning schema (`schema.PromptLearningConfig`, `load_config`), the run settings (trainer, experiment
manager), NeMo key lists and the checks across keys. The `ray:` and `search:` sections belong to the job config
(promptray.jobs.config.JobConfig, which extends the schema through its hooks); `promptray infer`'s config, which
builds the decode core's parameters, sits above it in generation/infer_config.py. Loads no model."""
