"""The supernet against from-scratch training on tiny-shakespeare: ranking fidelity, cost and quality, speed.

Stages (each writes into ``eval/supernet/results/supernet.json``; a rerun skips what is there):

1. ``supernet``: train the ``supernet_shakespeare`` recipe's supernet (tiny_char under nanoGPT's baby-GPT
   cap of 804,096 parameters, 6,000 sandwich steps of 4 subnets on the first 90 % of nanoGPT's training
   split: the same 24,000 subnet-steps of 12 x 64 tokens as the 40 x 600-step from-scratch search).
2. ``scratch``: 30 architectures of the capped space, chosen before anything is trained (a fixed seed's
   sample sorted by parameters, taken at evenly spaced ranks so they span the range), each trained from
   scratch for 600 steps as a search trial is, and scored on the holdout (last 10 % of the training split).
3. ``fidelity``: the same 30 scored with inherited weights (whole holdout) and by each zero-cost proxy;
   Kendall tau and Spearman rho against the from-scratch losses; a scatter plot.
4. ``search``: ``llmnas search supernet_shakespeare`` (evolution, 1,000 trials scored by the supernet).
5. ``retrain``: its 3 best distinct architectures retrained from scratch (2,000 steps, whole training split)
   over 3 seeds, reported on nanoGPT's validation split beside the from-scratch search's winners
   (``eval/shakespeare/results/shakespeare.json``).
6. ``speed``: a sandwich step (4 subnets) against one step of the largest subnet as a standalone Decoder, and
   scoring a subnet through the supernet against the standalone model (median of repeats).

    python eval/supernet/run.py                                   # everything (about an hour on 2 cores)
    python eval/supernet/run.py --stages scratch --threads 1      # one stage (stages 1 and 2 may run at once)

Ablation (uniform sampling, no largest/smallest; the from-scratch truth read from the main results):

    python eval/supernet/run.py --stages supernet,fidelity --threads 1 --out eval/supernet/results/uniform \
        --truth eval/supernet/results --set supernet.largest=false --set supernet.smallest=false \
        --set supernet.random_subnets=4 --set supernet.out=runs/supernet_shakespeare/supernet_uniform

A disjoint tuning set of architectures (then ``--stages fidelity`` with the same ``--arch-seed`` and ``--out``):

    python eval/supernet/run.py --stages scratch --threads 1 --arch-seed 777 --out eval/supernet/results/tuning
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from scipy import stats as sps

from llmnas.data import prepare_data
from llmnas.recipe import load_recipe
from llmnas.search.engine import prepare_space
from llmnas.space.arch import Architecture
from llmnas.train import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _shakespeare_protocol():
    """The tiny-shakespeare benchmark's own training-over-seeds function (one protocol for both tables)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shakespeare_run", REPO / "eval" / "shakespeare" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.train_seeds

DATA = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
RECIPE = "supernet_shakespeare"
N_ARCHS, ARCH_SEED, POOL = 30, 12345, 3000
N_ARCHS = int(__import__('os').environ.get('SUPERNET_BENCH_ARCHS', N_ARCHS))
PROXIES = ("params", "non_embedding_params", "synflow", "grad_norm")


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save(results: dict, path: Path) -> None:
    """Write the keys this stage produces (and the machine) to the stage's own file: stages run in parallel
    processes never overwrite each other's results with stale copies."""
    keys = (STAGE, "machine")
    path.write_text(json.dumps({k: results[k] for k in keys if k in results}, indent=1) + "\n")


def fidelity_archs(space) -> list[Architecture]:
    """``N_ARCHS`` architectures spread over the capped space's parameter range (fixed before training)."""
    rng = np.random.default_rng(ARCH_SEED)
    pool = {a.id: a for a in (space.sample(rng) for _ in range(POOL))}
    ordered = sorted(pool.values(), key=lambda a: (a.param_counts().total, a.id))
    picks = np.linspace(0, len(ordered) - 1, N_ARCHS).round().astype(int)
    return [ordered[i] for i in picks]


def rank_stats(truth: list[float], predicted: list[float]) -> dict:
    """Kendall tau-b and Spearman rho of ``predicted`` (lower = better) against the true losses."""
    tau = sps.kendalltau(truth, predicted)
    rho = sps.spearmanr(truth, predicted)
    return {"kendall_tau": float(tau.statistic), "spearman_rho": float(rho.statistic)}


def stage_supernet(recipe, results: dict) -> None:
    from llmnas.cli.supernet import supernet_dir
    from llmnas.supernet.train import train_supernet
    from llmnas.train import make_accelerator

    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    acc = make_accelerator(recipe.supernet_train)
    t0 = time.perf_counter()
    run = train_supernet(space, data, recipe.supernet, recipe.supernet_train, acc, supernet_dir(recipe))
    results["supernet"] = {"path": str(run.path), "steps": run.steps, "subnet_tokens": run.tokens,
                           "train_seconds": run.train_seconds, "wall_seconds": time.perf_counter() - t0,
                           "scores": run.scores, "losses": run.losses}


def stage_scratch(recipe, results: dict, steps: int, key: str = "scratch", seed: int | None = None) -> None:
    """Train the fidelity architectures from scratch for ``steps`` (the schedule decaying over them); with
    ``seed``, another initialisation and order of training windows (the truth's own repeatability)."""
    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    cfg = recipe.train.replace(max_steps=steps, lr_decay_steps=None, eval_interval=None,
                               seed=recipe.train.seed if seed is None else seed)
    done = {r["arch_id"]: r for r in results.get(key, [])}
    for i, arch in enumerate(fidelity_archs(space)):
        if arch.id in done:
            continue
        model, r = train(arch, data, cfg, Accelerator(cpu=True))
        done[arch.id] = {"arch_id": arch.id, "arch": json.loads(arch.to_json()), "short": arch.short(),
                         "params": arch.param_counts().total, "val_loss": r.val_loss,
                         "train_seconds": r.train_seconds, "eval_seconds": r.eval_seconds, "steps": r.steps}
        print(f"{key} {i + 1}/{N_ARCHS} {arch.id} {arch.param_counts().total:,} params: {r.val_loss:.4f} "
              f"({r.train_seconds:.0f}s)", flush=True)
        results[key] = list(done.values())
        save(results, OUT_JSON)


def stage_fidelity(recipe, results: dict, out: Path) -> None:
    from llmnas.cli.supernet import supernet_dir
    from llmnas.proxies import PROXIES as REGISTRY
    from llmnas.proxies import data_batch, score
    from llmnas.supernet import evaluate_subnet, load_supernet

    data = prepare_data(recipe.data)
    ckpt = load_supernet(supernet_dir(recipe))
    rows = [{"arch_id": r["arch_id"], "arch": r["arch"], "params": r["params"], "val_loss": r["val_loss"]}
            for r in results["scratch"]]
    acc = Accelerator(cpu=True)
    batch = data_batch(data.train, recipe.data.block_size, recipe.train.batch_size, seed=0)
    for row in rows:
        arch = Architecture.from_json(json.dumps(row["arch"]))
        t0 = time.perf_counter()
        row["supernet"] = evaluate_subnet(ckpt.net, arch, data, recipe.train, acc, whole_split=True).val_loss
        row["supernet_seconds"] = time.perf_counter() - t0
        row["supernet_quick"] = evaluate_subnet(ckpt.net, arch, data, recipe.train, acc).val_loss
        for name in PROXIES:
            needs = REGISTRY[name].needs_data
            row[name] = score(name, arch, batch if needs else None, seed=0)
    truth = [r["val_loss"] for r in rows]
    table = {"supernet (whole holdout)": rank_stats(truth, [r["supernet"] for r in rows]),
             "supernet (200 windows, as searched)": rank_stats(truth, [r["supernet_quick"] for r in rows])}
    for name in PROXIES:
        sign = -1.0 if REGISTRY[name].direction == "maximize" else 1.0  # a larger score predicts a lower loss
        table[name] = rank_stats(truth, [sign * r[name] for r in rows])
    results["fidelity"] = {"checkpoint": str(ckpt.path), "checkpoint_id": ckpt.id, "n": len(rows), "table": table,
                           "rows": rows}
    plot_fidelity(rows, table, out / "fidelity.png")


def finetune_configs(steps: str, lrs: str) -> list[tuple[int, float]]:
    return [(int(k), float(lr)) for k in steps.split(",") for lr in lrs.split(",")]


def stage_finetune(recipe, results: dict, configs: list[tuple[int, float]], out: Path) -> None:
    """Each fidelity architecture scored after ``k`` steps of fine-tuning from its inherited weights (a fresh
    AdamW, warm-up then cosine to lr/10 over the ``k`` steps), and, as the control at equal cost, after ``k``
    steps from scratch on the same schedule shape with the recipe's lr; Kendall tau / Spearman rho of each
    against the 600-step truth. ``--truth`` names the truth's folder for ablation checkpoints."""
    from llmnas.cli.supernet import supernet_dir
    from llmnas.supernet import load_supernet
    from llmnas.supernet.evaluate import finetune_config

    data = prepare_data(recipe.data)
    ckpt = load_supernet(supernet_dir(recipe))
    archs = {r["arch_id"]: Architecture.from_json(json.dumps(r["arch"])) for r in results["scratch"]}
    truth = {r["arch_id"]: r["val_loss"] for r in results["scratch"]}
    done = results.setdefault("finetune", {"checkpoint": str(ckpt.path), "checkpoint_id": ckpt.id, "runs": {}})
    runs = done["runs"]
    for k, lr in [*configs, *dict.fromkeys((k, None) for k, _ in configs)]:  # None: the from-scratch control
        name = f"scratch {k} steps" if lr is None else f"supernet + {k} steps at lr {lr:g}"
        rows = runs.setdefault(name, {})
        for arch_id, arch in archs.items():
            if arch_id in rows:
                continue
            cfg = finetune_config(recipe.train, k, lr)  # the control: the same schedule at the recipe's lr
            model = None if lr is None else ckpt.net.extract(arch)
            _, r = train(arch, data, cfg, Accelerator(cpu=True), model=model)
            rows[arch_id] = {"val_loss": r.val_loss, "train_seconds": r.train_seconds, "eval_seconds": r.eval_seconds}
            save(results, OUT_JSON)
        ids = sorted(rows)
        stats_ = rank_stats([truth[i] for i in ids], [rows[i]["val_loss"] for i in ids])
        done.setdefault("table", {})[name] = {
            **stats_, "n": len(ids), "steps": k, "lr": lr,
            "seconds_per_arch": statistics.mean(rows[i]["train_seconds"] + rows[i]["eval_seconds"] for i in ids)}
        print(f"{name}: tau {stats_['kendall_tau']:.3f} rho {stats_['spearman_rho']:.3f}", flush=True)
        save(results, OUT_JSON)


def plot_fidelity(rows: list[dict], table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("supernet", "inherited-weight loss (holdout)", "supernet (whole holdout)"),
              *((p, f"{p} (at initialisation)", p) for p in PROXIES)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    truth = [r["val_loss"] for r in rows]
    for ax, (key, label, name) in zip(axes, panels, strict=True):
        ax.scatter([r[key] for r in rows], truth, s=14)
        s = table[name]
        ax.set_title(f"{key}: tau {s['kendall_tau']:.2f}, rho {s['spearman_rho']:.2f}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("loss after 600 steps from scratch", fontsize=8)
        if key in ("params", "non_embedding_params", "synflow"):
            ax.set_xscale("log") if key != "synflow" else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def stage_search(recipe_args: list[str], results: dict) -> None:
    from llmnas.search import run_search

    recipe = load_recipe(RECIPE, recipe_args)
    t0 = time.perf_counter()
    summary = run_search(recipe, show_progress=True)
    study = summary.study
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    seconds = [t.duration.total_seconds() for t in done if t.duration]
    results["search"] = {
        "study": recipe.study, "n_trials": len(study.trials), "complete": len(done),
        "distinct_archs": len({t.user_attrs.get("arch_id") for t in done}),
        "wall_seconds_this_run": time.perf_counter() - t0, "trial_seconds_median": statistics.median(seconds),
        "trial_seconds_total": sum(seconds), "sampler": recipe.search.sampler,
    }


def stage_retrain(recipe_args: list[str], results: dict, top: int, seeds: int) -> None:
    from llmnas.search import load_study, trial_arch
    from llmnas.search.study import best_distinct

    recipe = load_recipe(RECIPE, [*recipe_args, "data.holdout=null"])
    data = prepare_data(recipe.data)
    study = load_study(Path(recipe.run_dir) / recipe.study)
    picked = best_distinct(study, top)
    done = {r["arch_id"]: r for r in results.get("retrain", [])}
    for t in picked:
        arch = trial_arch(t)
        if arch.id in done:
            continue
        print(f"retrain trial {t.number} ({arch.short()}), supernet loss {t.values[0]:.4f}", flush=True)
        done[arch.id] = {"trial": t.number, "arch_id": arch.id, "arch": json.loads(arch.to_json()),
                         "short": arch.short(), "params": arch.param_counts().total, "supernet_loss": t.values[0],
                         "inherited_loss": t.user_attrs.get("inherited_val_loss", t.values[0]),
                         "runs": _shakespeare_protocol()(arch, recipe, data, (1337, 1338, 1339)[:seeds])}
        results["retrain"] = list(done.values())
        save(results, OUT_JSON)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_speed(recipe, results: dict, repeats: int) -> None:
    from llmnas.models.decoder import Decoder
    from llmnas.supernet import SuperNet
    from llmnas.supernet.config import SupernetConfig
    from llmnas.supernet.train import SandwichPlan, _touch

    data = prepare_data(recipe.data)
    space = prepare_space(recipe, data)
    net = SuperNet(space, unshare=recipe.supernet.unshare)  # the recipe's weight sharing
    plan = SandwichPlan(space, SupernetConfig(random_subnets=2))
    B, T = recipe.train.batch_size, recipe.data.block_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, space.vocab_size, (B, T), generator=gen)
    y = torch.randint(0, space.vocab_size, (B, T), generator=gen)
    steps = [plan.archs(s, 0.5) for s in range(repeats + 1)]
    counter = iter(range(10**9))

    def sandwich() -> None:
        archs = steps[next(counter) % len(steps)]
        loss = sum(net(x, a, targets=y).loss for _, a in archs) / len(archs) + _touch(net)
        loss.backward()
        net.zero_grad(set_to_none=True)

    largest = Decoder(plan.largest)

    def standalone() -> None:
        largest(x, targets=y).loss.backward()
        largest.zero_grad(set_to_none=True)

    sandwich_s = _median_seconds(sandwich, repeats)
    standalone_s = _median_seconds(standalone, repeats)
    # scoring: forward only, eval mode, a batch of the evaluation size, over several architectures
    xb = torch.randint(0, space.vocab_size, (recipe.train.eval_batch_size, T), generator=gen)
    archs = [plan.largest, *(space.sample(np.random.default_rng(s)) for s in range(4))]
    ratios = []
    net.eval()
    for arch in archs:
        model = net.extract(arch).eval()
        with torch.no_grad():
            through = _median_seconds(lambda a=arch: net(xb, a), repeats)
            alone = _median_seconds(lambda m=model: m(xb), repeats)
        ratios.append({"arch_id": arch.id, "params": arch.param_counts().total, "supernet_s": through,
                       "standalone_s": alone, "ratio": through / alone})
    # what one search trial's scoring costs: evaluate_subnet on the recipe's validation windows
    from llmnas.supernet import evaluate_subnet

    acc = Accelerator(cpu=True)
    evaluate_subnet(net, archs[0], data, recipe.train, acc)  # warm-up (builds the loader once)
    score_s = []
    for arch in archs:
        t0 = time.perf_counter()
        evaluate_subnet(net, arch, data, recipe.train, acc)
        score_s.append(time.perf_counter() - t0)
    results["speed"] = {
        "score_seconds_median": statistics.median(score_s), "score_windows": recipe.train.eval_blocks,
        "threads": torch.get_num_threads(), "batch": [B, T], "repeats": repeats,
        "sandwich_step_s": sandwich_s, "largest_step_s": standalone_s, "sandwich_ratio": sandwich_s / standalone_s,
        "subnets_per_step": len(steps[0]), "scoring": ratios,
        "scoring_ratio_median": statistics.median(r["ratio"] for r in ratios),
    }


def main(argv: list[str] | None = None) -> int:
    global OUT_JSON, STAGE, ARCH_SEED
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="supernet,scratch,fidelity,search,retrain,speed")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--scratch-steps", type=int, default=600)
    p.add_argument("--n-trials", type=int, default=1000)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--finetune-steps", default="50,100,200", help="finetune stage: steps per architecture")
    p.add_argument("--finetune-lr", default="3e-4,1e-3", help="finetune stage: peak learning rates")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--run-dir", default=str(REPO / "runs"))
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--arch-seed", type=int, default=ARCH_SEED,
                   help="seed of the fidelity architectures (another seed gives a disjoint tuning set)")
    p.add_argument("--truth", type=Path, default=None,
                   help="read the from-scratch stages (scratch, scratch_full) from this results folder (ablations)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override (smoke runs only: the reported protocol is the recipe's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ARCH_SEED = args.arch_seed
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"data.source={args.data}", f"run_dir={args.run_dir}", f"search.n_trials={args.n_trials}",
              *args.overrides]
    recipe = load_recipe(RECIPE, common)
    for stage in args.stages.split(","):
        STAGE, OUT_JSON = stage, args.out / f"supernet-{stage}.json"
        results = merged(args.out)
        if args.truth is not None:
            truth = merged(args.truth)
            results.update({k: truth[k] for k in ("scratch", "scratch_full") if k in truth})
        results["machine"] = {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "python": platform.python_version()}
        t0 = time.perf_counter()
        if stage == "supernet":
            stage_supernet(recipe, results)
        elif stage == "scratch":
            stage_scratch(recipe, results, args.scratch_steps)
        elif stage == "scratch_full":  # the same architectures on the full 2000-step budget (a second truth)
            stage_scratch(recipe, results, recipe.train.max_steps, key="scratch_full")
        elif stage == "scratch_seed":  # the 600-step truth again with another seed: the ceiling of any scorer
            stage_scratch(recipe, results, args.scratch_steps, key="scratch_seed", seed=recipe.train.seed + 1)
        elif stage == "fidelity":
            stage_fidelity(recipe, results, args.out)
        elif stage == "finetune":
            stage_finetune(recipe, results, finetune_configs(args.finetune_steps, args.finetune_lr), args.out)
        elif stage == "search":
            stage_search(common, results)
        elif stage == "retrain":
            stage_retrain(common, results, args.top, args.seeds)
        elif stage == "speed":
            stage_speed(recipe, results, args.repeats)
        elif stage == "report":  # only rewrite supernet.md from the stages' files
            continue
        else:
            raise SystemExit(f"--stages: unknown stage {stage!r}")
        if isinstance(results.get(stage), dict):
            results[stage]["stage_seconds"] = time.perf_counter() - t0
        save(results, OUT_JSON)
        print(f"stage {stage}: {time.perf_counter() - t0:.0f}s", flush=True)
    final = merged(args.out)
    if args.truth is not None:
        final.update({k: v for k, v in merged(args.truth).items() if k in ("scratch", "scratch_full")})
    write_table(final, args.out)
    return 0


def merged(out: Path) -> dict:
    """Every stage's results (stages run alone write their own file, so parallel runs never collide)."""
    results: dict = {}
    for path in sorted(out.glob("supernet*.json")):
        for key, value in load(path).items():
            results[key] = value
    return results


def truth_ceiling(results: dict, rows: list[dict]) -> list[str]:
    """How well the 600-step truth ranks itself under another seed: no scorer can be expected above it."""
    if "scratch_seed" not in results:
        return []
    other = {r["arch_id"]: r["val_loss"] for r in results["scratch_seed"]}
    both = [r for r in rows if r["arch_id"] in other]
    st = rank_stats([r["val_loss"] for r in both], [other[r["arch_id"]] for r in both])
    return [f"Repeatability of the truth: the same {len(both)} architectures trained 600 steps from scratch with "
            f"another seed rank them with Kendall tau {st['kendall_tau']:.3f} / Spearman rho "
            f"{st['spearman_rho']:.3f} against the first seed (the ceiling of any scorer).", ""]


def by_position_scheme(rows: list[dict]) -> list[str]:
    """Kendall tau within each group of architectures that share a positional scheme, and the mean rank the
    truth and the supernet give each group: a shared component trained far longer in the supernet than in
    a 600-step run (the learned position table) moves its whole group."""
    lines = ["| positions | n | mean truth rank | mean supernet rank | tau supernet | tau params |",
             "|---|---:|---:|---:|---:|---:|"]
    truth_rank = sps.rankdata([r["val_loss"] for r in rows])
    sn_rank = sps.rankdata([r["supernet"] for r in rows])
    for pos in sorted({r["arch"]["pos"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["arch"]["pos"] == pos]
        if len(idx) < 3:
            continue
        truth = [rows[i]["val_loss"] for i in idx]
        lines.append(f"| {pos} | {len(idx)} | {np.mean(truth_rank[idx]):.1f} | {np.mean(sn_rank[idx]):.1f} | "
                     f"{rank_stats(truth, [rows[i]['supernet'] for i in idx])['kendall_tau']:.3f} | "
                     f"{rank_stats(truth, [-rows[i]['params'] for i in idx])['kendall_tau']:.3f} |")
    return ["By positional scheme (rank 1 = lowest loss):", "", *lines, ""]


def write_table(results: dict, out: Path) -> None:
    lines = ["# Supernet vs from-scratch training on tiny-shakespeare", ""]
    if "fidelity" in results:
        f = results["fidelity"]
        lines += [f"## Ranking fidelity ({f['n']} architectures of tiny_char under the 804,096-parameter cap)", "",
                  "| scorer | Kendall tau | Spearman rho |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['kendall_tau']:.3f} | {v['spearman_rho']:.3f} |" for k, v in f["table"].items()]
        lines += ["", "Truth: holdout loss after 600 steps from scratch. ![scatter](fidelity.png)", ""]
        lines += truth_ceiling(results, f["rows"]) + by_position_scheme(f["rows"])
        if "scratch_full" in results:
            full = {r["arch_id"]: r["val_loss"] for r in results["scratch_full"]}
            rows = [r for r in f["rows"] if r["arch_id"] in full]
            truth = [full[r["arch_id"]] for r in rows]
            lines += [f"Against a second truth, the holdout loss after the full 2000 steps from scratch "
                      f"({len(rows)} of the architectures):", "", "| scorer | Kendall tau | Spearman rho |",
                      "|---|---:|---:|"]
            sign = {"params": -1, "non_embedding_params": -1, "synflow": -1, "grad_norm": -1}
            for name, key in (("600 steps from scratch", "val_loss"), ("supernet (whole holdout)", "supernet"),
                              *((p, p) for p in PROXIES)):
                st = rank_stats(truth, [sign.get(key, 1) * r[key] for r in rows])
                lines.append(f"| {name} | {st['kendall_tau']:.3f} | {st['spearman_rho']:.3f} |")
            lines.append("")
    if "supernet" in results and "scratch" in results and "search" in results:
        s, rows = results["supernet"], results["scratch"]
        scratch_s = statistics.mean(r["train_seconds"] + r["eval_seconds"] for r in rows)
        n = results.get("search", {}).get("complete", 1000)
        # a trial's scoring time from the speed stage (measured alone) when there, else the search's median
        trial_s = results.get("speed", {}).get("score_seconds_median",
                                                 results.get("search", {}).get("trial_seconds_median", 0.0))
        per_arch = s["train_seconds"] / n + trial_s
        block, batch = 64, 12
        scratch_tokens = rows[0]["steps"] * batch * block
        windows = results.get("search", {}).get("eval_windows", 200)
        sn_tokens = s["subnet_tokens"] / n
        lines += ["## Cost per evaluated architecture", "",
                  "| evaluator | seconds per architecture | training tokens per architecture | "
                  "validation tokens scored |", "|---|---:|---:|---:|",
                  f"| from scratch (600 steps + whole-holdout evaluation), mean of {len(rows)} | {scratch_s:.1f} | "
                  f"{scratch_tokens:,} | whole holdout |",
                  f"| supernet: its training ({s['train_seconds']:.0f} s, {s['subnet_tokens']:,} subnet tokens) / {n} "
                  f"architectures + scoring one ({trial_s:.2f} s) | {per_arch:.2f} | {sn_tokens:,.0f} | "
                  f"{windows * block:,} |", "",
                  f"Ratio: {scratch_s / per_arch:.1f}x less time and {scratch_tokens / sn_tokens:.1f}x fewer training "
                  "tokens per evaluated architecture (same machine, 1 torch thread each, other jobs sharing the "
                  "cores).",
                  ""]
    if "retrain" in results:
        prior = load(REPO / "eval" / "shakespeare" / "results" / "shakespeare.json")
        lines += ["## Retrained winners (2000 steps, whole training split, nanoGPT's validation split)", "",
                  "| model | params | supernet loss (holdout) | val loss (mean ± std over seeds) |",
                  "|---|---:|---:|---:|"]
        for r in prior.get("retrain", []):
            v = [x["val_loss"] for x in r["runs"]]
            lines.append(f"| from-scratch search: trial {r['trial']} `{r['short']}` | {r['params'] / 1e6:.3f}M | | "
                         f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f} |")
        for r in results["retrain"]:
            v = [x["val_loss"] for x in r["runs"]]
            inherited = r.get("inherited_loss", r["supernet_loss"])
            score = (f"{inherited:.4f}" if inherited == r["supernet_loss"]
                     else f"{inherited:.4f} (calibrated: {r['supernet_loss']:.4f})")
            lines.append(f"| supernet search: trial {r['trial']} `{r['short']}` | {r['params'] / 1e6:.3f}M | "
                         f"{score} | {statistics.mean(v):.4f} ± "
                         f"{statistics.stdev(v) if len(v) > 1 else 0:.4f} |")
        lines.append("")
    if "finetune" in results:
        ft = results["finetune"]
        lines += [f"## Fine-tuning inherited weights before scoring ({ft['checkpoint']})", "",
                  "| scorer | Kendall tau | Spearman rho | seconds per architecture | n |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['kendall_tau']:.3f} | {v['spearman_rho']:.3f} | {v['seconds_per_arch']:.1f} | {v['n']} |"
                  for k, v in ft.get("table", {}).items()]
        lines += ["", "Truth: the 600-step from-scratch holdout loss above; control: the same number of steps from "
                  "scratch (recipe lr, warm-up over a tenth, cosine to lr/10).", ""]
    if "speed" in results:
        sp = results["speed"]
        lines += ["## Speed", "",
                  f"- sandwich step ({sp['subnets_per_step']} subnets): {sp['sandwich_step_s'] * 1e3:.1f} ms "
                  f"= {sp['sandwich_ratio']:.2f}x one step of the largest subnet as a standalone Decoder "
                  f"({sp['largest_step_s'] * 1e3:.1f} ms)",
                  f"- scoring through the supernet / standalone Decoder (forward, batch {sp['batch']}): median "
                  f"{sp['scoring_ratio_median']:.2f}x over {len(sp['scoring'])} architectures", ""]
    m = results.get("machine", {})
    lines.append(f"Machine: {m.get('processor')}, torch {m.get('torch')}, {m.get('threads')} threads, CPU only.")
    (out / "supernet.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


OUT_JSON = HERE / "results" / "supernet.json"
STAGE = ""

if __name__ == "__main__":
    sys.exit(main())
