"""What ``llmnas search`` prints: the header, a line per trial with a progress bar, and the summary."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from llmnas.search.report import pareto_plots, pareto_table, state_counts, top_table
from llmnas.search.storage import dashboard_url, shown
from llmnas.search.study import fail_reason, finished, ranked
from llmnas.space.arch import param_count_str

if TYPE_CHECKING:
    from llmnas.data import TokenData
    from llmnas.recipe import Recipe
    from llmnas.search.engine import SearchSummary
    from llmnas.space import TransformerSpace


class _Bar(tqdm):
    """tqdm with a thread lock of its own: tqdm's default lock is a multiprocessing semaphore, which a
    killed process leaves behind (Python's resource tracker then warns of a leak)."""


_Bar.set_lock(threading.RLock())


class Progress:
    """A progress bar over the study's trials with the best value of the first objective so far.

    Args:
        objective: the name of the first objective (``val_loss``, or a proxy's ``neg_synflow``), shown per trial.
    """

    def __init__(self, study: optuna.Study, total: int, enabled: bool, objective: str = "val_loss") -> None:
        done = len(finished(study))
        # In a terminal a live bar; in a log file only the one line per trial.
        self.bar = _Bar(total=total, initial=min(done, total), desc=study.study_name, unit="trial",
                        disable=not (enabled and sys.stdout.isatty()), dynamic_ncols=True, file=sys.stdout)
        self.enabled, self.objective = enabled, objective
        self._best(study)

    def _best(self, study: optuna.Study) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if done:
            best = min(done, key=lambda t: t.values[0])
            self.bar.set_postfix_str(f"best {best.values[0]:.4f} (trial {best.number})")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.enabled:
            return
        a = trial.user_attrs
        what = f"{a.get('arch_id', '?')} {param_count_str(a.get('params', 0)):>6}"
        if trial.state == TrialState.COMPLETE:
            note = f" (reused trial {a['reused_from']})" if "reused_from" in a else ""
            outcome = f"{self.objective} {trial.values[0]:.4f} in {_seconds(a)}{note}"
        elif "rejected" in a:
            outcome = "rejected: " + "; ".join(a["rejected"])
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at step {a.get('pruned_at_step', '?')}"
        else:
            outcome = f"failed: {fail_reason(study, trial) or 'see the log'}"
        retry = trial.system_attrs.get("failed_trial")
        if retry is not None:
            outcome += f" (retry of trial {retry})"
        self.note(f"trial {trial.number:>4}: {what}  {outcome}")
        self.bar.n = min(len(finished(study)), self.bar.total)  # other workers' trials count too
        self.bar.refresh()
        self._best(study)

    def note(self, line: str) -> None:
        """A line above the bar (or just a line, without a terminal)."""
        if self.enabled:
            _Bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def _seconds(attrs: dict) -> str:
    """How long the trial's evaluation took: training seconds, or the fraction of a second a proxy or a
    supernet evaluation took."""
    for key in ("proxy_seconds", "eval_seconds"):
        if key in attrs and "train_seconds" not in attrs:
            return f"{attrs[key]:.2f}s"
    return f"{attrs.get('train_seconds', 0):.0f}s"


def print_header(recipe: Recipe, space: TransformerSpace, data: TokenData, study: optuna.Study, n_trials: int,
                 workers: int, evaluator: dict | None = None) -> None:
    """The lines above the trials; ``evaluator`` is the evaluator's trial attributes (default: from scratch)."""
    m = data.meta
    budget = {k: v for k, v in dataclasses.asdict(recipe.train).items() if k.startswith("max_") and v is not None}
    e = evaluator or {"evaluator": "scratch"}
    scoring = {"scratch": f"per-trial budget {budget}",
               "proxy": f"evaluator proxy {e.get('proxy')}, no training",
               "supernet": f"evaluator supernet {e.get('supernet_path')} (weights {e.get('supernet_id')}), "
                           + (f"{e['finetune_steps']} fine-tuning steps" if e.get("finetune_steps") else "no training")
                           + (", scored on the whole validation split" if e.get("whole_split") else "")
                           + (", val_loss calibrated (search.calibration)" if e.get("calibration") else ""),
               }[e["evaluator"]]
    print(f"study {recipe.study!r}: {len(finished(study))} of {n_trials} trials done; "
          f"storage {shown(recipe.storage_url)}")
    print(f"  data: {m.source}; tokenizer {m.tokenizer} ({m.vocab_size} ids); "
          f"{m.n_train_tokens:,} train / {m.n_val_tokens:,} validation tokens")
    print(f"  space: {space.name} ({space.size():.3g} architectures, {len(space.choices())} decisions); "
          f"sampler {recipe.search.sampler}; objectives {', '.join(recipe.search.objectives)}; "
          f"{scoring}; workers {workers}")
    print(f"  watch it: optuna-dashboard {dashboard_url(recipe.storage_url)}")


def write_summary(recipe: Recipe, study: optuna.Study, summary: SearchSummary, show: bool) -> None:
    """``summary.md`` in the run folder (top-k table, Pareto front); printed with the next commands."""
    names = list(recipe.search.objectives)
    parts = [f"# Study {study.study_name}", "", f"Trials: {state_counts(study)}.", "",
             f"Top {recipe.search.top_k} by {names[0]}:", "", top_table(study, recipe.search.top_k, names[0])]
    if len(names) > 1 and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        summary.plots = pareto_plots(study, names, summary.study_dir)
        parts += ["", "Pareto front:", "", pareto_table(study, names)]
    summary.study_dir.mkdir(parents=True, exist_ok=True)
    summary.summary_path = summary.study_dir / "summary.md"
    summary.summary_path.write_text("\n".join(parts) + "\n")
    if show:
        print("\n".join(parts[2:]))
        for p in summary.plots:
            print(f"wrote {p}")
        print(f"wrote {summary.summary_path}; {summary.new_trials} new trial(s) in {summary.seconds:.0f}s")


def next_steps(study: optuna.Study, study_dir: Path, storage_url: str, retrain_command: str) -> list[str]:
    """The commands that export the best trial from here: directly when its weights were kept, else after
    retraining it (``llmnas train ... --trial best`` writes the checkpoint that ``llmnas export`` finds).

    Args:
        retrain_command: the ``llmnas train`` command line for this recipe (with the same overrides).
    """
    best = ranked(study)
    if not best:
        return []
    out = study_dir / "hf"
    if storage_url == f"sqlite:///{study_dir / 'study.db'}":
        export = f"llmnas export {shlex.quote(str(study_dir))} --trial best --out {shlex.quote(str(out))}"
    else:  # the checkpoint is not next to the storage: name it
        weights = study_dir / "retrain" / str(best[0].user_attrs.get("arch_id"))
        export = (f"llmnas export {shlex.quote(storage_url)} --study {shlex.quote(study.study_name)} --trial best "
                  f"--weights {shlex.quote(str(weights))} --out {shlex.quote(str(out))}")
    retrain = f"{retrain_command} --trial best"
    if (study_dir / "trials" / str(best[0].number) / "model.safetensors").is_file():
        return [f"export the best (trial {best[0].number}) with the weights it was scored with: {export}",
                f"or retrain it on the recipe's retrain budget first: {retrain}"]
    return [f"retrain the best (trial {best[0].number}) and export it: {retrain} && {export}"]
