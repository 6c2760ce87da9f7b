"""LoRA on the language model of a U-MARVEL embedder, and merging it back.

U-MARVEL trains a fresh LoRA on every Linear layer of the LLM (q, k, v, o, gate, up, down) in each stage, keeps the
vision tower and merger frozen, and merges the adapter into the weights after the stage. LoRA is attached with
``peft.get_peft_model`` (transformers 5.x's ``add_adapter`` asks for a newer peft than the one we support).
"""

from __future__ import annotations

import logging

from peft import LoraConfig, PeftModel, get_peft_model
from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

LLM_LINEAR_LAYERS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _backbone(model: SentenceTransformer):
    return model[0].model


def _into_peft_wrapper(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: accept keys of an adapter loaded by transformers (``model.X``) into the peft wrapper
    (``model.base_model.model.X``). The trainer resumes by loading the checkpoint as a fresh model, whose adapter
    transformers injects in place, and copying its state dict into the model being trained."""
    wrapped = f"{prefix}model.base_model.model."
    for key in [key for key in state_dict if key.startswith(f"{prefix}model.") and not key.startswith(wrapped)]:
        state_dict[wrapped + key.removeprefix(f"{prefix}model.")] = state_dict.pop(key)


def apply_lora(
    model: SentenceTransformer,
    r: int = 128,
    alpha: int = 256,
    dropout: float = 0.05,
    target_modules: tuple[str, ...] = LLM_LINEAR_LAYERS,
) -> SentenceTransformer:
    """Attach a fresh LoRA adapter to the language model's Linear layers, in place.

    Only the adapter is trainable afterwards: the language model's own weights, the vision tower and the merger
    are frozen.

    Args:
        model: A U-MARVEL model (``umarvel_st.from_mllm``); its backbone must not carry an adapter already.
        r: LoRA rank (64 in recipe stage 1, 128 after).
        alpha: LoRA alpha (twice the rank in the recipe).
        dropout: LoRA dropout.
        target_modules: Names of the language model's Linear layers to adapt.

    Returns:
        The same model, for chaining.

    Raises:
        ValueError: If the model already has an adapter (merge it first) or an argument is out of range.
    """
    if isinstance(_backbone(model), PeftModel):
        raise ValueError("The model already carries a LoRA adapter; call merge_lora(model) before adding a new one.")
    if r <= 0 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"Need r > 0, alpha > 0 and 0 <= dropout < 1, got r={r}, alpha={alpha}, dropout={dropout}.")
    names = "|".join(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # Anchored to the language model: the vision tower has Linear layers too, and they stay frozen.
        target_modules=rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})",
    )
    model[0].model = get_peft_model(_backbone(model), config)
    model[0]._lora_hook = model[0].register_load_state_dict_pre_hook(_into_peft_wrapper)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info("LoRA r=%d alpha=%d on %s: %d trainable parameters", r, alpha, list(target_modules), trainable)
    return model


def merge_lora(model: SentenceTransformer) -> SentenceTransformer:
    """Merge the LoRA adapter into the backbone weights, in place, leaving a plain (adapter-free) model.

    Returns:
        The same model, for chaining.

    Raises:
        ValueError: If the model has no adapter.
    """
    backbone = _backbone(model)
    if not isinstance(backbone, PeftModel):
        raise ValueError("The model has no LoRA adapter to merge; apply_lora(model) adds one.")
    model[0].model = backbone.merge_and_unload()
    model[0]._lora_hook.remove()
    return model


def freeze_vision(model: SentenceTransformer) -> SentenceTransformer:
    """Freeze the vision tower and merger for full fine-tuning (the recipe never trains them); for an embedder or a
    re-ranker.

    Returns:
        The same model, for chaining.
    """
    backbone = _backbone(model)  # the embedder's Qwen-VL model, or the re-ranker's (which wraps it with an LM head)
    for parameter in getattr(backbone, "model", backbone).visual.parameters():
        parameter.requires_grad_(False)
    return model
