"""Where virtual token embeddings come from: frozen table entries, prompt-tuning matrices, p-tuning encoders.

`PromptBank` holds all three kinds side by side and answers one question for the model: the
`(n_virtual, H)` matrix of a task. Only new tasks have parameters; existing tasks are buffers that
never receive gradients, so they come out of a run bit-identical.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
import torch.nn as nn

InitMethod = Literal["text", "random", "vocab"]


# ----------------------------------------------------------------------------- prompt tuning init

Vocab = Union[torch.Tensor, nn.Module]  # an embedding matrix (V, H), or the model's embedding module


def _rows(vocab: Vocab, ids: torch.Tensor) -> torch.Tensor:
    """Vocabulary embeddings of `ids` as the model sees them: through the embedding module when given one
    (models such as Gemma scale inside it), else rows of the matrix. Always a float32 copy."""
    with torch.no_grad():
        rows = vocab(ids) if isinstance(vocab, nn.Module) else vocab.detach()[ids]
    return rows.to(torch.float32).clone()  # (n, H)


def _vocab_size(vocab: Vocab) -> int:
    return (vocab.weight if isinstance(vocab, nn.Module) else vocab).shape[0]


def init_from_text(text: str, n: int, tokenizer, vocab: Vocab) -> torch.Tensor:
    """Token embeddings of `text`, tiled or truncated to n rows (copies; `vocab` is not touched)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"init text {text!r} tokenizes to nothing; give some words")
    ids = (ids * (n // len(ids) + 1))[:n]
    return _rows(vocab, torch.tensor(ids))  # (n, H)


def init_random(n: int, vocab: Vocab, generator: torch.Generator) -> torch.Tensor:
    """Normal noise with the vocabulary embeddings' standard deviation (estimated on up to 8192 tokens)."""
    sample = _rows(vocab, torch.arange(min(_vocab_size(vocab), 8192)))  # (S, H)
    return torch.randn(n, sample.shape[1], generator=generator) * float(sample.std())  # (n, H)


def init_from_vocab(n: int, vocab: Vocab, generator: torch.Generator) -> torch.Tensor:
    """Embeddings of n tokens sampled uniformly from the vocabulary."""
    return _rows(vocab, torch.randint(0, _vocab_size(vocab), (n,), generator=generator))  # (n, H)


# ----------------------------------------------------------------------------- p-tuning encoder

class PromptEncoder(nn.Module):
    """P-tuning: an LSTM (or MLP) shared by the tasks tuned together (Liu et al. 2021, "GPT Understands, Too";
    NeMo's `p_tuning` settings: encoder_type, encoder_hidden, num_layers, dropout).

    Each task has its own learned input sequence of length n_task; the shared network maps it to the
    task's virtual embeddings, so tasks get distinct prompts (and may have different counts).

    Holds: `names` (the tasks, in `task_tokens` order), `inputs` (one float32 (n_task, H) parameter per task,
    standard-normal at creation), and the network: `encoder_type` "lstm" (a bidirectional LSTM of
    `num_layers` layers, encoder_hidden // 2 units each way) or anything else for an MLP of num_layers - 1
    Linear+ReLU+Dropout blocks; then a head Linear -> ReLU -> Linear back to H. `encoder_hidden` None: H.
    `forward(name)`: the task's (n_task, H) virtual embeddings; ValueError for a name it does not hold.
    """

    def __init__(self, task_tokens: dict[str, int], hidden: int, encoder_type: str = "lstm",
                 encoder_hidden: Optional[int] = None, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        enc = encoder_hidden or hidden
        self.names = list(task_tokens)
        self.inputs = nn.ParameterList(nn.Parameter(torch.randn(n, hidden)) for n in task_tokens.values())
        self.encoder_type = encoder_type
        if encoder_type == "lstm":
            self.lstm = nn.LSTM(hidden, enc // 2, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0,
                                bidirectional=True, batch_first=True)
            head_in = 2 * (enc // 2)
        else:
            layers: list[nn.Module] = []
            for i in range(num_layers - 1):
                layers += [nn.Linear(hidden if i == 0 else enc, enc), nn.ReLU(), nn.Dropout(dropout)]
            self.mlp = nn.Sequential(*layers)
            head_in = enc if num_layers > 1 else hidden
        self.head = nn.Sequential(nn.Linear(head_in, enc), nn.ReLU(), nn.Linear(enc, hidden))

    def forward(self, name: str) -> torch.Tensor:
        """(n, H) virtual embeddings of task `name` (ValueError if it is not one of `names`)."""
        x = self.inputs[self.names.index(name)].unsqueeze(0)  # (1, n, H)
        h = self._lstm(x) if self.encoder_type == "lstm" else self.mlp(x)  # (1, n, E)
        return self.head(h).squeeze(0)  # (n, H)

    def _lstm(self, x: torch.Tensor) -> torch.Tensor:
        """cuDNN's LSTM dropout keeps a random state of its own, outside torch's generator, so a GPU run with
        dropout could be neither repeated nor resumed exactly; the native kernels draw from the generator
        (the encoder's input is a few tokens: cuDNN would save nothing)."""
        if x.is_cuda and self.training and self.lstm.dropout > 0:
            with torch.backends.cudnn.flags(enabled=False):
                return self.lstm(x)[0]
        return self.lstm(x)[0]


# ----------------------------------------------------------------------------- the bank

class PromptBank(nn.Module):
    """All task prompts of one model: frozen (from the table), prompt-tuned, or p-tuned.

    Holds, for a hidden size H: frozen tasks as non-persistent float32 buffers `frozen_<i>` (n, H), which
    never get gradients; prompt-tuned tasks as float32 parameters in `tuned` (n, H); p-tuned tasks through
    one shared `PromptEncoder` (`encoder`). All live on the bank's `device` (that of the model it is in).
    Task names are unique across the three kinds.

    - `get(name)`: the task's (n, H) embeddings (KeyError for an unknown task).
    - `lookup(tasknames)`: the prompts of a batch's tasks stacked, (S, H), and each row's offset (B,) long.
    - `export(names)`: final float32 (n, H) CPU copies, computed in eval mode (how prompts reach the table).
    - `add_frozen`/`add_tuned`/`set_encoder` raise ValueError for a name already held or a prompt whose
      last dimension is not H.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.frozen_names: list[str] = []
        self.tuned_names: list[str] = []
        self.tuned = nn.ParameterList()
        self.encoder: Optional[PromptEncoder] = None
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # moves with model.to(device)

    @property
    def device(self) -> torch.device:
        """Where the bank is (the model's device); prompts added later are placed there too."""
        return self._anchor.device

    def add_frozen(self, name: str, embeddings: torch.Tensor) -> None:
        """Hold `embeddings` (n, H) as task `name`'s frozen prompt: a float32 copy on the bank's device."""
        self._check_new(name, embeddings.shape[-1])
        self.register_buffer(f"frozen_{len(self.frozen_names)}",
                             embeddings.detach().to(self.device, torch.float32).clone(), persistent=False)
        self.frozen_names.append(name)

    def add_tuned(self, name: str, init: torch.Tensor) -> None:
        """A new prompt-tuning parameter for task `name`, initialised to a float32 copy of `init` (n, H)."""
        self._check_new(name, init.shape[-1])
        self.tuned.append(nn.Parameter(init.to(self.device, torch.float32).clone()))
        self.tuned_names.append(name)

    def set_encoder(self, encoder: PromptEncoder) -> None:
        """Use `encoder` for the p-tuned tasks `encoder.names` (ValueError for a name the bank already holds)."""
        for name in encoder.names:
            self._check_new(name, self.hidden)
        self.encoder = encoder

    def _check_new(self, name: str, hidden: int) -> None:
        if name in self.names:
            raise ValueError(f"task {name!r} is already in the prompt bank")
        if hidden != self.hidden:
            raise ValueError(f"task {name!r} prompt has hidden size {hidden}, model has {self.hidden}")

    @property
    def names(self) -> list[str]:
        """Every task the bank holds: frozen, then prompt-tuned, then p-tuned."""
        return self.frozen_names + self.tuned_names + (self.encoder.names if self.encoder else [])

    @property
    def new_names(self) -> list[str]:
        """The tasks that train (prompt-tuned and p-tuned): what `export()` returns by default."""
        return self.tuned_names + (self.encoder.names if self.encoder else [])

    def get(self, name: str) -> torch.Tensor:
        """(n, H) virtual embeddings of one task."""
        if name in self.tuned_names:
            return self.tuned[self.tuned_names.index(name)]
        if self.encoder is not None and name in self.encoder.names:
            return self.encoder(name)
        if name in self.frozen_names:
            return getattr(self, f"frozen_{self.frozen_names.index(name)}")
        raise KeyError(f"unknown task {name!r}; known tasks: {self.names}")

    def lookup(self, tasknames: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the prompts of the tasks in a batch: (rows (S, H), per-example row offset (B,))."""
        unique = list(dict.fromkeys(tasknames))
        mats = [self.get(n) for n in unique]
        starts, total = {}, 0
        for n, m in zip(unique, mats):
            starts[n], total = total, total + m.shape[0]
        offsets = torch.tensor([starts[n] for n in tasknames], dtype=torch.long)
        return torch.cat(mats, dim=0), offsets

    @torch.no_grad()
    def export(self, names: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        """Final (n, H) float32 embeddings of the given tasks (default: new ones), computed in eval mode.
        This is how p-tuning outputs move into the prompt table; the encoder is not needed afterwards."""
        was_training = self.training
        self.eval()
        out = {n: self.get(n).detach().to("cpu", torch.float32).clone() for n in (names or self.new_names)}
        self.train(was_training)
        return out
