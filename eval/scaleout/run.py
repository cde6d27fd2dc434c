"""Scale-out on one study: throughput of 8 workers against one, and 20 SIGKILL cycles (issue 10).

Every worker is a separate ``llmnas search RECIPE --storage URL`` process, as on separate machines. The
storage is a throw-away PostgreSQL cluster this script starts (``--storage URL`` uses an existing database
instead) or an Optuna journal file (``--backends journal``).

The trials sleep: this machine has 2 CPU cores, so 8 workers training at once would measure the CPU, not
the storage. Each trial is a real llmnas trial -- the study lock, counting, the sampler (evolution) reading
the study, the architecture's attributes, heartbeats, the parameter-count proxy as its score -- with
``--sleep`` seconds added to its evaluation, as a trial that waits for a GPU or a remote job would.

1. ``throughput``: one worker, then 8, on fresh studies. A backend's trial rate is measured on the window
   where all its workers run (from the last worker's first trial to the first worker's last), counting the
   part of each trial inside it. Target: 8 workers >= 90 % of 8 x the single-worker rate. The storage
   overhead per trial is the time a worker spends per trial beyond the sleep.
2. ``kills``: 4 workers, two of them posing as other machines (another host name: only heartbeats tell
   that they are gone); ``--cycles`` times a random worker is killed with SIGKILL mid-trial and replaced at
   once (a killed "machine" by a new one). A trial whose architecture has already lost ``MAX_RETRIES``
   workers is not a target (llmnas gives such a trial up, as it should for an architecture that kills its
   machine; these kills have nothing to do with the architecture). The study must end with exactly
   ``--kill-trials`` complete trials, every killed trial failed with its reason and retried, and every
   trial completed before a kill unchanged.

Prints a Markdown table and writes ``eval/scaleout/results/scaleout.{json,md}``.

    python eval/scaleout/run.py                  # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from llmnas.search import load_study  # noqa: E402
from llmnas.search.storage import MAX_RETRIES  # noqa: E402


def _faults_check():
    """``check`` of the fault benchmark (``eval/faults/run.py``): the same accounting of killed trials."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_faults_run", REPO / "eval" / "faults" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check


check = _faults_check()

SPACE = """\
name: scaleout
vocab_size: 65
max_seq_len: 32
d_model: [32, 48, 64]
n_layers: [1, 2]
pos: [rope, learned]
layer:
  n_heads: [2, 4]
  attention: [full, sliding]
  window: [8]
  activation: [gelu, swiglu]
  ffn_mult: [2, 4]
"""


# ---------------------------------------------------------------------- the worker
def worker_main(argv: list[str]) -> int:
    """``run.py worker SLEEP HOST llmnas-args...``: ``llmnas search`` whose evaluation sleeps ``SLEEP`` s first,
    on a machine named ``HOST`` (``-``: this one)."""
    sleep, host, args = float(argv[0]), argv[1], argv[2:]
    if host != "-":
        socket.gethostname = lambda: host
    import llmnas.search.engine as engine
    from llmnas.cli import main

    make_evaluator = engine.make_evaluator

    def sleeping(*a, **k):
        evaluator = make_evaluator(*a, **k)
        evaluate = evaluator.evaluate

        def slow(trial, arch):
            time.sleep(sleep)
            return evaluate(trial, arch)

        evaluator.evaluate = slow
        return evaluator

    engine.make_evaluator = sleeping
    return main(args)


def start_worker(recipe: Path, storage: str, sleep: float, n_trials: int, host: str = "-") -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", str(sleep), host, "search", str(recipe),
           "--storage", storage, "--n-trials", str(n_trials), "--quiet"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def write_recipe(folder: Path, study: str, data: Path, heartbeat: int, grace: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(SPACE)
    raw = {"study": study, "space": str(folder / "space.yaml"), "run_dir": str(folder / "runs"),
           "data": {"source": str(data), "tokenizer": "char", "block_size": 32, "max_bytes": 60_000,
                    "cache_dir": str(folder / "cache")},
           "train": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1},
           "search": {"sampler": "evolution", "seed": 0, "evaluator": "proxy", "proxy": "params",
                      "objectives": ["neg_params"], "heartbeat_seconds": heartbeat, "grace_seconds": grace}}
    path = folder / f"{study}.yaml"
    path.write_text(yaml.safe_dump(raw))
    from llmnas.data import prepare_data
    from llmnas.recipe import recipe_from_dict

    prepare_data(recipe_from_dict(raw).data)  # tokenised once: the workers start together
    return path


def finish(procs: list[subprocess.Popen], timeout: float = 1800) -> list[int]:
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            print(f"worker {p.pid} exited {p.returncode}: {err[-2000:]}", file=sys.stderr)
        codes.append(p.returncode)
    return codes


# ---------------------------------------------------------------------- throughput
def _seconds(t: datetime) -> float:
    return t.timestamp()


def rate(trials: list[optuna.trial.FrozenTrial]) -> dict:
    """Trials per second on the window where every worker runs, and the time per trial beyond the sleep."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    by_worker: dict[str, list] = {}
    for t in done:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    begin = max(min(_seconds(t.datetime_start) for t in ts) for ts in by_worker.values())
    end = min(max(_seconds(t.datetime_complete) for t in ts) for ts in by_worker.values())
    inside = 0.0
    for t in done:
        s, e = _seconds(t.datetime_start), _seconds(t.datetime_complete)
        inside += max(0.0, min(e, end) - max(s, begin)) / max(e - s, 1e-9)
    window = end - begin
    return {"workers": len(by_worker), "trials": len(done), "window_s": round(window, 2),
            "trials_in_window": round(inside, 2), "trials_per_s": inside / window if window > 0 else float("nan"),
            "seconds_per_trial_per_worker": window * len(by_worker) / inside if inside else float("nan")}


def throughput(args: argparse.Namespace, storage_for, data: Path, root: Path) -> dict:
    results = {}
    for workers in (1, args.workers):
        study = f"throughput{workers}"
        recipe = write_recipe(root / study, study, data, heartbeat=args.heartbeat, grace=args.grace)
        storage = storage_for(study)
        n = args.trials_per_worker * workers
        started = time.perf_counter()
        codes = finish([start_worker(recipe, storage, args.sleep, n) for _ in range(workers)])
        r = rate(load_study(storage, study).trials)
        r.update(exit_codes=codes, seconds=round(time.perf_counter() - started, 1),
                 overhead_s_per_trial=r["seconds_per_trial_per_worker"] - args.sleep)
        results[str(workers)] = r
        print(f"throughput, {workers} worker(s):", json.dumps(r), flush=True)
    single, many = results["1"], results[str(args.workers)]
    results["ratio_to_ideal"] = many["trials_per_s"] / (args.workers * single["trials_per_s"])
    return results


# ---------------------------------------------------------------------- kills
_OPEN: dict[str, optuna.Study] = {}


def trials_of(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials now (opened once: opening a storage costs more than reading it)."""
    try:
        if storage not in _OPEN:
            _OPEN[storage] = load_study(storage, study)
        return _OPEN[storage].get_trials()
    except Exception:  # noqa: BLE001 - not created yet
        return []


def kills(args: argparse.Namespace, storage_for, data: Path, root: Path, rng: random.Random) -> dict:
    study = "kills"
    recipe = write_recipe(root / study, study, data, heartbeat=1, grace=args.kill_grace)
    storage = storage_for(study)
    machines = iter(range(1000))
    hosts = ["-", "-", f"machine-{next(machines)}", f"machine-{next(machines)}"]
    procs = [start_worker(recipe, storage, args.sleep, args.kill_trials, h) for h in hosts]
    killed, completed, by_heartbeat_host = [], {}, []
    started = time.perf_counter()
    attempts = 0
    while len(killed) < args.cycles and attempts < 3 * args.cycles:
        attempts += 1
        deadline, target = time.monotonic() + 300, None
        while target is None and time.monotonic() < deadline:
            trials = trials_of(storage, study)
            alive = [i for i, p in enumerate(procs) if p.poll() is None]
            if not alive:
                break
            # Not a trial whose architecture has lost MAX_RETRIES workers already: llmnas gives such a trial
            # up (rightly, for an architecture that kills its machine); these kills are independent of it.
            running = {i: t for i in alive for t in trials if t.state == TrialState.RUNNING
                       and f":{procs[i].pid}:" in t.user_attrs.get("worker", "")
                       and len(t.system_attrs.get("retry_history", [])) < MAX_RETRIES}
            if running:
                target = rng.choice(sorted(running))
                trial = running[target]
            else:
                time.sleep(0.2)
        if target is None:
            break
        # a random moment of the trial's sleep, counted from its start
        kill_at = trial.datetime_start.timestamp() + rng.uniform(0.3, args.sleep * 0.9)
        time.sleep(max(0.0, kill_at - time.time()))
        now = trials_of(storage, study)
        completed.update({t.number: t.values for t in now if t.state == TrialState.COMPLETE})
        if next(t for t in now if t.number == trial.number).state != TrialState.RUNNING:
            continue  # it finished meanwhile: another try
        os.killpg(procs[target].pid, signal.SIGKILL)
        procs[target].communicate()
        killed.append(trial.number)
        if hosts[target] != "-":
            by_heartbeat_host.append(trial.number)
            hosts[target] = f"machine-{next(machines)}"  # a new machine replaces the lost one
        procs[target] = start_worker(recipe, storage, args.sleep, args.kill_trials, hosts[target])
    codes = finish(procs)
    result = check(storage, study, args.kill_trials, completed, killed)
    result.update(exit_codes=codes, seconds=round(time.perf_counter() - started, 1),
                  killed_on_other_machines=len(by_heartbeat_host))
    print("kills:", json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="postgres", help="postgres, journal, or both (comma-separated)")
    p.add_argument("--scenarios", default="throughput,kills")
    p.add_argument("--storage", help="an existing empty PostgreSQL database (default: a throw-away cluster)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--sleep", type=float, default=3.0, help="seconds each trial sleeps")
    p.add_argument("--trials-per-worker", type=int, default=15)
    p.add_argument("--heartbeat", type=int, default=30, help="heartbeat interval of the throughput runs")
    p.add_argument("--grace", type=int, default=120)
    p.add_argument("--cycles", type=int, default=20, help="SIGKILL cycles")
    p.add_argument("--kill-trials", type=int, default=60)
    p.add_argument("--kill-grace", type=int, default=5, help="heartbeat grace period of the kill runs (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="llmnas-scaleout-"))
    results: dict = {}
    for backend in args.backends.split(","):
        server = None
        if backend == "postgres" and args.storage is None:
            from tests.search.pg_server import start_server

            server = start_server()
        try:
            def storage_for(study: str, backend=backend, server=server) -> str:
                if backend == "journal":
                    return f"journal:///{root / study / 'study.log'}"
                return server.create_database(study) if server is not None else args.storage

            for scenario in args.scenarios.split(","):
                fn = throughput if scenario == "throughput" else kills
                extra = () if scenario == "throughput" else (rng,)
                results.setdefault(backend, {})[scenario] = fn(args, storage_for, args.data, root / backend, *extra)
        finally:
            if server is not None:
                server.stop("immediate")
                shutil.rmtree(server.root, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    write(results, args)
    ok = all(r.get("kills", {}).get("exact", True) for r in results.values())
    return 0 if ok else 1


def write(results: dict, args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "scaleout.json"
    if path.exists():  # backends or scenarios run separately keep the others' latest results
        old = json.loads(path.read_text())["results"]
        for backend, scenarios in results.items():
            old.setdefault(backend, {}).update(scenarios)
        results = old
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "optuna": optuna.__version__}
    settings = {k: getattr(args, k) for k in ("workers", "sleep", "trials_per_worker", "heartbeat", "grace",
                                              "cycles", "kill_trials", "kill_grace", "seed")}
    path.write_text(json.dumps({"machine": machine, "settings": settings, "results": results}, indent=2) + "\n")
    lines = [f"| backend | workers | trials | trial rate (1/s) | vs {args.workers} x single | "
             "storage overhead per trial (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for backend, r in results.items():
        if "throughput" not in r:
            continue
        t = r["throughput"]
        for key in sorted(k for k in t if k.isdigit()):
            x = t[key]
            ratio = f"{t['ratio_to_ideal']:.1%}" if key != "1" else ""
            lines.append(f"| {backend} | {x['workers']} | {x['trials']} | {x['trials_per_s']:.3f} | {ratio} | "
                         f"{x['overhead_s_per_trial']:.3f} |")
    lines += ["", "| backend | kills | on other machines | killed trials failed with their reason | by heartbeat | "
              f"retried | given up after {MAX_RETRIES} retries | completed before a kill, unchanged | "
              "finished / requested | exact | architectures trained twice | s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for backend, r in results.items():
        if "kills" not in r:
            continue
        k = r["kills"]
        lines.append(f"| {backend} | {k['kills']} | {k['killed_on_other_machines']} | "
                     f"{k['killed_failed_with_reason']} | {k['killed_failed_by_heartbeat']} | {k['killed_retried']} | "
                     f"{k['killed_given_up_after_retries']} | {k['completed_before_kills_unchanged']} / "
                     f"{k['completed_before_kills']} | {k['finished']} / {k['n_trials']} | "
                     f"{'yes' if k['exact'] else 'NO'} | {k['architectures_trained_twice']} | {k['seconds']:.0f} |")
    text = "\n".join(lines) + (
        f"\n\nTrials sleep {args.sleep:g} s (the machine has {machine['cpus']} CPU cores: trials that trained would "
        "measure the CPU) and are scored by the parameter-count proxy; every worker is a separate `llmnas search` "
        f"process; kills at a random moment of a running trial; machine: {machine['processor']}, "
        f"{machine['cpus']} CPUs, Optuna {machine['optuna']}.\n")
    (args.out / "scaleout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
