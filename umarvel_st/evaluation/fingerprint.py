"""What cached evaluation embeddings depend on, on the model's side: its weights, its options and its prompts.

Embeddings cached by :class:`~umarvel_st.evaluation.MBEIREvaluator` are reused only while the model that made them
is the same. A model is identified by content, not by name, so the same model loaded by path or by Hub id shares a
cache, and a model whose weights changed in place (further training, a merged adapter) does not:

- ``weights``: SHA-256 over the model's state dict (every tensor's name, dtype, shape and bytes). It reads every
  weight once (about 10 s for a 7B model in bfloat16), and only when a cache folder is used.
- ``options``: SHA-256 over every saved option: each module's class and ``get_config_dict()`` (suffix, pixel
  budget, positions, pooling...), the maximum sequence length, the chat template and tokenizer (vocabulary, added
  tokens), and the model's prompts, default prompt, similarity function and truncation.

An encoder without a ``state_dict`` (e.g. a wrapper around a remote service) can only be identified by its class
and options; a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

logger = logging.getLogger(__name__)


def _qualified_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _tokenizer_state(backend: Any) -> dict[str, Any]:
    """The tokenizer as saved, less its padding and truncation state: each tokenizer call sets those, so they would
    make a model's fingerprint change after it encodes anything."""
    import json

    state = json.loads(backend.to_str())
    state.pop("padding", None)
    state.pop("truncation", None)
    return state


def _options(model: Any) -> dict[str, Any]:
    modules = []
    for module in model if hasattr(model, "__iter__") else ():
        processor = getattr(module, "processor", None)
        tokenizer = getattr(module, "tokenizer", None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        modules.append(
            {
                "type": _qualified_name(module),
                "config": module.get_config_dict() if hasattr(module, "get_config_dict") else None,
                "max_seq_length": getattr(module, "max_seq_length", None),
                "chat_template": getattr(processor, "chat_template", None)
                or getattr(tokenizer, "chat_template", None),
                "tokenizer": _tokenizer_state(backend) if backend is not None else None,
                "padding_side": getattr(tokenizer, "padding_side", None),
            }
        )
    return {
        "modules": modules,
        "prompts": getattr(model, "prompts", None),
        "default_prompt_name": getattr(model, "default_prompt_name", None),
        "similarity_fn_name": getattr(model, "similarity_fn_name", None),
        "truncate_dim": getattr(model, "truncate_dim", None),
    }


def _weights_digest(model: Any) -> str | None:
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous().reshape(-1)  # one tensor in host memory at a time
            digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def model_fingerprint(model: Any) -> dict[str, str | None]:
    """``{"class", "options", "weights"}`` of a model (see the module docstring); JSON-serialisable.

    Args:
        model: A sentence-transformers model, or anything with ``encode_query`` / ``encode_document``.

    Returns:
        The class name and SHA-256 digests of the options and the weights (``None`` without a state dict).
    """
    options = json.dumps(_options(model), sort_keys=True, default=str)
    weights = _weights_digest(model)
    if weights is None:
        logger.warning(
            "%s has no state_dict: cached embeddings cannot tell a change of its weights. Use a fresh cache folder "
            "after changing the model.",
            _qualified_name(model),
        )
    return {
        "class": _qualified_name(model),
        "options": hashlib.sha256(options.encode()).hexdigest(),
        "weights": weights,
    }
