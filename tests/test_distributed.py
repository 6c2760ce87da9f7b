"""Scale-out: InfoNCE with candidates gathered across 2 processes equals one process on the whole batch.

Why the two agree. Let the global batch have ``N = W * B`` rows split over ``W`` ranks of ``B`` rows, and let
``l_i`` be row i's cross-entropy. With ``gather_across_devices=True`` every rank scores its own B queries against
the candidates of all W ranks, so ``l_i`` is exactly the single-process term (the same logits, the same target),
and rank r's loss is ``L_r = (1 / B) * sum_{i in r} l_i``. The single-process loss is ``L = (1 / N) * sum_i l_i``,
hence ``L = (1 / W) * sum_r L_r``: the MEAN of the rank losses (what the trainer logs).

Gradients: ``all_gather_with_grad`` sends the gradient that every rank's loss puts on rank r's embeddings back
to rank r, so rank r's model gradient is ``sum_r' dL_r' / d(theta through rank r's rows)`` and the sum of these
over ranks is ``d(sum_r L_r) / d theta = W * dL / d theta``. DDP AVERAGES gradients over ranks, which gives
``dL / d theta``. tau lives in the loss, outside DDP and outside the gather, so rank r's tau gradient is only
``dL_r / d tau``; :class:`TemperatureCallback` averages it, which gives ``(1 / W) * sum_r dL_r / d tau =
dL / d tau``. So: loss averaged, model gradients averaged by DDP, tau's gradient averaged by the callback.

The worker below does exactly that under ``torchrun --nproc_per_node 2`` (gloo, CPU): real DDP around the model,
the real callback for tau. The comparison runs in float64 (model and tau): the one thing that is not the same in
the two runs is padding (a rank pads its half of the batch to its own longest row), and a row embedded in a
batch of another padded length moves by about 3e-8 even in float64. In float32 that is about 1e-7, and tau's
gradient, ``-cos / tau**2`` (400 x the cosine at tau = 0.05), turns it into about 6e-5, hiding the comparison.
Two references are checked: the full batch in one forward (agreement up to that padding effect, 1e-5), and the
full batch embedded in the ranks' two halves (identical padding, so agreement to float64 rounding, 1e-10).
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = '''
"""Loss and gradients of InfoNCELoss(gather_across_devices=True) on this rank's half of a fixed batch."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch.nn.parallel import DistributedDataParallel

import umarvel_st
from umarvel_st.testing import make_test_image
from umarvel_st.train.losses import InfoNCELoss, TemperatureCallback

WORLD_SIZE = 2
# name: (symmetric, number of columns: anchor, positive[, negative], gather_across_devices)
CASES = {
    "infonce_negatives": (False, 3, True),
    "symmetric_pairs": (True, 2, True),
    "symmetric_negatives": (True, 3, True),
    "infonce_negatives_not_gathered": (False, 3, False),  # the control: each rank sees only its own candidates
}


def rows():
    """Four (anchor, positive, negative) rows; each rank's half holds an image item."""
    return [
        ({"text": "a noisy picture", "image": make_test_image(56, 56, seed=1)}, "a caption of noise", "a red bus"),
        ("two cats sleeping", "cats asleep on a sofa", "a dog in the park"),
        ("a man rides a bike", "someone is cycling", "a parked car"),
        ("fresh fruit", {"text": "a bowl of fruit", "image": make_test_image(28, 56, seed=2)}, "rain on glass"),
    ]


def shard(batch, rank):
    size = len(batch) // WORLD_SIZE
    return batch[rank * size : (rank + 1) * size]


def build_model(backbone):
    return umarvel_st.from_mllm(backbone, device="cpu", generation_prompt=False).to(torch.float64).train()


def build_loss(model, symmetric, gather):
    loss = InfoNCELoss(
        model, temperature=0.05, learnable_temperature=True, symmetric=symmetric, gather_across_devices=gather
    )
    return loss.to(torch.float64)


def features(model, batch, num_columns):
    return [model.preprocess(list(column)) for column in list(zip(*batch))[:num_columns]]


def gradients(model, loss):
    named = {**dict(model.named_parameters()), "tau": loss.tau.value}
    return {name: param.grad.detach().clone() for name, param in named.items() if param.requires_grad}


def main(backbone, output):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD_SIZE
    model = build_model(backbone)
    # DDP averages the model's gradients, as in the trainer. Its buffers are constant rotary tables; broadcasting them
    # (the default) hung this CPU/gloo run in the first forward, so it is off here.
    wrapped = DistributedDataParallel(model, broadcast_buffers=False)
    results = {}
    for name, (symmetric, num_columns, gather) in CASES.items():
        model.zero_grad(set_to_none=True)
        loss_fn = build_loss(model, symmetric, gather)
        loss_fn.model = wrapped  # what SentenceTransformerTrainer does with the wrapped model
        loss = loss_fn(features(model, shard(rows(), rank), num_columns), None)
        loss.backward()
        TemperatureCallback(loss_fn.tau).on_pre_optimizer_step(None, None, None)  # averages tau's gradient
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        results[name] = {"loss": loss / WORLD_SIZE, "grads": gradients(model, loss_fn)}
    if rank == 0:
        torch.save(results, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _max_difference(result: dict, reference: dict) -> dict[str, float]:
    grads, expected = result["grads"], reference["grads"]
    assert grads.keys() == expected.keys()
    model_keys = [key for key in grads if key != "tau"]
    return {
        "loss": (result["loss"] - reference["loss"]).abs().item(),
        "tau": (grads["tau"] - expected["tau"]).abs().item(),
        "model": max((grads[key] - expected[key]).abs().max().item() for key in model_keys),
    }


def _single_process(worker: dict, model, symmetric: bool, num_columns: int, halves: bool) -> dict:
    """The loss and gradients of one process on the whole batch (embedded in one forward, or in the two halves)."""
    model.zero_grad(set_to_none=True)
    loss_fn = worker["build_loss"](model, symmetric, gather=False)
    batch = worker["rows"]()
    if halves:
        parts = [
            worker["embed_columns"](model, worker["features"](model, worker["shard"](batch, rank), num_columns))
            for rank in range(worker["WORLD_SIZE"])
        ]
        embeddings = [torch.cat(column) for column in zip(*parts, strict=True)]  # per column: (batch, dim)
        loss = loss_fn.compute_loss_from_embeddings(embeddings, None)
    else:
        loss = loss_fn(worker["features"](model, batch, num_columns), None)
    loss.backward()
    return {"loss": loss.detach(), "grads": worker["gradients"](model, loss_fn)}


def test_two_processes_match_one_process_on_the_whole_batch(tiny_backbone_factory, tmp_path: Path) -> None:
    backbone = tiny_backbone_factory("qwen2_vl")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    output = tmp_path / "rank0.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(_free_port()), str(script), str(backbone), str(output)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    distributed = torch.load(output)

    worker = runpy.run_path(str(script), run_name="worker")
    model = worker["build_model"](str(backbone))
    assert distributed.keys() == worker["CASES"].keys()
    for name, (symmetric, num_columns, gather) in worker["CASES"].items():
        result = distributed[name]
        assert result["grads"]["tau"].abs().item() > 0.1  # tau is learnt, and the image rows reach the vision tower
        assert result["grads"]["0.model.visual.patch_embed.proj.weight"].abs().max().item() > 0
        same_padding = _max_difference(result, _single_process(worker, model, symmetric, num_columns, halves=True))
        whole_batch = _max_difference(result, _single_process(worker, model, symmetric, num_columns, halves=False))

        if gather:
            assert max(same_padding.values()) < 1e-10, (name, same_padding)
            assert max(whole_batch.values()) < 1e-5, (name, whole_batch)
        else:  # without gathering, each rank's softmax runs over half of the candidates: a different loss
            assert min(same_padding["loss"], same_padding["tau"]) > 1e-2, (name, same_padding)


def test_multi_gpu_configs_are_shipped_and_parse() -> None:
    import json
    from importlib import resources

    import yaml

    folder = resources.files("umarvel_st.train") / "configs"
    accelerate = yaml.safe_load((folder / "accelerate_multi_gpu.yaml").read_text())
    assert accelerate["distributed_type"] == "MULTI_GPU" and accelerate["mixed_precision"] == "bf16"
    assert accelerate["num_processes"] > 1
    deepspeed = json.loads((folder / "deepspeed_zero2.json").read_text())
    assert deepspeed["zero_optimization"]["stage"] == 2
    assert deepspeed["train_micro_batch_size_per_gpu"] == "auto"  # filled in from the training arguments


class _ArgumentsReached(Exception):
    pass


def test_the_recipe_deepspeed_config_reaches_the_training_arguments(
    tiny_backbone_factory, tmp_path: Path, monkeypatch
) -> None:
    """DeepSpeed itself is not installed here: the training arguments are recorded, not built."""
    import json

    from umarvel_st.train import runner
    from umarvel_st.train.recipe import load_recipe

    received = {}

    def record(**kwargs):
        received.update(kwargs)
        raise _ArgumentsReached

    monkeypatch.setattr(runner, "SentenceTransformerTrainingArguments", record)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"query": "a cat", "positive": "a cat on a mat"}) + "\n")
    recipe = load_recipe(
        "finetune",
        [f"output_dir={tmp_path / 'run'}", f"stages.0.data.path={tmp_path / 'pairs.jsonl'}", "deepspeed=ds.json"],
    )
    dataset = runner.build_dataset(recipe.stages[0], recipe.seed)
    with pytest.raises(_ArgumentsReached):
        runner.run_stage(recipe, 0, tiny_backbone_factory("qwen2_vl"), None, dataset=dataset, settings={})
    assert received["deepspeed"] == "ds.json"
    assert load_recipe("finetune").deepspeed is None
