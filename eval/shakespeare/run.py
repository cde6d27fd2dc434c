"""Beat a hand-designed baseline at equal budget: nanoGPT's CPU "baby GPT" on tiny-shakespeare.

1. baseline: nanoGPT's baby GPT (4 layers, 4 heads, width 128, learned positions, LayerNorm, GELU MLP
   4x, no bias, 0.80M parameters) trained with the ``shakespeare_char`` recipe (block 64, batch 12,
   2000 iterations, lr 1e-3 cosine to 1e-4, warm-up 100) over several seeds; validation loss on the
   whole validation split, and ms per iteration.
2. search: a study over ``search_spaces/tiny_char.yaml`` capped at the baseline's parameter count,
   each trial trained on a shorter budget.
3. retrain: the 3 best distinct architectures of the study, on the full budget, over the same seeds.

Prints a table and writes ``eval/shakespeare/results/shakespeare.{json,md}``.

    python eval/shakespeare/run.py                      # everything (~30-40 minutes on 2 CPU cores)
    python eval/shakespeare/run.py --stages baseline    # only the reproduction of nanoGPT
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from llmnas.data import prepare_data
from llmnas.recipe import load_recipe
from llmnas.search import load_study, run_search, trial_arch
from llmnas.search.study import ranked
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN
from llmnas.train import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
NANOGPT_LOSS = 1.92  # nanoGPT's own code rerun on this kind of machine, 200-batch validation average
NANOGPT_MS = 32.0  # its time per iteration here
SEEDS = (1337, 1338, 1339)


def baby_gpt(vocab: int = 65, block: int = 64) -> Architecture:
    block_spec = BlockSpec(AttentionSpec(n_heads=4, n_kv_heads=4, head_dim=32), DenseFFN(4 * 128, "gelu"))
    return Architecture(vocab_size=vocab, d_model=128, max_seq_len=block, blocks=(block_spec,) * 4,
                        norm="layernorm", pos="learned", tie_embeddings=True)


def train_seeds(arch: Architecture, recipe, data, seeds) -> list[dict]:
    runs = []
    for seed in seeds:
        _, r = train(arch, data, recipe.train.replace(seed=seed), Accelerator(cpu=True))
        runs.append({"seed": seed, "val_loss": r.val_loss, "ms_per_step": 1e3 * r.train_seconds / r.steps,
                     "steps": r.steps, "tokens": r.tokens})
        print(f"  {arch.id} seed {seed}: val_loss {r.val_loss:.4f}, {runs[-1]['ms_per_step']:.1f} ms/step", flush=True)
    return runs


def stats(runs: list[dict]) -> tuple[float, float]:
    losses = [r["val_loss"] for r in runs]
    return statistics.mean(losses), statistics.stdev(losses) if len(losses) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="baseline,search,retrain")
    p.add_argument("--data", type=Path, default=DATA, help="tiny-shakespeare input.txt")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n-trials", type=int, default=40)
    p.add_argument("--trial-steps", type=int, default=600, help="optimizer steps per search trial")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--study", default="bench_shakespeare")
    p.add_argument("--run-dir", default=str(REPO / "runs"))
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    stages = set(args.stages.split(","))
    seeds = SEEDS[: args.seeds]
    recipe = load_recipe("shakespeare_char", [f"data.source={args.data}", f"study={args.study}",
                                             f"run_dir={args.run_dir}"])
    data = prepare_data(recipe.data)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "shakespeare.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    results["machine"] = {"processor": platform.processor() or platform.machine(), "torch_threads":
                          torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    baseline = baby_gpt(data.vocab_size, recipe.data.block_size)
    cap = baseline.param_counts().total

    if "baseline" in stages:
        print(f"baseline: nanoGPT baby GPT, {cap:,} parameters ({cap - 64 * 128:,} without the position table)")
        results["baseline"] = {"arch": json.loads(baseline.to_json()), "params": cap,
                               "runs": train_seeds(baseline, recipe, data, seeds)}
        result_path.write_text(json.dumps(results, indent=2) + "\n")

    if "search" in stages:
        search_recipe = load_recipe("shakespeare_char", [
            f"data.source={args.data}", f"study={args.study}", f"run_dir={args.run_dir}",
            f"train.max_steps={args.trial_steps}", "train.lr_decay_steps=null",
            f"search.constraints.max_params={cap}", f"search.n_trials={args.n_trials}", "search.pruner.kind=none",
        ])
        started = time.perf_counter()
        summary = run_search(search_recipe, show_progress=True)
        study = summary.study
        trial_seconds = sum(t.user_attrs.get("train_seconds", 0) for t in study.trials)
        results["search"] = {
            "study": args.study, "n_trials": len(study.trials), "trial_steps": args.trial_steps,
            "wall_seconds_this_run": time.perf_counter() - started,
            "wall_seconds_study": sum((t.duration.total_seconds() if t.duration else 0) for t in study.trials),
            "train_seconds": trial_seconds, "sampler": search_recipe.search.sampler, "cap": cap,
        }
        result_path.write_text(json.dumps(results, indent=2) + "\n")

    if "retrain" in stages:
        study = load_study(Path(args.run_dir) / args.study)
        picked, seen = [], set()
        for t in ranked(study):
            if t.user_attrs["arch_id"] not in seen:
                seen.add(t.user_attrs["arch_id"])
                picked.append(t)
            if len(picked) == args.top:
                break
        results["retrain"] = []
        for t in picked:
            arch = trial_arch(t)
            print(f"retrain trial {t.number} ({arch.short()}), search loss {t.values[0]:.4f}")
            results["retrain"].append({"trial": t.number, "arch": json.loads(arch.to_json()), "arch_id": arch.id,
                                       "short": arch.short(), "params": arch.param_counts().total,
                                       "search_loss": t.values[0], "runs": train_seeds(arch, recipe, data, seeds)})
            result_path.write_text(json.dumps(results, indent=2) + "\n")

    write_table(results, args.out)
    return 0


def write_table(results: dict, out: Path) -> None:
    if "baseline" not in results:
        return
    base_mean, base_std = stats(results["baseline"]["runs"])
    base_ms = statistics.mean(r["ms_per_step"] for r in results["baseline"]["runs"])
    lines = [
        "| model | params | val loss (mean ± std) | vs baseline | ms/step |",
        "|---|---:|---:|---:|---:|",
        f"| nanoGPT baby GPT, nanoGPT's own code (reference) | 0.80M | {NANOGPT_LOSS:.2f} | | {NANOGPT_MS:.0f} |",
        f"| baby GPT, llmnas loop | {results['baseline']['params'] / 1e6:.3f}M | {base_mean:.4f} ± {base_std:.4f} | "
        f"0 | {base_ms:.1f} |",
    ]
    for r in results.get("retrain", []):
        mean, std = stats(r["runs"])
        ms = statistics.mean(x["ms_per_step"] for x in r["runs"])
        lines.append(f"| trial {r['trial']}: `{r['short']}` | {r['params'] / 1e6:.3f}M | {mean:.4f} ± {std:.4f} | "
                     f"{mean - base_mean:+.4f} | {ms:.1f} |")
    s = results.get("search")
    notes = [f"Seeds {', '.join(str(r['seed']) for r in results['baseline']['runs'])}; validation loss in nats/char "
             "on the whole 111,540-character validation split."]
    if s:
        notes.append(f"Search: {s['n_trials']} trials of {s['trial_steps']} steps ({s['sampler']}), parameter cap "
                     f"{s['cap']:,}; total search time {s['wall_seconds_study'] / 60:.1f} min "
                     f"({s['train_seconds'] / 60:.1f} min of training).")
    m = results["machine"]
    notes.append(f"Machine: {m['processor']}, {m['torch_threads']} torch threads, torch {m['torch']}.")
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    (out / "shakespeare.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
