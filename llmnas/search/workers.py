"""Worker processes on this machine that share one study (``--workers K``): start, watch, join.

Each worker is an ordinary ``run_search`` in its own process, taking turns with the others through
the study (see :mod:`llmnas.search.storage`). The parent watches them: a worker that dies (killed,
out of memory) is reported; its running trial is failed and queued again by whichever process next
starts a trial, so nothing is lost and ``n_trials`` still holds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import TYPE_CHECKING

import optuna
import torch

if TYPE_CHECKING:
    from llmnas.recipe import Recipe


def _worker_main(recipe: Recipe, n_trials: int, timeout: float | None, index: int, threads: int,
                 optuna_verbosity: int) -> None:
    import optuna

    from llmnas.search.engine import run_search

    optuna.logging.set_verbosity(optuna_verbosity)  # as in the parent (the CLI quiets Optuna's INFO lines)
    torch.set_num_threads(threads)
    run_search(recipe, n_trials=n_trials, timeout=timeout, workers=1, show_progress=False, worker_index=index)


class WorkerPool:
    """``workers - 1`` more processes on the recipe's study (one GPU each where there are several).

    The calling process is worker 0. While the pool runs, the calling process uses its share of the CPU
    threads; :meth:`join` gives the rest back.
    """

    def __init__(self, recipe: Recipe, n_trials: int, timeout: float | None, workers: int) -> None:
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._saved_threads = torch.get_num_threads()
        self.children: list[mp.process.BaseProcess] = []
        self._reported: set[int] = set()
        ctx = mp.get_context("spawn")
        n_gpus = torch.cuda.device_count()
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            for index in range(1, workers):
                if n_gpus > 1:
                    os.environ["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
                args = (recipe, n_trials, timeout, index, self.threads, optuna.logging.get_verbosity())
                child = ctx.Process(target=_worker_main, args=args,
                                    name=f"llmnas-worker-{index}", daemon=False)
                child.start()
                self.children.append(child)
        finally:
            if n_gpus > 1:
                if saved is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = saved
        torch.set_num_threads(self.threads)

    def deaths(self) -> list[str]:
        """One line per worker that has died since the last call (a clean exit is not a death)."""
        lines = []
        for index, child in enumerate(self.children, 1):
            code = child.exitcode
            if code is None or code == 0 or index in self._reported:
                continue
            self._reported.add(index)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            lines.append(f"worker {index} (pid {child.pid}) {how}; its running trial is failed and queued again")
        return lines

    def join(self) -> list[str]:
        """Wait for every worker to end; the deaths not reported yet."""
        for child in self.children:
            child.join()
        torch.set_num_threads(self._saved_threads)
        return self.deaths()

    def terminate(self) -> None:
        for child in self.children:
            if child.is_alive():
                child.terminate()
        for child in self.children:
            child.join()
        torch.set_num_threads(self._saved_threads)
