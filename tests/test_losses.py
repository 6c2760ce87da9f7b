"""Tests of the U-MARVEL losses: InfoNCE with a learnable temperature (plain and GradCache), the symmetric sum,
re-ranker distillation, and the temperature's checkpoint / resume / hand-over path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast

from umarvel_st.train.losses import (
    TEMPERATURE_FILE,
    CachedInfoNCELoss,
    InfoNCELoss,
    RerankerDistillationLoss,
    Temperature,
    TemperatureCallback,
)

WORDS = "a the cat dog sat on mat ran in park sun rain car bus red blue green big small man woman rides bike".split()

# anchor, positive, negative_1, negative_2: four rows.
COLUMNS = [
    ["the cat sat", "a dog ran", "the man rides a bike", "sun and rain"],
    ["a cat on the mat", "the dog in the park", "a man on a bike", "the rain"],
    ["a red car", "the blue bus", "a small cat", "big green park"],
    ["the woman sat", "a big dog", "red bike", "the sun sat"],
]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers, no dropout) and a word-level tokenizer, written offline."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizerFast(vocab=vocab).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture
def model(backbone_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(modules=[Transformer(str(backbone_dir)), Pooling(32, "mean"), Normalize()])


def _features(model: SentenceTransformer, columns: list[list[str]]) -> list[dict]:
    return [model.preprocess(column) for column in columns]


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows, dim=-1)


def _embeddings(num_columns: int, batch: int = 4, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [_unit(torch.randn(batch, dim, generator=generator, dtype=torch.float64)) for _ in range(num_columns)]


def _cross_entropy_by_hand(logits: torch.Tensor, targets: list[int]) -> float:
    """Mean over rows of -log softmax(row)[target], in plain Python."""
    total = 0.0
    for row, target in zip(logits.tolist(), targets, strict=True):
        total += math.log(sum(math.exp(value) for value in row)) - row[target]
    return total / len(targets)


# ---------------------------------------------------------------------------------------------- temperature


def test_temperature_validates_its_value() -> None:
    with pytest.raises(ValueError, match="positive and finite"):
        Temperature(0.0)
    with pytest.raises(ValueError, match="positive and finite"):
        Temperature(-0.05)
    with pytest.raises(TypeError, match="number or a Temperature"):
        Temperature("0.05")  # type: ignore[arg-type]


def test_losses_share_a_temperature_and_reject_a_contradicting_flag(model: SentenceTransformer) -> None:
    contrastive = InfoNCELoss(model)
    distillation = RerankerDistillationLoss(model, temperature=contrastive.tau)
    assert distillation.tau is contrastive.tau
    assert CachedInfoNCELoss(model, temperature=contrastive.tau).tau is contrastive.tau
    with pytest.raises(ValueError, match="learnable_temperature=False contradicts"):
        InfoNCELoss(model, temperature=contrastive.tau, learnable_temperature=False)
    with pytest.raises(ValueError, match="positive and finite"):
        InfoNCELoss(model, temperature=0.0)


def test_temperature_save_load_round_trip(tmp_path: Path) -> None:
    trained = Temperature(0.05)
    trained.fill(0.0371234)
    path = trained.save(tmp_path / "stage3")
    assert path == tmp_path / "stage3" / TEMPERATURE_FILE
    assert json.loads(path.read_text())["learnable"] is True

    restored = Temperature(learnable=True).load(tmp_path / "stage3")
    assert torch.equal(restored.value, trained.value)
    assert restored.learnable
    with pytest.raises(FileNotFoundError, match=TEMPERATURE_FILE):
        Temperature().load(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("num_columns", [2, 4])
def test_fixed_temperature_equals_multiple_negatives_ranking_loss(
    model: SentenceTransformer, num_columns: int
) -> None:
    features = _features(model, COLUMNS[:num_columns])
    loss = InfoNCELoss(model, temperature=0.05, learnable_temperature=False)(features, None)
    reference = MultipleNegativesRankingLoss(model, scale=1 / 0.05)(features, None)
    assert torch.equal(loss, reference)
    assert loss.requires_grad  # through the model; the fixed temperature has no gradient
    assert not InfoNCELoss(model, learnable_temperature=False).tau.value.requires_grad


def test_hard_negatives_of_every_row_are_in_the_logits(model: SentenceTransformer) -> None:
    anchors, positives, negatives_1, negatives_2 = _embeddings(4)
    tau = 0.05
    loss = InfoNCELoss(model, temperature=tau).compute_loss_from_embeddings(
        [anchors, positives, negatives_1, negatives_2], None
    )
    # Every query against [all positives, all first negatives, all second negatives]; target = its own positive.
    candidates = torch.cat([positives, negatives_1, negatives_2])  # (12, dim)
    expected = _cross_entropy_by_hand(anchors @ candidates.T / tau, targets=[0, 1, 2, 3])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # The same loss with only each row's own negatives is a different number, so the check above can tell them apart.
    own_only = [
        torch.cat([positives, negatives_1[row : row + 1], negatives_2[row : row + 1]]) for row in range(4)
    ]  # 4 x (6, dim)
    own_only_logits = torch.stack([anchors[row] @ own_only[row].T / tau for row in range(4)])  # (4, 6)
    assert abs(expected - _cross_entropy_by_hand(own_only_logits, targets=[0, 1, 2, 3])) > 1e-3


def test_symmetric_loss_is_the_sum_of_both_directions(model: SentenceTransformer) -> None:
    anchors, positives, negatives = _embeddings(3, seed=1)
    tau = 0.07
    loss = InfoNCELoss(model, temperature=tau, symmetric=True).compute_loss_from_embeddings(
        [anchors, positives, negatives], None
    )
    query_to_candidate = _cross_entropy_by_hand(anchors @ torch.cat([positives, negatives]).T / tau, [0, 1, 2, 3])
    candidate_to_query = _cross_entropy_by_hand(positives @ anchors.T / tau, [0, 1, 2, 3])
    assert loss.item() == pytest.approx(query_to_candidate + candidate_to_query, rel=1e-6)
    # sentence-transformers' per-direction form is the mean of the same two terms.
    mean_form = MultipleNegativesRankingLoss(
        model, scale=1 / tau, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
    ).compute_loss_from_embeddings([anchors, positives, negatives], None)
    assert loss.item() == pytest.approx(2 * mean_form.item(), rel=1e-6)


def test_learnable_temperature_gets_a_gradient_and_moves(model: SentenceTransformer) -> None:
    loss_fn = InfoNCELoss(model, temperature=0.05)
    assert any(parameter is loss_fn.tau.value for parameter in loss_fn.parameters())
    optimizer = torch.optim.SGD([p for p in loss_fn.parameters() if p.requires_grad], lr=1e-3)
    loss_fn(_features(model, COLUMNS), None).backward()
    assert loss_fn.tau.value.grad is not None and loss_fn.tau.value.grad.abs().item() > 0
    optimizer.step()
    assert loss_fn.temperature != pytest.approx(0.05, abs=1e-9)
    assert loss_fn.get_config_dict()["temperature"] == loss_fn.temperature


@pytest.mark.parametrize("symmetric", [False, True])
def test_cached_loss_matches_the_non_cached_loss_and_gradients(model: SentenceTransformer, symmetric: bool) -> None:
    # float64, so that the two summation orders agree to ~1e-12 (in float32 tau's gradient differs by ~5e-5).
    model.double()
    features = _features(model, COLUMNS)
    results = []
    for loss_fn in (
        InfoNCELoss(model, temperature=0.06, symmetric=symmetric),
        CachedInfoNCELoss(model, temperature=0.06, symmetric=symmetric, mini_batch_size=3),
    ):
        loss_fn.double()
        model.zero_grad()
        loss = loss_fn(features, None)
        # A scaled backward, as the trainer does with gradient accumulation: tau's gradient must be scaled too.
        (0.5 * loss).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), loss_fn.tau.value.grad.clone(), grads))
    (loss, tau_grad, grads), (cached_loss, cached_tau_grad, cached_grads) = results
    torch.testing.assert_close(cached_loss, loss)
    torch.testing.assert_close(cached_tau_grad, tau_grad)
    assert grads.keys() == cached_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, msg=name)


def test_cached_loss_keeps_earlier_temperature_gradients(model: SentenceTransformer) -> None:
    loss_fn = CachedInfoNCELoss(model, mini_batch_size=2)
    features = _features(model, COLUMNS[:2])
    loss_fn(features, None).backward()
    once = loss_fn.tau.value.grad.clone()
    loss_fn(features, None).backward()  # gradient accumulation over two micro-batches
    torch.testing.assert_close(loss_fn.tau.value.grad, 2 * once)


def test_gather_across_devices_in_a_single_process_group(model: SentenceTransformer, tmp_path: Path) -> None:
    model.double()
    features = _features(model, COLUMNS[:3])
    local = InfoNCELoss(model, temperature=0.05).double()
    local(features, None).backward()
    expected_grad = local.tau.value.grad.clone()
    expected = local(features, None).detach()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for loss_fn in (
            InfoNCELoss(model, temperature=0.05, gather_across_devices=True),
            CachedInfoNCELoss(model, temperature=0.05, gather_across_devices=True, mini_batch_size=3),
        ):
            loss = loss_fn.double()(features, None)
            loss.backward()
            torch.testing.assert_close(loss.detach(), expected)
            # The callback averages tau's gradient over the group (world size 1: unchanged).
            TemperatureCallback(loss_fn.tau).on_pre_optimizer_step(None, None, None)
            torch.testing.assert_close(loss_fn.tau.value.grad, expected_grad)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ distillation


def _angle(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Two queries with three candidates each, placed on the unit circle so that the cosines are the ones listed.
QUERIES = torch.tensor([_angle(0), _angle(90)])  # (2, 2)
CANDIDATES = [torch.tensor([_angle(a), _angle(b)]) for a, b in [(0, 30), (60, 90), (90, 180)]]  # 3 x (2, 2)
COSINES = [[1.0, 0.5, 0.0], [math.cos(math.radians(60)), 1.0, 0.0]]
TEACHER = [[0.9, 0.2, 0.4], [0.1, 0.7, 0.3]]


def _kl_by_hand(teacher: list[list[float]], cosines: list[list[float]], tau: float) -> float:
    total = 0.0
    for teacher_row, cosine_row in zip(teacher, cosines, strict=True):
        teacher_norm = sum(math.exp(t / tau) for t in teacher_row)
        student_norm = sum(math.exp(c / tau) for c in cosine_row)
        for t, c in zip(teacher_row, cosine_row, strict=True):
            p, q = math.exp(t / tau) / teacher_norm, math.exp(c / tau) / student_norm
            total += p * math.log(p / q)
    return total / len(teacher)


def test_distillation_matches_a_hand_computation(model: SentenceTransformer) -> None:
    tau = 0.5
    loss = RerankerDistillationLoss(model, temperature=tau).compute_loss_from_embeddings(
        [QUERIES, *CANDIDATES], torch.tensor(TEACHER)
    )
    assert loss.item() == pytest.approx(_kl_by_hand(TEACHER, COSINES, tau), rel=1e-5)


@pytest.mark.parametrize("padding", [float("nan"), float("-inf")])
def test_distillation_padding_does_not_change_the_value(model: SentenceTransformer, padding: float) -> None:
    loss_fn = RerankerDistillationLoss(model, temperature=0.5)
    # Row 1 has only its first two candidates; its third column holds a padding candidate.
    teacher = torch.tensor([TEACHER[0], [TEACHER[1][0], TEACHER[1][1], padding]])
    candidates = [tensor.clone().requires_grad_() for tensor in CANDIDATES]
    loss = loss_fn.compute_loss_from_embeddings([QUERIES, *candidates], teacher)
    expected_row_1 = _kl_by_hand([TEACHER[1][:2]], [COSINES[1][:2]], 0.5)
    expected = (_kl_by_hand([TEACHER[0]], [COSINES[0]], 0.5) + expected_row_1) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # An extra, fully padded column changes nothing either, and a padded candidate gets no gradient.
    extra = torch.zeros(2, 2, requires_grad=True)
    padded = torch.cat([teacher, torch.full((2, 1), padding)], dim=1)
    padded_loss = loss_fn.compute_loss_from_embeddings([QUERIES, *candidates, extra], padded)
    torch.testing.assert_close(padded_loss, loss)
    padded_loss.backward()
    assert torch.isfinite(candidates[2].grad).all() and candidates[2].grad[1].abs().max() == 0
    assert extra.grad.abs().max() == 0


def test_distillation_gradient_flows_only_through_the_student(model: SentenceTransformer) -> None:
    tau = 0.5
    loss_fn = RerankerDistillationLoss(model, temperature=tau)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    queries = QUERIES.clone().requires_grad_()
    loss_fn.compute_loss_from_embeddings([queries, *CANDIDATES], teacher).backward()
    assert teacher.grad is None
    assert queries.grad is not None and queries.grad.abs().max() > 0

    # tau's gradient equals that of the same loss with a constant (gradient-free) tau on the teacher side.
    student_tau = torch.tensor(tau, requires_grad=True)
    cosines = torch.tensor(COSINES)
    teacher_probs = torch.softmax(torch.tensor(TEACHER) / tau, dim=1)
    student_log_probs = torch.log_softmax(cosines / student_tau, dim=1)
    reference = (teacher_probs * (teacher_probs.log() - student_log_probs)).sum(dim=1).mean()
    reference.backward()
    torch.testing.assert_close(loss_fn.tau.value.grad, student_tau.grad)


def test_distillation_through_the_model_with_variable_candidate_counts(model: SentenceTransformer) -> None:
    loss_fn = RerankerDistillationLoss(model)
    teacher = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.8, float("nan")], [0.6, 0.2, 0.4], [0.1, 0.2, 0.3]])
    loss = loss_fn(_features(model, COLUMNS), teacher)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert loss_fn.tau.value.grad is not None and torch.isfinite(loss_fn.tau.value.grad)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_distillation_rejects_bad_inputs(model: SentenceTransformer) -> None:
    loss_fn = RerankerDistillationLoss(model)
    embeddings = [QUERIES, *CANDIDATES]
    with pytest.raises(ValueError, match=r"3 candidate column\(s\) but teacher scores of shape \(2, 2\)"):
        loss_fn.compute_loss_from_embeddings(embeddings, torch.tensor(TEACHER)[:, :2])
    with pytest.raises(ValueError, match="needs the teacher scores as a label column"):
        loss_fn.compute_loss_from_embeddings(embeddings, None)
    with pytest.raises(ValueError, match="at least one candidate column"):
        loss_fn.compute_loss_from_embeddings([QUERIES], torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"Label rows \[1\] have no candidate"):
        loss_fn.compute_loss_from_embeddings(embeddings, torch.tensor([TEACHER[0], [float("nan")] * 3]))
    with pytest.raises(ValueError, match=r"\+inf"):
        loss_fn.compute_loss_from_embeddings(embeddings, torch.tensor([TEACHER[0], [math.inf, 0.1, 0.2]]))


# ------------------------------------------------------------------------------------ checkpoint and resume


def _train(backbone_dir: Path, output_dir: Path, resume_from: Path | None = None) -> tuple[InfoNCELoss, Path]:
    model = SentenceTransformer(modules=[Transformer(str(backbone_dir)), Pooling(32, "mean"), Normalize()])
    loss = InfoNCELoss(model, temperature=0.05)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    dataset = Dataset.from_dict({"anchor": COLUMNS[0] + COLUMNS[2], "positive": COLUMNS[1] + COLUMNS[3]})
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[TemperatureCallback(loss.tau)]
    )
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    return loss, output_dir


def test_temperature_survives_checkpoint_and_resume(backbone_dir: Path, tmp_path: Path) -> None:
    loss, output_dir = _train(backbone_dir, tmp_path / "run")
    saved = [json.loads((output_dir / f"checkpoint-{step}" / TEMPERATURE_FILE).read_text()) for step in (1, 2)]
    assert saved[0]["temperature"] != pytest.approx(0.05, abs=1e-6)  # the optimizer trained tau
    assert saved[1]["temperature"] == loss.temperature

    # A fresh process: the model weights come back through the trainer, tau through the callback. Resuming after
    # step 1 must end where the uninterrupted run ended, which it cannot with tau restarted at 0.05.
    resumed, _ = _train(backbone_dir, output_dir, resume_from=output_dir / "checkpoint-1")
    assert resumed.temperature == pytest.approx(loss.temperature, abs=1e-7)
