"""The U-MARVEL training losses, built on sentence-transformers' ranking losses.

U-MARVEL trains with InfoNCE at a temperature tau that is fixed (stages 1-2) or learned as a raw scalar (from
stage 3 on, init 0.05), and distils a re-ranker with a KL loss that reuses the same tau (stage 5). The contrastive
losses are thin subclasses of :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`
and its GradCache variant, so gathering across devices, hard-negative handling and mini-batching stay
sentence-transformers' own code; this module adds only what U-MARVEL needs:

- :class:`Temperature`, the tau module that the losses share (the trainer optimises it with the model, because
  sentence-transformers' trainer puts every parameter of the loss into the optimizer);
- the paper's symmetric loss, the SUM of the query->candidate and candidate->query cross-entropies
  (sentence-transformers' ``partition_mode="per_direction"`` averages them, i.e. gives half of it);
- :class:`RerankerDistillationLoss`, KL(teacher || student) over each query's candidate list;
- :class:`TemperatureCallback`, because the trainer saves and restores only the model: tau lives in the loss, so
  the callback writes it as ``temperature.json`` into every ``checkpoint-<step>`` folder, restores it when training
  resumes from one, and averages tau's gradient over processes (the loss is not wrapped in DDP, so nothing else
  would keep the copies of tau on different processes equal).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.util import get_world_size, is_dist_initialized
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

__all__ = [
    "TEMPERATURE_FILE",
    "CachedInfoNCELoss",
    "InfoNCELoss",
    "RerankerDistillationLoss",
    "Temperature",
    "TemperatureCallback",
]

#: Name of the file that :meth:`Temperature.save` writes and :meth:`Temperature.load` reads.
TEMPERATURE_FILE = "temperature.json"

_Column = TypeVar("_Column")


class Temperature(nn.Module):
    """The softmax temperature tau of the U-MARVEL losses: one raw scalar parameter (logits = similarity / tau).

    One instance is meant to be shared: pass the contrastive loss' ``tau`` to :class:`RerankerDistillationLoss`,
    and carry it from stage to stage with :meth:`save` / :meth:`load`.

    Args:
        initial: Starting value of tau; U-MARVEL uses 0.05. Must be positive and finite.
        learnable: Whether tau is trained (``requires_grad``). U-MARVEL keeps it fixed in stages 1-2 and learns it
            from stage 3 on. It is a raw value, not a log: a learning rate large enough to push it through 0 breaks
            the loss, so give it a modest rate (``learning_rate_mapping={r"tau\\.value": ...}`` in the training
            arguments) if the model's rate is large. With ``weight_decay > 0`` it is decayed like any other weight.
    """

    def __init__(self, initial: float = 0.05, learnable: bool = True) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(_validate_temperature(initial)), requires_grad=learnable)  # ()

    @property
    def learnable(self) -> bool:
        """Whether tau receives gradients."""
        return self.value.requires_grad

    def forward(self) -> Tensor:
        """Return tau as a 0-dim tensor that carries its gradient."""
        return self.value  # ()

    def fill(self, value: float) -> None:
        """Set tau in place (the parameter object, and so the optimizer's reference to it, stays the same)."""
        with torch.no_grad():
            self.value.fill_(_validate_temperature(value))

    def save(self, directory: str | Path) -> Path:
        """Write ``temperature.json`` (``{"temperature": ..., "learnable": ...}``) into ``directory``.

        Args:
            directory: Folder to write into, typically a checkpoint or the saved model of a stage.

        Returns:
            The path of the written file.
        """
        path = Path(directory) / TEMPERATURE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"temperature": self.value.item(), "learnable": self.learnable}, indent=2) + "\n")
        return path

    def load(self, directory: str | Path) -> Temperature:
        """Set tau from the ``temperature.json`` in ``directory``, in place; ``learnable`` stays as constructed.

        Args:
            directory: Folder holding ``temperature.json``, as written by :meth:`save` or :class:`TemperatureCallback`.

        Returns:
            ``self``, so that ``Temperature(learnable=True).load(stage3_dir)`` starts the next stage.

        Raises:
            FileNotFoundError: If ``directory`` holds no ``temperature.json``.
        """
        path = Path(directory) / TEMPERATURE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No {TEMPERATURE_FILE} in {str(directory)!r}. It is written by Temperature.save() and, for "
                "checkpoints, by TemperatureCallback; pass the folder of a checkpoint or stage output that has one."
            )
        self.fill(json.loads(path.read_text())["temperature"])
        return self

    def extra_repr(self) -> str:
        return f"value={self.value.item():.6g}, learnable={self.learnable}"


def _validate_temperature(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"The temperature must be a number or a Temperature, got {type(value).__name__}: {value!r}.")
    if not 0 < value < math.inf:
        raise ValueError(f"The temperature must be positive and finite, got {value!r}; U-MARVEL uses 0.05.")
    return float(value)


def _as_temperature(temperature: float | Temperature, learnable: bool | None) -> Temperature:
    """Use ``temperature`` if it is a :class:`Temperature` (to share it), else build one."""
    if isinstance(temperature, Temperature):
        if learnable is not None and learnable != temperature.learnable:
            raise ValueError(
                f"learnable_temperature={learnable} contradicts the Temperature passed in "
                f"(learnable={temperature.learnable}). Leave learnable_temperature unset to share it as it is, "
                f"or build it with Temperature(learnable={learnable})."
            )
        return temperature
    return Temperature(temperature, learnable=True if learnable is None else learnable)


def _add_reverse_direction(
    loss_fn: Callable[[list[_Column]], Tensor], columns: list[_Column], symmetric: bool
) -> Tensor:
    """Return ``loss_fn(columns)``, plus, if ``symmetric``, the candidate->query loss.

    The candidate->query cross-entropy (each positive against every query of the global batch, the query of its own
    row being the target) is exactly the query->candidate loss with the anchor and positive columns swapped and the
    hard negatives left out, as in sentence-transformers' ``"doc_to_query"`` direction.
    """
    loss = loss_fn(columns)
    if symmetric:
        loss = loss + loss_fn([columns[1], columns[0]])
    return loss


class InfoNCELoss(MultipleNegativesRankingLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float | Temperature = 0.05,
        learnable_temperature: bool | None = None,
        symmetric: bool = False,
        gather_across_devices: bool = False,
    ) -> None:
        """InfoNCE with U-MARVEL's temperature: logits = cos(q, c) / tau, cross-entropy against the row's positive.

        Every query is scored against all positives and all hard negatives of the batch (of the global batch with
        ``gather_across_devices=True``); gradients flow into the local shard. tau is a :class:`Temperature`, learned
        or fixed. With ``symmetric=True`` the loss is the SUM q->c + c->q, as in U-MARVEL stage 2.

        Args:
            model: The SentenceTransformer model to train.
            temperature: tau as a number (a new :class:`Temperature` is made) or a :class:`Temperature` to share,
                e.g. one loaded from the previous stage. ``temperature=0.05`` with a fixed tau is
                ``MultipleNegativesRankingLoss(scale=20.0)``.
            learnable_temperature: Whether tau is trained. Defaults to True for a number and to the
                :class:`Temperature`'s own setting when one is passed.
            symmetric: If True, add the candidate->query cross-entropy (each positive against all queries of the
                global batch; hard negatives take part only in the query->candidate term). The two terms are summed.
                ``MultipleNegativesRankingLoss(directions=("query_to_doc", "doc_to_query"),
                partition_mode="per_direction")`` computes their mean, half of this loss.
            gather_across_devices: If True, gather queries and candidates from all processes before computing the
                loss (sentence-transformers' all-gather with gradients). Use it for multi-GPU training, with
                :class:`TemperatureCallback` to keep tau equal on every process.

        Requirements:
            1. (anchor, positive) pairs, or (anchor, positive, negative_1, ..., negative_k) tuples with the same k
               on every row.
            2. A :class:`TemperatureCallback` in the trainer when tau is learnable, so that it is checkpointed,
               restored on resume and kept in sync across processes.

        Inputs:
            +-------------------------------------------------+--------+
            | Inputs                                          | Labels |
            +=================================================+========+
            | (anchor, positive) pairs                        | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_k) | none   |
            +-------------------------------------------------+--------+

        Relations:
            - Subclass of :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`
              with ``scale = 1 / tau`` taken from a :class:`Temperature`.
            - :class:`CachedInfoNCELoss` computes the same loss and gradients with GradCache, for large batches.
            - :class:`RerankerDistillationLoss` reuses the same :class:`Temperature` (stage 5).

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer

                from umarvel_st.train.losses import InfoNCELoss, TemperatureCallback

                train_dataset = Dataset.from_dict({
                    "anchor": ["A dog runs on the beach.", "A man rides a bike."],
                    "positive": ["A dog is outside.", "Someone is cycling."],
                })
                loss = InfoNCELoss(model, temperature=0.05, learnable_temperature=True)
                trainer = SentenceTransformerTrainer(
                    model=model,
                    train_dataset=train_dataset,
                    loss=loss,
                    callbacks=[TemperatureCallback(loss.tau)],
                )
                trainer.train()
                loss.tau.save("stage3")  # next stage: InfoNCELoss(model, temperature=Temperature().load("stage3"))
        """
        tau = _as_temperature(temperature, learnable_temperature)
        super().__init__(model, scale=1.0 / tau.value.item(), gather_across_devices=gather_across_devices)
        self.tau = tau
        self.symmetric = symmetric

    @property
    def scale(self) -> Tensor:
        """``1 / tau`` as a 0-dim tensor, so that the logits carry tau's gradient."""
        return 1.0 / self.tau()  # ()

    @scale.setter
    def scale(self, value: float) -> None:
        # MultipleNegativesRankingLoss.__init__ assigns the scale before `tau` exists (it is installed right after);
        # later assignments follow the ST convention scale = 1 / temperature.
        if "tau" in self._modules:
            self.tau.fill(1.0 / value)

    @property
    def temperature(self) -> float:
        """The current value of tau."""
        return self.tau.value.item()

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """Compute the loss from per-column embeddings ``[anchor, positive, negative_1, ...]``, each ``(batch, dim)``.

        Args:
            embeddings: One ``(batch, dim)`` tensor per input column.
            labels: Unused (the positive is the row's own ``positive`` column).

        Returns:
            The scalar loss.
        """
        parent = super().compute_loss_from_embeddings
        return _add_reverse_direction(lambda columns: parent(columns, labels), embeddings, self.symmetric)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "learnable_temperature": self.tau.learnable,
            "symmetric": self.symmetric,
            "gather_across_devices": self.gather_across_devices,
        }


class CachedInfoNCELoss(CachedMultipleNegativesRankingLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float | Temperature = 0.05,
        learnable_temperature: bool | None = None,
        symmetric: bool = False,
        gather_across_devices: bool = False,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """:class:`InfoNCELoss` computed with GradCache, so that the batch size is not bounded by activation memory.

        The embeddings are computed without gradients in mini-batches, the loss is back-propagated to them, and the
        mini-batches are embedded again with gradients, one at a time. Same loss and gradients as
        :class:`InfoNCELoss` (tau's gradient included), slower per step.

        Args:
            model: The SentenceTransformer model to train.
            temperature: tau as a number or a :class:`Temperature` to share; see :class:`InfoNCELoss`.
            learnable_temperature: Whether tau is trained; see :class:`InfoNCELoss`.
            symmetric: If True, the loss is the SUM q->c + c->q; see :class:`InfoNCELoss`.
            gather_across_devices: If True, gather queries and candidates from all processes; see
                :class:`InfoNCELoss`.
            mini_batch_size: Number of inputs embedded at once; the memory knob. Does not change the loss.
            mini_batch_num_tokens: If set, mini-batches are packed by number of non-padding tokens instead.
            show_progress_bar: If True, show progress bars over the mini-batches.

        Requirements:
            1. (anchor, positive) pairs, or (anchor, positive, negative_1, ..., negative_k) tuples with the same k
               on every row.
            2. A :class:`TemperatureCallback` in the trainer when tau is learnable.

        Inputs:
            +-------------------------------------------------+--------+
            | Inputs                                          | Labels |
            +=================================================+========+
            | (anchor, positive) pairs                        | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_k) | none   |
            +-------------------------------------------------+--------+

        Relations:
            - Subclass of :class:`~sentence_transformers.sentence_transformer.losses.CachedMultipleNegativesRankingLoss`
              that wraps :class:`InfoNCELoss` (the wrapped loss holds tau and the other hyperparameters).
            - Equivalent to :class:`InfoNCELoss`; prefer that one when the batch fits in memory.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer

                from umarvel_st.train.losses import CachedInfoNCELoss, TemperatureCallback

                train_dataset = Dataset.from_dict({
                    "anchor": ["A dog runs on the beach.", "A man rides a bike."],
                    "positive": ["A dog is outside.", "Someone is cycling."],
                    "negative_1": ["A cat sleeps.", "A car is parked."],
                })
                loss = CachedInfoNCELoss(model, temperature=0.05, mini_batch_size=8, gather_across_devices=True)
                trainer = SentenceTransformerTrainer(
                    model=model,
                    train_dataset=train_dataset,
                    loss=loss,
                    callbacks=[TemperatureCallback(loss.tau)],
                )
                trainer.train()
        """
        super().__init__(
            model,
            mini_batch_size=mini_batch_size,
            mini_batch_num_tokens=mini_batch_num_tokens,
            gather_across_devices=gather_across_devices,
            show_progress_bar=show_progress_bar,
        )
        # CachedMultipleNegativesRankingLoss reads every loss hyperparameter (scale, directions, ...) from the
        # non-cached loss it wraps; wrapping InfoNCELoss is what brings in tau.
        self.loss = InfoNCELoss(
            model,
            temperature=temperature,
            learnable_temperature=learnable_temperature,
            symmetric=symmetric,
            gather_across_devices=gather_across_devices,
        )

    @property
    def tau(self) -> Temperature:
        """The :class:`Temperature` of the wrapped :class:`InfoNCELoss`."""
        return self.loss.tau

    @property
    def symmetric(self) -> bool:
        """Whether the loss adds the candidate->query term."""
        return self.loss.symmetric

    @property
    def temperature(self) -> float:
        """The current value of tau."""
        return self.loss.temperature

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        """Compute the loss; the model's gradients arrive when the returned loss is back-propagated (GradCache).

        Args:
            sentence_features: One preprocessed feature dict per input column.
            labels: Unused.

        Returns:
            The scalar loss.
        """
        tau = self.tau.value
        if not (torch.is_grad_enabled() and tau.requires_grad):
            return super().forward(sentence_features, labels)
        # GradCache back-propagates the loss while computing it, before the trainer scales it (gradient accumulation,
        # fp16 loss scaling), so it would put an unscaled gradient into tau.grad. Take that gradient out and route it
        # through the returned loss instead: the added term is 0, and its gradient is grad_output * d(loss)/d(tau).
        accumulated, tau.grad = tau.grad, None
        loss = super().forward(sentence_features, labels)
        tau_grad, tau.grad = tau.grad, accumulated
        return loss + (tau - tau.detach()) * tau_grad

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """Compute the loss from the cached mini-batch embeddings, adding the candidate->query term if symmetric.

        Args:
            reps: Per input column, the list of ``(mini_batch, dim)`` embeddings.
            labels: Unused.
            with_backward: Back-propagate each chunk of the loss as it is computed (GradCache step 2).

        Returns:
            The scalar loss (detached when ``with_backward``).
        """
        parent = super().calculate_loss
        return _add_reverse_direction(
            lambda columns: parent(columns, labels, with_backward=with_backward), reps, self.symmetric
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **self.loss.get_config_dict(),
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }


class RerankerDistillationLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float | Temperature = 0.05,
        learnable_temperature: bool | None = None,
    ) -> None:
        """Distil a re-ranker into the embedder: KL(softmax(t / tau) || softmax(s)) over each query's candidates.

        The student scores are s_i = cos(q, c_i) / tau; the teacher scores t_i come in as the label column (in
        U-MARVEL t_i = (cos_i + w * P_yes_i) / 2 from the stage-4 model and the re-ranker). The teacher side divides
        by a detached tau, so gradients reach the model and tau only through the student. Rows may have fewer
        candidates than there are columns: mark the missing ones with NaN or -inf in the label (any text in the
        candidate column); they are left out of both softmaxes. The loss is the sum over candidates, averaged over
        queries.

        Args:
            model: The SentenceTransformer model to train (the student).
            temperature: tau as a number or a :class:`Temperature` to share, normally the one learned in stages 3-4
                (``Temperature().load(stage4_dir)``).
            learnable_temperature: Whether tau is trained. Defaults to True for a number and to the
                :class:`Temperature`'s own setting when one is passed.

        Requirements:
            1. (query, candidate_1, ..., candidate_k) tuples, e.g. the top 50 retrieved by the stage-4 model.
            2. A label column with k teacher scores per row; NaN or -inf marks a missing candidate. At least one
               candidate per row.

        Inputs:
            +------------------------------------------+----------------------------------------------------------+
            | Inputs                                   | Labels                                                   |
            +==========================================+==========================================================+
            | (query, candidate_1, ..., candidate_k)   | [t_1, ..., t_k] teacher scores (NaN / -inf: no candidate) |
            +------------------------------------------+----------------------------------------------------------+

        Relations:
            - Like :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss`, but with cosine
              student scores over the learned tau, the teacher softened by the same tau, variable candidate counts,
              and no tau**2 rescaling.
            - Shares its :class:`Temperature` with :class:`InfoNCELoss`.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer

                from umarvel_st.train.losses import RerankerDistillationLoss, Temperature, TemperatureCallback

                train_dataset = Dataset.from_dict({
                    "query": ["A dog runs on the beach.", "A man rides a bike."],
                    "candidate_1": ["A dog is outside.", "Someone is cycling."],
                    "candidate_2": ["A cat sleeps.", "A car is parked."],
                    "candidate_3": ["A dog swims.", ""],
                    "label": [[0.9, 0.1, 0.6], [0.8, 0.3, float("nan")]],
                })
                loss = RerankerDistillationLoss(model, temperature=Temperature().load("stage4"))
                trainer = SentenceTransformerTrainer(
                    model=model,
                    train_dataset=train_dataset,
                    loss=loss,
                    callbacks=[TemperatureCallback(loss.tau)],
                )
                trainer.train()
        """
        super().__init__()
        self.model = model
        self.tau = _as_temperature(temperature, learnable_temperature)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        """Embed the query and candidate columns and compute the loss.

        Args:
            sentence_features: One preprocessed feature dict per column: query, then the k candidates.
            labels: ``(batch, k)`` teacher scores, NaN or -inf for missing candidates.

        Returns:
            The scalar loss.
        """
        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """Compute the loss from per-column embeddings ``[query, candidate_1, ..., candidate_k]``.

        Args:
            embeddings: One ``(batch, dim)`` tensor per column.
            labels: ``(batch, k)`` teacher scores, NaN or -inf for missing candidates.

        Returns:
            The scalar loss.
        """
        labels = self._check_inputs(len(embeddings), labels)
        padding = labels.isnan() | labels.isneginf()  # (batch, k)
        if padding.all(dim=1).any():
            rows = padding.all(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"Label rows {rows} have no candidate (all NaN / -inf); give every row at least one.")
        queries = F.normalize(embeddings[0], dim=-1)  # (batch, dim)
        candidates = F.normalize(torch.stack(embeddings[1:], dim=1), dim=-1)  # (batch, k, dim)
        cosine = torch.einsum("bd,bkd->bk", queries, candidates)  # (batch, k)
        tau = self.tau()  # ()
        student_log_probs = torch.log_softmax((cosine / tau).masked_fill(padding, -torch.inf), dim=1)  # (batch, k)
        teacher_logits = (labels.detach() / tau.detach()).masked_fill(padding, -torch.inf)  # (batch, k)
        teacher_log_probs = torch.log_softmax(teacher_logits, dim=1)  # (batch, k)
        # Missing candidates have probability 0 on both sides; zeroing their log-ratio avoids 0 * (-inf + inf) = NaN.
        log_ratio = (teacher_log_probs - student_log_probs).masked_fill(padding, 0.0)  # (batch, k)
        return (teacher_log_probs.exp() * log_ratio).sum(dim=1).mean()

    def _check_inputs(self, num_columns: int, labels: Tensor | None) -> Tensor:
        if num_columns < 2:
            raise ValueError(
                f"{type(self).__name__} needs a query column and at least one candidate column, got {num_columns} "
                "column(s). Pass (query, candidate_1, ..., candidate_k) with a label column of k teacher scores."
            )
        num_candidates = num_columns - 1
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} needs the teacher scores as a label column ('label' or 'scores'): one list of "
                f"{num_candidates} floats per row, NaN or -inf for missing candidates. The dataset has none."
            )
        if labels.ndim != 2 or labels.shape[1] != num_candidates:
            raise ValueError(
                f"{type(self).__name__} got {num_candidates} candidate column(s) but teacher scores of shape "
                f"{tuple(labels.shape)}; expected (batch, {num_candidates}). Give one candidate column per teacher "
                "score (pad short rows with NaN scores), in the same order."
            )
        if labels.isposinf().any():
            raise ValueError("The teacher scores contain +inf; mark missing candidates with NaN or -inf instead.")
        return labels

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.tau.value.item(), "learnable_temperature": self.tau.learnable}


class TemperatureCallback(TrainerCallback):
    """Checkpoints, restores and synchronises a learnable :class:`Temperature` during ``trainer.train()``.

    The trainer saves and restores only the model, and tau lives in the loss. This callback:

    - writes ``temperature.json`` into every ``<output_dir>/checkpoint-<step>`` folder (``on_save``);
    - when training resumes (``trainer.train(resume_from_checkpoint=...)``, the checkpoint being one of
      ``output_dir``'s, as with ``resume_from_checkpoint=True``), reads it back from
      ``<output_dir>/checkpoint-<step>`` before the first step (``on_train_begin``). For a checkpoint elsewhere, call
      ``tau.load(checkpoint)`` yourself before ``train()``;
    - averages tau's gradient over processes before each optimizer step (``on_pre_optimizer_step``): the trainer
      wraps only the model in DDP, so tau would otherwise drift apart between processes.

    At the end of a stage, save tau next to the model yourself (``tau.save(model_dir)``); the next stage starts from
    ``Temperature().load(model_dir)``.

    Args:
        temperature: The :class:`Temperature` of the training loss (``loss.tau``).
    """

    def __init__(self, temperature: Temperature) -> None:
        if not isinstance(temperature, Temperature):
            raise TypeError(
                f"TemperatureCallback needs the loss' Temperature (loss.tau), got {type(temperature).__name__}."
            )
        self.temperature = temperature

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == 0:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if (checkpoint / TEMPERATURE_FILE).is_file():
            self.temperature.load(checkpoint)
            logger.info("Restored temperature %.6g from %s", self.temperature.value.item(), checkpoint)
        else:
            logger.warning(
                "Resuming at step %d, but %s has no %s: the temperature stays at %.6g. If the checkpoint is "
                "elsewhere, call tau.load(<checkpoint>) before trainer.train().",
                state.global_step,
                checkpoint,
                TEMPERATURE_FILE,
                self.temperature.value.item(),
            )

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        value = self.temperature.value
        if not (value.requires_grad and is_dist_initialized()):
            return
        if value.grad is None:
            value.grad = torch.zeros_like(value)
        dist.all_reduce(value.grad)
        value.grad /= get_world_size()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if args.should_save:
            self.temperature.save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
