"""Killed workers cost nothing: SIGKILL ``llmnas search`` processes mid-trial and count what is lost.

Three scenarios on the quick-start recipe (stdlib corpus, a few seconds per trial), each on a fresh
SQLite study under ``--run-dir``:

1. ``restart``: one ``llmnas search`` process, killed with SIGKILL mid-trial and restarted at once,
   ``--cycles`` times (each restart completes a trial before the next kill); then it runs to the end.
2. ``workers``: ``llmnas search --workers 2``; the second worker process is killed mid-trial
   ``--cycles`` times (the parent goes on); a restart after the last kill.
3. ``concurrent``: two ``llmnas search`` processes started together on a study that does not exist yet.

Each scenario checks that the study ends with exactly ``--n-trials`` finished trials (a lost trial's
retry counting in its place), that every trial completed before a kill is unchanged, and that every
killed trial is failed with its reason and queued again. Prints a table and writes
``eval/faults/results/faults.{json,md}``.

    python eval/faults/run.py                    # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from llmnas.search import load_study
from llmnas.search.storage import MAX_RETRIES
from llmnas.search.study import counted, fail_reason

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def search(recipe_args: list[str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmnas", "search", *recipe_args, "--quiet", *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def trials_of(db: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return load_study(db, study).trials
    except Exception:  # noqa: BLE001 - not created yet, or being written
        return []


def wait_running(db: Path, study: str, worker_pid: int | None, deadline: float) -> optuna.trial.FrozenTrial | None:
    """A running trial (of the process ``worker_pid`` when given) that has trained for a moment."""
    while time.monotonic() < deadline:
        for t in trials_of(db, study):
            worker = t.user_attrs.get("worker", "")
            if t.state == TrialState.RUNNING and (worker_pid is None or f":{worker_pid}:" in worker):
                return t
        time.sleep(0.3)
    return None


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def check(location: str | Path, study: str, n_trials: int, completed_before: dict[int, list[float]],
          killed: list[int]) -> dict:
    """What became of the killed trials and of the study (a study folder, ``study.db`` or storage URL); also
    the benchmark of many workers on one PostgreSQL study or journal file (``eval/scaleout/run.py``) uses it."""
    s = load_study(location, study)
    by_number = {t.number: t for t in s.trials}
    failed_with_reason = retried = given_up = heartbeat = 0
    for n in killed:
        t = by_number.get(n)
        reason = fail_reason(s, t) if t is not None else None
        if t is None or t.state != TrialState.FAIL or not reason:
            continue
        failed_with_reason += 1
        heartbeat += "heartbeats" in reason
        if any(n in r.system_attrs.get("retry_history", []) for r in s.trials):
            retried += 1
        elif len(t.system_attrs.get("retry_history", [])) >= MAX_RETRIES:
            given_up += 1  # its architecture was lost MAX_RETRIES + 1 times: it stays failed
    counts = counted(s)
    trained = [t for t in s.trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    return {
        "n_trials": n_trials,
        "finished": sum(t.state.is_finished() for t in counts),
        "complete": sum(t.state == TrialState.COMPLETE for t in counts),
        "all_trials": len(s.trials),
        "kills": len(killed),
        "killed_failed_with_reason": failed_with_reason,
        "killed_failed_by_heartbeat": heartbeat,
        "killed_retried": retried,
        "killed_given_up_after_retries": given_up,
        "completed_before_kills": len(completed_before),
        "completed_before_kills_unchanged": sum(by_number[n].values == v for n, v in completed_before.items()),
        "architectures_trained_twice": len(trained) - len({t.user_attrs["arch_id"] for t in trained}),
        "exact": len(counts) == n_trials and all(t.state.is_finished() for t in counts),
    }

def restart(args: argparse.Namespace, recipe: list[str], db: Path, rng: random.Random) -> dict:
    killed, completed = [], {}
    proc = search(recipe)
    for _ in range(args.cycles):
        # let the restarted process finish one more trial (the retry of the last lost one comes first)
        done = sum(t.state == TrialState.COMPLETE for t in trials_of(db, args.study))
        deadline = time.monotonic() + 300
        while sum(t.state == TrialState.COMPLETE for t in trials_of(db, args.study)) <= done:
            if time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.3)
        trial = wait_running(db, args.study, proc.pid, time.monotonic() + 300)
        if trial is None:
            break
        time.sleep(rng.uniform(0.5, args.seconds))
        for t in trials_of(db, args.study):
            if t.state == TrialState.COMPLETE:
                completed[t.number] = t.values
        running = [t.number for t in trials_of(db, args.study) if t.state == TrialState.RUNNING]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        killed += running
        proc = search(recipe)  # at once: no waiting for a heartbeat grace period
    proc.communicate(timeout=1800)
    return check(db, args.study, args.n_trials, completed, killed)


def workers(args: argparse.Namespace, recipe: list[str], db: Path, rng: random.Random) -> dict:
    """Each cycle resumes the study with ``--workers 2`` and a higher target, and kills the second worker
    process mid-trial; the parent must report it and finish the target with the lost trial retried."""
    killed, completed, reported = [], {}, 0
    per_cycle = max(4, args.n_trials // args.cycles)
    for cycle in range(args.cycles):
        target = per_cycle * (cycle + 1)
        proc = search([*recipe[:-1], str(target)], "--workers", "2")
        trial = None
        deadline = time.monotonic() + 300
        while trial is None and time.monotonic() < deadline and proc.poll() is None:
            for kid in child_pids(proc.pid):
                trial = wait_running(db, args.study, kid, time.monotonic() + 1)
                if trial is not None:
                    break
        if trial is not None:
            time.sleep(rng.uniform(0.5, args.seconds))
            for t in trials_of(db, args.study):
                if t.state == TrialState.COMPLETE:
                    completed[t.number] = t.values
            os.kill(int(trial.user_attrs["worker"].split(":")[1]), signal.SIGKILL)
            killed.append(trial.number)
        out, err = proc.communicate(timeout=1800)
        reported += (out + err).count("was killed by SIGKILL")
    result = check(db, args.study, per_cycle * args.cycles, completed, killed)
    result["deaths_reported"] = reported
    return result


def concurrent(args: argparse.Namespace, recipe: list[str], db: Path, rng: random.Random) -> dict:
    procs = [search(recipe) for _ in range(2)]
    codes = [p.wait(timeout=1800) for p in procs]
    result = check(db, args.study, args.n_trials, {}, [])
    result["exit_codes"] = codes
    result["processes_that_trained"] = len({t.user_attrs.get("worker") for t in load_study(db, args.study).trials})
    return result


SCENARIOS = {"restart": restart, "workers": workers, "concurrent": concurrent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", default="restart,workers,concurrent")
    p.add_argument("--cycles", type=int, default=5, help="kills per scenario")
    p.add_argument("--n-trials", type=int, default=12)
    p.add_argument("--seconds", type=float, default=4.0, help="training seconds per trial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, default=REPO / "runs" / "faults")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    args.study = "faults"
    rng = random.Random(args.seed)
    results = {}
    for name in args.scenarios.split(","):
        run_dir = args.run_dir / name
        shutil.rmtree(run_dir, ignore_errors=True)
        recipe = ["quickstart", "--set", f"run_dir={run_dir}", "--set", f"study={args.study}",
                  "--set", f"train.max_seconds={args.seconds}", "--set", "train.eval_interval=null",
                  "--set", "search.pruner.kind=none", "--n-trials", str(args.n_trials)]
        started = time.perf_counter()
        results[name] = SCENARIOS[name](args, recipe, run_dir / args.study / "study.db", rng)
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        results[name]["settings"] = {"cycles": args.cycles, "seconds_per_trial": args.seconds, "seed": args.seed}
        print(name, json.dumps(results[name]), flush=True)
    write(results, args)
    return 0 if all(r["exact"] and r["completed_before_kills"] == r["completed_before_kills_unchanged"]
                    for r in results.values()) else 1


def write(results: dict, args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "faults.json"
    if path.exists():  # scenarios run separately keep the others' latest results
        results = {**json.loads(path.read_text())["results"], **results}
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "optuna": optuna.__version__}
    path.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = ["| scenario | kills | killed trials failed with their reason | retried | given up after "
             f"{MAX_RETRIES} retries | completed before a kill, unchanged | finished / requested | exact | "
             "all trials in the study | s |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['kills']} | {r['killed_failed_with_reason']} | {r['killed_retried']} | "
                     f"{r['killed_given_up_after_retries']} | "
                     f"{r['completed_before_kills_unchanged']} / {r['completed_before_kills']} | "
                     f"{r['finished']} / {r['n_trials']} | {'yes' if r['exact'] else 'NO'} | {r['all_trials']} | "
                     f"{r['seconds']:.0f} |")
    text = "\n".join(lines) + (f"\n\nQuick-start recipe, {args.seconds:g} s of training per trial, kills at a random "
                               f"moment of a running trial; machine: {machine['processor']}, {machine['cpus']} CPUs.\n")
    (args.out / "faults.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
