"""Generation: the decode core (KV-cache step loop, stop strings, EOS), token sampling (temperature,
top-k, top-p, penalties), log-probabilities and scoring, and offline inference from the prompt table
(`inference`; `promptray infer`'s config and run: `infer_config`)."""
