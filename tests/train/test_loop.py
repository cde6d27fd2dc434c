from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from llmnas.data import DataConfig, prepare_data
from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN
from llmnas.train import TrainConfig, TrainingDiverged, TrainingPruned, lr_at, train
from llmnas.train.loop import total_steps
from tests.conftest import shared_data

BLOCK = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = shared_data("text/tinyshakespeare.txt")
    cache = tmp_path_factory.mktemp("tokens")
    return prepare_data(DataConfig(source=str(path), tokenizer="char", block_size=BLOCK, max_bytes=120_000,
                                   cache_dir=str(cache)))


def tiny_arch(vocab: int = 65, moe: bool = False) -> Architecture:
    ffn = MoEFFN(4, 2, 32) if moe else DenseFFN(96, "swiglu")
    blocks = (
        BlockSpec(AttentionSpec(4, 2, 12), DenseFFN(96, "gelu")),
        BlockSpec(AttentionSpec(2, 1, 24, window=8), ffn),
    )
    return Architecture(vocab_size=vocab, d_model=48, max_seq_len=BLOCK, blocks=blocks, pos="rope")


def nanogpt_lr(it: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100, decay: int = 2000) -> float:
    """nanoGPT train.py get_lr, verbatim in behaviour."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_lr_schedule_is_nanogpts() -> None:
    cfg = TrainConfig(max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, lr_decay_steps=2000)
    for step in (0, 1, 50, 99, 100, 101, 777, 1500, 1999, 2000, 2001, 2500):
        assert lr_at(cfg, step, 2000) == pytest.approx(nanogpt_lr(step), rel=1e-12)
    timed = TrainConfig(max_seconds=10, warmup_steps=0)
    assert lr_at(timed, 5, None, progress=0.0) == pytest.approx(timed.lr)
    assert lr_at(timed, 5, None, progress=1.0) == pytest.approx(timed.min_lr)


def test_token_budget_becomes_whole_steps() -> None:
    cfg = TrainConfig(max_tokens=1000, batch_size=4, grad_accum=2)
    assert total_steps(cfg, block_size=32, world_size=1) == 4  # ceil(1000 / 256)
    assert total_steps(cfg, block_size=32, world_size=2) == 2
    assert total_steps(TrainConfig(max_tokens=10**6, max_steps=3), 32, 1) == 3


def test_training_learns_and_scores_the_whole_validation_split(data) -> None:
    cfg = TrainConfig(max_steps=80, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_interval=40,
                      eval_blocks=20)
    model, result = train(tiny_arch(), data, cfg, Accelerator(cpu=True))
    assert isinstance(model, Decoder)
    assert result.steps == 80 and result.tokens == 80 * 16 * BLOCK
    assert result.val_loss < 2.9 < math.log(65)  # well below a uniform guess (4.17) and a unigram model (3.3)
    assert [s for s, _ in result.history] == [40, 80]
    # bits per character from the summed loss over the N - 1 targets of the split.
    n_targets = len(data.val) - 1
    assert result.bits_per_char == pytest.approx(result.val_loss * n_targets / (data.meta.val_chars * math.log(2)))
    assert result.train_seconds > 0 and result.tokens_per_second > 0


def test_same_seed_same_result(data) -> None:
    cfg = TrainConfig(max_steps=5, batch_size=4, warmup_steps=2)
    a = train(tiny_arch(moe=True), data, cfg, Accelerator(cpu=True))[1]
    b = train(tiny_arch(moe=True), data, cfg, Accelerator(cpu=True))[1]
    c = train(tiny_arch(moe=True), data, cfg.replace(seed=7), Accelerator(cpu=True))[1]
    assert a.val_loss == b.val_loss and a.val_loss != c.val_loss


def test_nan_loss_ends_the_run_as_diverged(data) -> None:
    arch = tiny_arch()
    model = Decoder(arch)
    with torch.no_grad():
        model.embed.weight[3] = float("nan")
    with pytest.raises(TrainingDiverged, match="loss nan at step 1") as e:
        train(arch, data, TrainConfig(max_steps=10, batch_size=8), Accelerator(cpu=True), model=model)
    assert e.value.step == 1


def test_reporter_can_prune(data) -> None:
    seen = []

    def report(step: int, value: float) -> bool:
        seen.append((step, value))
        return step >= 4

    cfg = TrainConfig(max_steps=50, batch_size=4, eval_interval=2, eval_blocks=4)
    with pytest.raises(TrainingPruned) as e:
        train(tiny_arch(), data, cfg, Accelerator(cpu=True), report=report)
    assert e.value.step == 4 and [s for s, _ in seen] == [2, 4]


def test_time_budget(data) -> None:
    cfg = TrainConfig(max_seconds=1.0, batch_size=4, warmup_steps=1, eval_interval=1, eval_blocks=4)
    _, result = train(tiny_arch(), data, cfg, Accelerator(cpu=True))
    # The run stops at the first step that ends past the budget; evaluations do not count against it.
    assert result.train_seconds >= 1.0 and result.steps > 1 and result.eval_seconds > 0
    # an intermediate validation after every step, then the final one on the whole split
    assert [s for s, _ in result.history] == [*range(1, result.steps + 1), result.steps]


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"max_seconds": 0}, "train.max_seconds=0"), ({"max_seconds": -5}, "train.max_seconds=-5"),
     ({"max_seconds": float("inf")}, "train.max_seconds=inf"), ({"max_steps": 0}, "train.max_steps=0"),
     ({"max_tokens": -1}, "train.max_tokens=-1"), ({"lr": float("nan")}, "train.lr=nan"),
     ({"weight_decay": -0.1}, "train.weight_decay=-0.1"), ({"beta2": 1.0}, "train.beta2=1.0"),
     ({"grad_clip": 0.0}, "train.grad_clip=0.0"), ({"eval_blocks": 0}, "train.eval_blocks=0")],
)
def test_budgets_rates_and_settings_out_of_range_are_refused(changes, key) -> None:
    from llmnas.errors import RecipeError

    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        TrainConfig(**{"max_steps": 10, **changes})


def test_gradient_accumulation_needs_a_matching_accelerator(data) -> None:
    cfg = TrainConfig(max_steps=3, batch_size=4, grad_accum=2)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        train(tiny_arch(), data, cfg, Accelerator(cpu=True))
    _, result = train(tiny_arch(), data, cfg, Accelerator(cpu=True, gradient_accumulation_steps=2))
    assert result.steps == 3 and result.tokens == 3 * 2 * 4 * BLOCK


def test_budget_is_required() -> None:
    from llmnas.errors import RecipeError

    with pytest.raises(RecipeError, match="give a budget"):
        TrainConfig()
