"""Identity of a base model, stored with every prompt so it is never used against another model."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from promptray.platform.errors import BaseModelMismatchError


@dataclass(frozen=True)
class BaseModelFingerprint:
    """What a soft prompt depends on: the input embedding space of one base model."""

    name: str  # what the user called it: a built-in name, a path or a hub id
    architecture: str  # e.g. "LlamaForCausalLM"
    hidden_size: int
    vocab_size: int
    embedding_sha256: str  # hash of the input embedding matrix, as float32 bytes

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (as stored with every prompt)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BaseModelFingerprint:
        """The inverse of `to_dict` (extra keys ignored; KeyError for a missing one)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def mismatches(self, other: BaseModelFingerprint) -> list[str]:
        """Differences that make prompts of `self` unusable on `other` (the name alone does not count)."""
        fields = ("architecture", "hidden_size", "vocab_size", "embedding_sha256")
        return [f"{f}: prompts have {getattr(self, f)!r}, model has {getattr(other, f)!r}"
                for f in fields if getattr(self, f) != getattr(other, f)]

    def check_compatible(self, other: BaseModelFingerprint, what: str = "prompt") -> None:
        """BaseModelMismatchError naming `what`, both models and every difference when `mismatches` finds any."""
        problems = self.mismatches(other)
        if problems:
            raise BaseModelMismatchError(
                f"{what} was trained on base model {self.name!r} but is being loaded against {other.name!r}; "
                f"they differ in " + "; ".join(problems)
                + ". Load it with the base model it was trained on, or re-train the task on this model.")


def embedding_sha256(weight: torch.Tensor) -> str:
    """sha256 of an embedding matrix as float32 bytes (fingerprint the model as loaded, before any cast)."""
    data = weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def fingerprint_model(model: torch.nn.Module, name: str) -> BaseModelFingerprint:
    """Fingerprint of a Hugging Face causal LM (any `PreTrainedModel`)."""
    emb = model.get_input_embeddings().weight  # (V, H)
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    return BaseModelFingerprint(name=str(name), architecture=archs[0], hidden_size=int(emb.shape[1]),
                                vocab_size=int(emb.shape[0]), embedding_sha256=embedding_sha256(emb))
