"""Run under ``accelerate launch`` by test_train.py: two processes train one cell network together."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from llmnas.train import TrainingPruned
from llmnas.vision.data import load_images, nb201_split
from llmnas.vision.train import VisionTrainConfig, make_accelerator, train_cell

CELL = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"


def main() -> None:
    out, source = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    cfg = VisionTrainConfig(C=4, N=1, batch_size=5, max_steps=3, lr=0.05, mixed_precision="no")
    accelerator = make_accelerator(cfg)
    data = load_images(source)
    train_idx, valid_idx = nb201_split(data)
    model, result = train_cell(CELL, data, train_idx, {"valid": valid_idx, "test": (data.test_x, data.test_y)},
                               cfg, accelerator)
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode() + value.detach().cpu().numpy().tobytes())
    reported: list[tuple[int, float, float]] = []

    def report(epoch: int, accuracy: float, loss: float) -> bool:
        reported.append((epoch, accuracy, loss))
        return epoch == 2 if accelerator.is_main_process else True  # the main process decides, not the others

    def stopped_at(stop_epoch: int, follower_reports: bool) -> int | None:
        fn = report if accelerator.is_main_process or follower_reports else None  # a search's followers pass none
        try:  # 30 training images, 10 a step over both processes: 3 steps an epoch
            train_cell(CELL, data, train_idx, {"valid": valid_idx},
                       cfg.replace(max_steps=None, epochs=stop_epoch + 2, eval_every_epochs=1), accelerator, fn)
        except TrainingPruned as e:
            return e.step
        return None

    pruned_at = stopped_at(2, follower_reports=True)
    record = {"num_processes": accelerator.num_processes, "hash": digest.hexdigest(), **result.to_dict(),
              "reported": list(reported), "pruned_at": pruned_at, "pruned_at_silent": stopped_at(2, False)}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
