"""How close bf16 training steps are to fp32 ones: per-batch loss and the prompt gradient of each bf16
variant of promptray's step (attention kernel x shared-prefix layout) against the fp32 plain step.

Same model (smollm2-135m), same prompts (the demo's text-initialised 20-token sentiment prompt), same
validation batches (answer-only loss): what differs is only the precision, the attention kernel and the
batch layout. A variant that cost accuracy would show a lower gradient cosine or a larger loss error
than the plain bf16 step.

Besides the per-batch cosine it reports how the gradient error (bf16 gradient - fp32 gradient) behaves
across batches: its size relative to the gradient, and the mean pairwise cosine of the error vectors of
different batches (near 0: noise that averages out over steps; near 1: the same error every step, which
Adam's per-coordinate scaling turns into a steady drift where the true gradient is small). Two diagnostic
variants are not promptray modes: "bf16-residual32", float32 weights except the Linear layers (bf16) under
CPU autocast, so the residual stream, norms and embeddings stay float32 and only the matmuls run in bf16;
"fp32-bf16-weights", float32 compute on weights rounded to bf16 (the share of the error that is the rounded
weights rather than the rounded activations).

    python -m benchmarks.bf16_fidelity [--batches 6] [--out bf16_fidelity]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import INIT_TEXT, MODEL, N_VIRTUAL, machine, read_jsonl, sentiment_splits, table, write_result

VARIANTS = [("fp32", "sdpa", "plain"), ("bf16", "eager", "plain"), ("bf16", "sdpa", "plain"),
            ("bf16", "eager", "packed"), ("bf16", "eager", "split"), ("fp32", "sdpa", "packed"),
            ("bf16-residual32", "eager", "plain"), ("fp32-bf16-weights", "sdpa", "plain")]


def step_model(precision: str, attention: str, layout: str):
    """The engine's PromptLearningModel with the sentiment prompt, set to one attention kernel and layout."""
    import promptray.platform.model.prefix as prefix_mod
    from promptray.platform.model.hub import load_base_model
    from promptray.platform.model.prompt_encoder import PromptBank, init_from_text
    from promptray.platform.model.prompt_model import PromptLearningModel

    lm, tok = load_base_model(MODEL)
    bank = PromptBank(lm.get_input_embeddings().weight.shape[1])
    bank.add_tuned("sentiment", init_from_text(INIT_TEXT, N_VIRTUAL, tok, lm.get_input_embeddings()))
    model = PromptLearningModel(lm, bank, "bf16" if precision == "bf16" else "fp32").train()
    if precision == "bf16-residual32":
        residual32(model)
    elif precision == "fp32-bf16-weights":
        with torch.no_grad():
            for p in lm.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    lm.set_attn_implementation(attention)
    model._attention = None  # keep the chosen kernel
    model.share_prefix, model.fast_paths = layout != "plain", [] if layout == "plain" else [layout]
    model._verified = {layout}
    prefix_mod.MAX_COST = 10.0  # share the prefix on every batch, gain or not
    return model, tok


def residual32(model) -> None:
    """The diagnostic variant: Linear layers (not the output head) in bf16, the rest float32, under autocast."""
    head = model.lm.get_output_embeddings()
    for m in model.lm.modules():
        if isinstance(m, torch.nn.Linear) and m is not head:
            m.to(torch.bfloat16)
    model.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def batches(tok, n: int, size: int = 8):
    from promptray.platform.data.batching import collate
    from promptray.platform.data.dataset import build_examples
    from promptray.platform.data.templates import validate_task_templates
    from promptray.platform.demo import SENTIMENT

    with tempfile.TemporaryDirectory() as tmp:
        records = read_jsonl(sentiment_splits(Path(tmp))["validation"])[:n * size]
    exs, _ = build_examples(records, validate_task_templates([SENTIMENT]), tok, 2048, add_eos=True)
    return [collate(exs[i:i + size], tok.pad_token_id) for i in range(0, len(exs), size)]


def losses_and_grads(model, data) -> tuple[list[float], list[torch.Tensor]]:
    losses, grads = [], []
    for batch in data:
        model.zero_grad(set_to_none=True)
        loss, n = model(batch)
        (loss / n).backward()
        losses.append(float(loss.detach()) / n)
        grads.append(next(p for p in model.trainable_parameters()).grad.detach().float().clone())
    return losses, grads


def error_consistency(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    """Size of the gradient error relative to the fp32 gradient, and how alike the errors of different
    batches are (mean pairwise cosine; None for the reference itself, whose error is zero)."""
    errs = [(g - r).flatten() for g, r in zip(grads, ref)]  # (n*H,) per batch
    rel = statistics.fmean(float(e.norm() / r.norm()) for e, r in zip(errs, ref))
    if rel == 0:
        return {"grad_error_relative": 0.0, "grad_error_pairwise_cosine": None}
    pairs = [float(torch.nn.functional.cosine_similarity(errs[i], errs[j], dim=0))
             for i in range(len(errs)) for j in range(i + 1, len(errs))]
    return {"grad_error_relative": round(rel, 4), "grad_error_pairwise_cosine": round(statistics.fmean(pairs), 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=6, help="validation batches of 8")
    ap.add_argument("--out", default="bf16_fidelity")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    runs = {}
    for variant in VARIANTS:
        model, tok = step_model(*variant)
        runs["/".join(variant)] = losses_and_grads(model, batches(tok, args.batches))
        print("done:", "/".join(variant), flush=True)
    ref_loss, ref_grad = runs["fp32/sdpa/plain"]
    result = {"benchmark": "bf16_fidelity", "settings": {"model": MODEL, "prompt": f"{N_VIRTUAL} tokens, text init",
                                                         "batches": args.batches, "batch": 8},
              "machine": machine(), "variants": {}}
    for name, (loss, grad) in runs.items():
        cos = [float(torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0))
               for g, r in zip(grad, ref_grad)]
        norm = [float(g.norm() / r.norm()) for g, r in zip(grad, ref_grad)]
        result["variants"][name] = {
            "mean_abs_loss_error": round(statistics.fmean(abs(a - b) for a, b in zip(loss, ref_loss)), 6),
            "grad_cosine_mean": round(statistics.fmean(cos), 5), "grad_cosine_min": round(min(cos), 5),
            "grad_norm_ratio_mean_abs_error": round(statistics.fmean(abs(x - 1) for x in norm), 4),
            "grad_norm_ratio_mean": round(statistics.fmean(norm), 4), **error_consistency(grad, ref_grad)}
    print(table([[k, v["mean_abs_loss_error"], v["grad_cosine_mean"], v["grad_cosine_min"],
                  v["grad_norm_ratio_mean"], v["grad_error_relative"], v["grad_error_pairwise_cosine"]]
                 for k, v in result["variants"].items()],
                ["precision/attention/layout", "|loss - fp32|", "grad cos mean", "grad cos min", "norm ratio",
                 "|error| / |grad|", "error cos across batches"]))
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
