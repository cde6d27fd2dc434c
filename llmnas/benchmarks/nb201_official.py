"""Reader of the official NAS-Bench-201 and NATS-Bench (topology, ``tss``) benchmark files.

Supported layouts (as written by the NAS-Bench-201 / NATS-Bench APIs of D-X-Y):

- ``NAS-Bench-201-v1_[01]-*.pth`` (``torch.save``) and ``NATS-tss-v1_0-*.pickle.pbz2`` (bz2 pickle): a
  dict ``{"meta_archs": [arch_str, ...], "arch2infos": {index: {hp: ArchResults}}, "evaluated_indexes":
  [...]}``;
- a NATS-Bench "fast mode" folder: ``meta.pickle.pbz2`` (``{"meta_archs": [...]}``) plus one
  ``{index:06d}.pickle.pbz2`` per cell holding ``{hp: ArchResults}``.

``hp`` is ``"12"``/``"200"`` (NATS-Bench) or ``"less"``/``"full"`` (NAS-Bench-201). An ``ArchResults`` is
its state dict: ``{"arch_str", "dataset_seed": {dataset: [seed, ...]}, "all_results": {(dataset, seed):
ResultsCount}}``, and a ``ResultsCount`` has ``"epochs"`` and ``"eval_acc1es": {"<set>@<epoch>": acc}``.
Accuracies are averaged over the seeds, at the last epoch:

- 12-epoch validation: ``cifar10-valid``/``x-valid`` (CIFAR-10), ``cifar100``/``x-valid``,
  ``ImageNet16-120``/``x-valid``;
- 12-epoch test: ``cifar10-valid``/``ori-test``, ``cifar100``/``x-test``, ``ImageNet16-120``/``x-test``;
- 200-epoch test: ``cifar10``/``ori-test`` (trained on train+valid), ``cifar100``/``x-test``,
  ``ImageNet16-120``/``x-test``.

A value the file does not hold is NaN. The files are pickles: they are unpickled with a restricted
unpickler that only builds plain containers and numbers (``trusted=True`` lifts the restriction, for
files you trust that also hold network weights); ``.pth`` files go through ``torch.load(weights_only=True)``
unless ``trusted``.
"""

from __future__ import annotations

import bz2
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmnas.benchmarks.nb201 import DATASETS, NB201Table
from llmnas.errors import DataError
from llmnas.space.nb201 import NB201Cell

HP_12 = ("12", "less")
HP_200 = ("200", "full")
#: (benchmark data set name, evaluation set) of each metric and data set.
SOURCES = {
    "val12": {"cifar10": ("cifar10-valid", "x-valid"), "cifar100": ("cifar100", "x-valid"),
              "imagenet16-120": ("ImageNet16-120", "x-valid")},
    "test12": {"cifar10": ("cifar10-valid", "ori-test"), "cifar100": ("cifar100", "x-test"),
               "imagenet16-120": ("ImageNet16-120", "x-test")},
    "test200": {"cifar10": ("cifar10", "ori-test"), "cifar100": ("cifar100", "x-test"),
                "imagenet16-120": ("ImageNet16-120", "x-test")},
}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}


def load_official(path: str | Path, *, trusted: bool = False) -> NB201Table:
    """Read an official benchmark file or fast-mode folder into an :class:`NB201Table`.

    Raises:
        DataError: the path is missing, cannot be unpickled (safely), or does not have the layout above.
    """
    p = Path(path)
    if p.is_dir():
        meta = _unpickle(_find(p, "meta"), trusted)
        archs = _meta_archs(meta, p / "meta.pickle.pbz2")
        infos = {i: _unpickle(_find(p, f"{i:06d}", f"{i}"), trusted) for i in range(len(archs))}
    elif p.is_file():
        data = _load_file(p, trusted)
        if not isinstance(data, Mapping) or "arch2infos" not in data:
            raise DataError(f"{p}: not a NAS-Bench-201/NATS-Bench file (expected a dict with 'meta_archs' and "
                            "'arch2infos')")
        archs = _meta_archs(data, p)
        raw = data["arch2infos"]
        if not isinstance(raw, Mapping):
            raise DataError(f"{p}: 'arch2infos' must be a dict of index -> results")
        infos = {int(k): v for k, v in raw.items()}
    else:
        raise DataError(f"NAS-Bench-201 benchmark file not found: {p}")
    n = len(archs)
    tables: dict[str, dict[str, np.ndarray]] = {m: {d: np.full(n, np.nan) for d in DATASETS} for m in SOURCES}
    for i in range(n):
        hp_results = infos.get(i)
        if hp_results is None:
            continue
        if not isinstance(hp_results, Mapping):
            raise DataError(f"{p}: results of architecture {i} must be a dict of hp -> ArchResults")
        for metric, hps in (("val12", HP_12), ("test12", HP_12), ("test200", HP_200)):
            res = next((hp_results[h] for h in hps if h in hp_results), None)
            if res is None:
                continue
            _check_arch(p, i, res, archs[i])
            for ds, (bench_ds, eval_set) in SOURCES[metric].items():
                tables[metric][ds][i] = _mean_last_epoch(p, i, res, bench_ds, eval_set)
    for metric in SOURCES:
        for ds in list(tables[metric]):
            if np.isnan(tables[metric][ds]).all():
                del tables[metric][ds]
    return NB201Table(tuple(archs), tables["val12"], tables["test12"], tables["test200"], {}, source=str(p))


def _find(folder: Path, *stems: str) -> Path:
    for stem in stems:
        for suffix in (".pickle.pbz2", ".pickle", ".pkl"):
            f = folder / f"{stem}{suffix}"
            if f.is_file():
                return f
    raise DataError(f"{folder}: missing {stems[0]}.pickle.pbz2 (a NATS-Bench fast-mode folder holds meta.pickle.pbz2 "
                    "and one NNNNNN.pickle.pbz2 per architecture)")


def _load_file(p: Path, trusted: bool) -> Any:
    if p.suffix in (".pth", ".pt"):
        import torch

        try:
            return torch.load(p, map_location="cpu", weights_only=not trusted)
        except pickle.UnpicklingError as e:
            if trusted or "Weights only load failed" not in str(e):  # not a pickle at all: no --trusted hint
                raise DataError(f"cannot read {p}: {_why(e)} (expected an official NAS-Bench-201 .pth file)") from None
            raise DataError(f"{p}: cannot be loaded safely ({str(e).splitlines()[0]}); load it with trusted=True "
                            "(--trusted) if you trust the file") from None
        except Exception as e:  # a damaged or foreign file fails anywhere in torch's unpickler (KeyError, ...)
            raise DataError(f"cannot read {p}: {_why(e)} (expected an official NAS-Bench-201 .pth file)") from None
    return _unpickle(p, trusted)


def _why(e: BaseException) -> str:
    """The exception's message, or its type when it has none (an empty file's EOFError)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else f"{type(e).__name__} (truncated or empty file?)"


class _Forbidden(pickle.UnpicklingError):
    """A pickle that needs a global outside :data:`_SAFE_GLOBALS` (it may be fine with ``trusted=True``)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise _Forbidden(f"global {module}.{name} is not allowed")


def _unpickle(p: Path, trusted: bool) -> Any:
    try:
        with (bz2.open(p, "rb") if p.name.endswith(".pbz2") else open(p, "rb")) as f:
            return pickle.load(f) if trusted else _RestrictedUnpickler(f).load()
    except _Forbidden as e:
        raise DataError(f"{p}: cannot be unpickled safely ({e}); load it with trusted=True (--trusted) if you "
                        "trust the file") from None
    except Exception as e:  # a damaged or foreign file fails anywhere in the unpickler (KeyError, IndexError, ...)
        raise DataError(f"cannot read {p}: {_why(e)}") from None


def _meta_archs(data: Any, where: Path) -> list[str]:
    archs = data.get("meta_archs") if isinstance(data, Mapping) else None
    if not isinstance(archs, (list, tuple)) or not archs:
        raise DataError(f"{where}: 'meta_archs' must be a non-empty list of architecture strings")
    out = []
    for i, s in enumerate(archs):
        try:
            out.append(NB201Cell.from_str(s).to_str())
        except ValueError as e:
            raise DataError(f"{where}: meta_archs[{i}]: {e}") from None
    return out


def _check_arch(p: Path, i: int, res: Any, arch: str) -> None:
    if not isinstance(res, Mapping) or "all_results" not in res or "dataset_seed" not in res:
        raise DataError(f"{p}: results of architecture {i} are not an ArchResults state dict "
                        "(expected 'all_results' and 'dataset_seed')")
    stored = res.get("arch_str")
    if isinstance(stored, str) and stored != arch:
        raise DataError(f"{p}: architecture {i} is {arch} in meta_archs but {stored} in its results")


def _mean_last_epoch(p: Path, i: int, res: Mapping, dataset: str, eval_set: str) -> float:
    seeds = res["dataset_seed"].get(dataset)
    if not seeds:
        return math.nan
    accs = []
    for seed in seeds:
        rc = res["all_results"].get((dataset, seed))
        if not isinstance(rc, Mapping):
            raise DataError(f"{p}: architecture {i} lists seed {seed} of {dataset} but has no result for it")
        epochs = rc.get("epochs")
        acc = rc.get("eval_acc1es", {}).get(f"{eval_set}@{epochs - 1}") if isinstance(epochs, int) else None
        if acc is None:
            continue
        accs.append(float(acc))
    return float(np.mean(accs)) if accs else math.nan
