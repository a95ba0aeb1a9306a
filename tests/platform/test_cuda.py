"""The engine on a CUDA GPU: the CPU's numbers in fp32 (every batch layout, generation, scoring), training and
a resumed run, bf16 training, and `promptray infer`. Skipped where no GPU is visible (CI has none); on a GPU
machine: `pytest -m cuda`."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from promptray.platform.data.batching import to_device
from promptray.platform.generation.decode import GenerationParams, generate
from promptray.platform.generation.infer_config import load_infer_config, run_inference
from promptray.platform.generation.inference import answer_logprobs
from promptray.platform.model.prompt_model import PromptLearningModel
from promptray.platform.table.table import PromptTable
from promptray.platform.train.trainer import build_loop, train
from promptray.serve.prefix_cache import PrefixCache

from mixed_tasks import MODELS, TEMPLATE_A, TEMPLATE_B, bank_for, batch_of, generation_setup, loss_and_grads
from train_helpers import dp_config, full_and_resumed

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


@pytest.mark.usefixtures("always_split")
@pytest.mark.parametrize("layout", ["plain", "packed", "split"])
@pytest.mark.parametrize("fixture", MODELS)
def test_loss_and_gradients_on_cuda_equal_the_cpus(fixture, layout, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    cpu = PromptLearningModel(lm, bank_for(lm.get_input_embeddings().weight.shape[1]))
    gpu = copy.deepcopy(cpu).to(CUDA)
    for m in (cpu, gpu):
        m.fast_paths = [] if layout == "plain" else [layout]
    batch = batch_of(tokenizer)  # made on the CPU; the GPU model gets it moved
    loss_c, n_c, grads_c = loss_and_grads(cpu, batch, share=layout != "plain")
    loss_g, n_g, grads_g = loss_and_grads(gpu, to_device(batch, CUDA), share=layout != "plain")
    assert n_g == n_c and loss_g == pytest.approx(loss_c, rel=1e-5)
    for a, b in zip(grads_c, grads_g):
        assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-5, rtol=1e-4)
    if layout != "plain":
        assert gpu._verified == {layout}  # checked against the plain forward on the GPU, and kept


@pytest.mark.parametrize("fixture", MODELS)
def test_generation_and_scoring_on_cuda_equal_the_cpus(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    cpu, exs = generation_setup(lm, tokenizer)
    gpu = copy.deepcopy(cpu).to(CUDA)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    params = GenerationParams(max_new_tokens=6, stop_at_eos=False)
    expected = generate(cpu, exs, params, pad, eos)
    assert generate(gpu, exs, params, pad, eos) == expected
    cache = PrefixCache(gpu, tokenizer)
    cache.add("a", TEMPLATE_A)
    cache.add("b", TEMPLATE_B)
    assert cache.get("a").layers[0][0].is_cuda
    assert generate(gpu, exs, params, pad, eos, prefill=cache.prefill) == expected  # cached prompt starts

    sampled = GenerationParams(max_new_tokens=6, greedy=False, top_k=20, seed=5)
    assert generate(gpu, exs, sampled, pad, eos) == generate(gpu, exs, sampled, pad, eos)  # the GPU's generator
    torch.testing.assert_close(torch.tensor(answer_logprobs(gpu, exs, pad)),
                               torch.tensor(answer_logprobs(cpu, exs, pad)), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("style,model", [("prompt-tuning", "tiny_gpt2_path"), ("p-tuning", "tiny_llama_path")])
def test_training_on_cuda_publishes_the_cpus_prompts(tmp_path, style, model, request):
    path = request.getfixturevalue(model)
    results = {}
    for acc in ("cpu", "gpu"):
        (tmp_path / acc).mkdir()
        cfg = dp_config(tmp_path / acc, path, style, steps=4)
        cfg.trainer.accelerator = acc
        results[acc] = train(cfg, progress=False)
    cpu, gpu = results["cpu"], results["gpu"]
    records = [json.loads(line) for line in gpu.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert gpu.best_val_loss == pytest.approx(cpu.best_val_loss, rel=1e-4)
    for task in ("a", "b"):
        published = PromptTable(gpu.table_uri).get(task).embeddings
        assert published.device.type == "cpu" and torch.equal(published, gpu.prompts[task])
        assert torch.allclose(published, cpu.prompts[task], atol=1e-3)
        assert float((published - cpu.prompts[task]).abs().max()) < 0.02 * float(published.abs().max())


def test_a_resumed_cuda_run_with_dropout_finishes_like_an_uninterrupted_one(tmp_path, tiny_gpt2_path):
    cfg = dp_config(tmp_path, tiny_gpt2_path, "p-tuning", steps=6)
    cfg.model.p_tuning.dropout = 0.1  # draws from the GPU's random stream
    full, resumed, state = full_and_resumed(cfg, CUDA)
    assert "cuda_rng" in state
    for task in ("a", "b"):  # GPU scatter-adds may sum in another order: equal up to float rounding
        torch.testing.assert_close(resumed.engine.model.bank.export()[task], full.engine.model.bank.export()[task],
                                   atol=1e-5, rtol=1e-5)


def test_bf16_training_on_cuda_follows_the_cpus_and_uses_sdpa(tmp_path, tiny_llama_path):
    loops = {}
    for device in ("cpu", "cuda"):
        (tmp_path / device).mkdir()
        cfg = dp_config(tmp_path / device, tiny_llama_path, steps=12)
        cfg.trainer.precision = "bf16"
        loops[device] = build_loop(cfg, device=torch.device(device) if device == "cuda" else None)
        loops[device].run()
    gpu = loops["cuda"].engine.model
    assert next(gpu.lm.parameters()).dtype == torch.bfloat16 and gpu.lm.config._attn_implementation == "sdpa"
    assert gpu._verified  # a shared-prefix layout ran and agreed with the plain forward
    records = {d: loop.writer.records for d, loop in loops.items()}
    val = [r["val_loss"] for r in records["cuda"] if "val_loss" in r]
    assert len(val) == 6 and val == sorted(val, reverse=True) and val[-1] < val[0]  # it learns (a little)
    for cpu, cuda in zip(records["cpu"], records["cuda"]):  # eager bf16 on the CPU, SDPA bf16 on the GPU
        assert cuda["loss"] == pytest.approx(cpu["loss"], abs=2e-3)


def test_promptray_infer_on_cuda_writes_the_cpus_predictions(tmp_path, tiny_gpt2_path):
    cfg = dp_config(tmp_path, tiny_gpt2_path, steps=2)
    cfg.trainer.accelerator = "cpu"
    table = train(cfg, progress=False).table_uri
    data = tmp_path / "infer.jsonl"
    data.write_text("".join(json.dumps({"taskname": t, "text": f"apple river stone {i}"}) + "\n"
                            for i, t in enumerate("abab")))
    out = {}
    for acc in ("cpu", "gpu"):
        infer = load_infer_config(None, [f"virtual_prompt_model_file={table}", f"data_paths=[{data}]",
                                         "precision=fp32", "inference.tokens_to_generate=4",
                                         f"trainer.accelerator={acc}", f"output_file={tmp_path / acc}.jsonl"])
        run_inference(infer, progress=False)
        out[acc] = [json.loads(line)["prediction"] for line in (tmp_path / f"{acc}.jsonl").read_text().splitlines()]
    assert len(out["gpu"]) == 4 and out["gpu"] == out["cpu"]
