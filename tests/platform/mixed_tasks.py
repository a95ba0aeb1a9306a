"""Two tasks with different virtual-token counts and marker layouts, shared by the model and generation tests."""

from promptray.platform.templates import TaskTemplate

MODELS = ["tiny_gpt2", "tiny_llama"]

# task "a": 3 virtual tokens at the start, answer-only loss; task "b": 5 virtual tokens split 2 + 3, full loss
TEMPLATE_A = TaskTemplate(taskname="a", prompt_template="<|VIRTUAL_PROMPT_0|> Question: {q} Answer:{answer}",
                          total_virtual_tokens=3, virtual_token_splits=[3], answer_only_loss=True,
                          answer_field="answer")
TEMPLATE_B = TaskTemplate(taskname="b", prompt_template="<|VIRTUAL_PROMPT_0|> Context: {q}<|VIRTUAL_PROMPT_1|> "
                          "Answer:{answer}", total_virtual_tokens=5, virtual_token_splits=[2, 3])
