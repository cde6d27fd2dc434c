"""Measured latency, throughput and memory of an architecture on the running device.

:func:`measure_many` builds each architecture's :class:`~llmnas.models.decoder.Decoder` (random weights:
latency does not depend on their values), warms each up, then times them in rounds: every round times each
architecture once, in a shuffled order, so that a burst of load from another process on a shared machine
falls on all of them rather than on one. Each figure is the median over the rounds, with its quartiles
(the spread) and the number of repeats.

- ``prefill_ms``: the prompt (``batch_size x prompt_len`` tokens) through the model with the KV cache
  filled, up to the next token's logits.
- ``decode_tokens_per_s``: ``batch_size * new_tokens`` greedy tokens after the prompt, one position per step
  with the KV cache (:mod:`llmnas.hardware.cache`), per second of decoding (the prefill not counted).
- ``train_step_ms``: forward, backward and an AdamW step on ``train_batch_size x train_seq_len`` tokens.
- ``peak_memory_mb``: the most tensor memory held while serving (weights, KV cache, activations of the
  prefill and the decoding steps). On CUDA ``torch.cuda.max_memory_allocated``; on CPU the same quantity from
  torch's own allocation records (``torch.profiler`` with ``profile_memory``: every tensor allocation and free
  with its size, summed in time order, plus the weights held before). Both count what torch allocates, not
  the process's resident set (which the C allocator's caching and torch's own libraries blur), so the figure is
  exact and repeatable. ``train_peak_memory_mb`` is the same for one training step.

Times are the measuring thread's CPU time on CPU with one torch thread (``Settings.clock``): on a shared
machine the wall clock also counts the time the thread waited while other processes held the core (on two
busy cores, twice the CPU time and ten times its spread); wall-clock medians are recorded beside.

A process's history changes what it measures next (``Settings.isolate``): on this CPU an MoE model's prompt
took about 20 % longer after training steps of 32 other models in the same process, 6 % after their
inference alone (``eval/hardware/run.py --stages drift``). So by default each chunk is measured in a fresh
process, every chunk from the same starting state; within a chunk every architecture's inference is timed
before any training step.

Every :class:`Measurement` carries its :class:`Settings` and the device description.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmnas.hardware.cache import KVCache, decode_step, prefill
from llmnas.hardware.device import HardwareError, describe_device, resolve_device, resolve_dtype
from llmnas.models.decoder import Decoder
from llmnas.space.arch import Architecture

MB = 2**20
PREFILL_CALLS = 3
CLOCKS = ("auto", "wall", "thread_cpu")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What a measurement runs; recorded with every figure."""

    batch_size: int = 1
    """Sequences served together (prefill and decoding)."""
    prompt_len: int = 64
    """Tokens of the prompt (prefill)."""
    new_tokens: int = 32
    """Tokens generated after the prompt (decoding); ``prompt_len + new_tokens`` must fit ``max_seq_len``."""
    train_batch_size: int = 4
    train_seq_len: int | None = None
    """Tokens per training sequence (``None``: the architecture's ``max_seq_len``)."""
    repeats: int = 15
    """Timed rounds (the median is reported)."""
    train_repeats: int = 5
    """Timed training steps (0: training-step time is not measured)."""
    warmup: int = 3
    """Untimed runs of each workload before the first round."""
    threads: int = 1
    """torch CPU threads (``torch.set_num_threads``) while measuring."""
    dtype: str = "float32"
    clock: str = "auto"
    """``wall`` (elapsed time), ``thread_cpu`` (the measuring thread's CPU time: leaves out the time it waited
    for a core while other processes ran; valid on CPU with one thread, where torch computes in that thread)
    or ``auto``: ``thread_cpu`` on CPU with ``threads: 1``, else ``wall``. Wall-clock medians are recorded
    beside either way."""
    memory: bool = True
    """Measure peak memory (one extra run of each workload, recorded)."""
    isolate: bool = True
    """Measure each chunk of architectures (and the look-up table's parts) in a fresh process (spawned, one at a
    time). What a process ran before changes what it measures next: on this 2-core CPU an MoE model's prompt
    took about 20 % longer after 32 other models' training steps had run in the same process. ``False``
    measures in the calling process (quicker to start, for tests and one-off checks). The process is spawned,
    so a script that measures at module level needs the usual ``if __name__ == "__main__":`` guard (the
    error raised without it says so)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "prompt_len", "new_tokens", "train_batch_size", "repeats", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HardwareError(f"hardware setting {name}={value!r}: must be a positive integer")
        for name in ("train_repeats", "warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HardwareError(f"hardware setting {name}={value!r}: must be an integer >= 0")
        if self.train_seq_len is not None and (not isinstance(self.train_seq_len, int) or self.train_seq_len < 2):
            raise HardwareError(
                f"hardware setting train_seq_len={self.train_seq_len!r}: must be an integer >= 2 or null"
            )
        resolve_dtype(self.dtype)
        if self.clock not in CLOCKS:
            raise HardwareError(f"hardware setting clock={self.clock!r}: not allowed (allowed: {', '.join(CLOCKS)})")
        if self.clock == "thread_cpu" and self.threads != 1:
            raise HardwareError(f"hardware setting clock=thread_cpu needs threads=1 (got {self.threads}): with more "
                                "threads the computation is not in the measuring thread; use clock: wall")

    def clock_for(self, device: torch.device) -> str:
        """The clock used on ``device``: ``auto`` resolved."""
        if self.clock != "auto":
            if self.clock == "thread_cpu" and device.type != "cpu":
                raise HardwareError("hardware setting clock=thread_cpu is for CPU measurements; use wall on CUDA")
            return self.clock
        return "thread_cpu" if device.type == "cpu" and self.threads == 1 else "wall"

    def check(self, arch: Architecture) -> None:
        need = self.prompt_len + self.new_tokens
        if need > arch.max_seq_len:
            raise HardwareError(
                f"hardware settings prompt_len={self.prompt_len} + new_tokens={self.new_tokens} = {need} exceed the "
                f"architecture's max_seq_len={arch.max_seq_len}"
            )
        if self.train_seq_len is not None and self.train_seq_len > arch.max_seq_len:
            raise HardwareError(f"hardware setting train_seq_len={self.train_seq_len} exceeds max_seq_len="
                                f"{arch.max_seq_len}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        return cls(**values)


@dataclass(frozen=True)
class Figure:
    """A timed quantity over repeats: median, quartiles, count."""

    median: float
    p25: float
    p75: float
    n: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.p75 - self.p25) / self.median if self.median else 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Figure:
        v = sorted(values)
        if len(v) == 1:
            return cls(v[0], v[0], v[0], 1)
        q = statistics.quantiles(v, n=4, method="inclusive")
        return cls(statistics.median(v), q[0], q[2], len(v))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "p25": self.p25, "p75": self.p75, "spread": round(self.spread, 4), "n": self.n}


@dataclass
class Measurement:
    """Everything measured for one architecture, with the settings and the device."""

    arch_id: str
    prefill_ms: Figure
    decode_tokens_per_s: Figure
    decode_ms_per_step: Figure
    train_step_ms: Figure | None
    peak_memory_mb: float | None
    train_peak_memory_mb: float | None
    settings: Settings
    device: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        """The figures as objective values (medians): ``prefill_ms``, ``decode_tokens_per_s``, ..."""
        out = {"prefill_ms": self.prefill_ms.median, "decode_tokens_per_s": self.decode_tokens_per_s.median,
               "decode_ms_per_step": self.decode_ms_per_step.median}
        if self.train_step_ms is not None:
            out["train_step_ms"] = self.train_step_ms.median
        if self.peak_memory_mb is not None:
            out["peak_memory_mb"] = self.peak_memory_mb
        if self.train_peak_memory_mb is not None:
            out["train_peak_memory_mb"] = self.train_peak_memory_mb
        return out

    def to_dict(self) -> dict[str, Any]:
        figures = {k: getattr(self, k) for k in ("prefill_ms", "decode_tokens_per_s", "decode_ms_per_step",
                                                  "train_step_ms")}
        return {
            "arch_id": self.arch_id,
            **{k: (v.to_dict() if v is not None else None) for k, v in figures.items()},
            "peak_memory_mb": self.peak_memory_mb,
            "train_peak_memory_mb": self.train_peak_memory_mb,
            "settings": self.settings.to_dict(),
            "device": self.device,
            **self.extra,
        }


# ---------------------------------------------------------------------- timing
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def timer(device: torch.device, clock: str = "wall") -> Callable[[Callable[[], Any]], tuple[float, float]]:
    """``time(fn)``: seconds ``fn`` takes on ``clock`` (``wall`` or ``thread_cpu``) and on the wall clock, with
    the device synchronised before and after on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cpu = time.thread_time if clock == "thread_cpu" else None

    def time_it(fn: Callable[[], Any]) -> tuple[float, float]:
        sync()
        start, c0 = time.perf_counter(), cpu() if cpu else 0.0
        fn()
        sync()
        c1, wall = cpu() if cpu else 0.0, time.perf_counter() - start
        return (c1 - c0 if cpu else wall), wall

    return time_it


class Workloads:
    """One architecture's model and its three workloads (prefill, decoding, a training step)."""

    def __init__(self, arch: Architecture, device: torch.device, settings: Settings, seed: int = 0) -> None:
        settings.check(arch)
        s, dtype = settings, resolve_dtype(settings.dtype)
        self.arch, self.settings, self.device = arch, settings, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = Decoder(arch).to(device=device, dtype=dtype).eval()
            g = torch.Generator().manual_seed(seed)
            self.prompt = torch.randint(0, arch.vocab_size, (s.batch_size, s.prompt_len), generator=g).to(device)
            t = s.train_seq_len or arch.max_seq_len
            self.train_x = torch.randint(0, arch.vocab_size, (s.train_batch_size, t), generator=g).to(device)
            self.train_y = torch.randint(0, arch.vocab_size, (s.train_batch_size, t), generator=g).to(device)
        self.cache = KVCache.for_model(self.model, s.batch_size, s.prompt_len + s.new_tokens)
        self.optimizer: torch.optim.Optimizer | None = None

    def prefill(self) -> torch.Tensor:
        return prefill(self.model, self.prompt, self.cache)

    def decode(self) -> Callable[[], None]:
        """A call that makes ``new_tokens`` greedy steps after the prefill that is done here (outside it)."""
        logits = self.prefill()
        return lambda: self._steps(logits)

    def _steps(self, logits: torch.Tensor) -> None:
        for _ in range(self.settings.new_tokens):
            logits = decode_step(self.model, logits.argmax(-1, keepdim=True), self.cache)

    def train_step(self) -> None:
        model = self.model.train()
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss = model(self.train_x, targets=self.train_y).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.eval()

    def release_training(self) -> None:
        """Drop the optimizer state and gradients (the model's serving footprint stays)."""
        self.optimizer = None
        for p in self.model.parameters():
            p.grad = None


def peak_memory_mb(run: Callable[[], Any], device: torch.device, held: int) -> float:
    """Most tensor memory held during ``run()``, in MiB: ``held`` bytes already allocated (weights) plus the
    highest running sum of the allocations and frees ``run`` makes (CPU), or CUDA's own peak counter."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / MB
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return (held + peak) / MB


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 inside the block: the profiler's C++ side prints two lines per use."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def measure_many(
    archs: Sequence[Architecture],
    device: str | torch.device = "cpu",
    settings: Settings | None = None,
    *,
    seed: int = 0,
    chunk: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[Measurement]:
    """Measure every architecture of ``archs`` (see the module's description), in chunks of ``chunk``
    architectures whose repeats are interleaved; the list is in the order of ``archs``.

    Raises:
        HardwareError: an unknown device or bad settings (before anything is built).
    """
    settings = settings or Settings()
    device = resolve_device(device)
    for arch in archs:
        settings.check(arch)
    description = describe_device(device, settings.threads, settings.dtype)
    out: list[Measurement] = []
    for first in range(0, len(archs), chunk):
        args = (list(archs[first : first + chunk]), device, settings, description, seed + first)
        out += in_fresh_process(_measure_chunk, *args) if settings.isolate else _measure_chunk(*args)
        if progress is not None:
            progress(len(out), len(archs))
    return out


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a freshly spawned Python process (``fn`` and ``args`` picklable); its exceptions are
    raised here, and a process that dies (killed, out of memory) is a :class:`HardwareError`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as e:
            raise HardwareError(f"the measuring process died before it finished ({e}). A script that measures at "
                                "module level needs an 'if __name__ == \"__main__\":' guard (the process is "
                                "spawned and imports it); otherwise measure again, or with settings isolate: false "
                                "to see the error in this process") from None


def _measure_chunk(archs: Sequence[Architecture], device: torch.device, settings: Settings,
                   description: dict[str, Any], seed: int) -> list[Measurement]:
    with torch_threads(settings.threads):
        return _measure_chunk_here(archs, device, settings, description, seed)


def _measure_chunk_here(archs: Sequence[Architecture], device: torch.device, settings: Settings,
                        description: dict[str, Any], seed: int) -> list[Measurement]:
    s, time_it = settings, timer(device, settings.clock_for(device))
    work = [Workloads(a, device, s, seed=seed + i) for i, a in enumerate(archs)]
    memory: list[tuple[float | None, float | None]] = []
    for w in work:  # warm-up (and the memory runs, which need warm kernels too)
        for _ in range(s.warmup):
            w.decode()()
        serve = train = None
        if s.memory:
            serve = peak_memory_mb(lambda w=w: w.decode()(), device, tensor_bytes(w.model) + _cache_bytes(w.cache))
        memory.append((serve, train))
    prefill_t: list[list[tuple[float, float]]] = [[] for _ in work]
    decode_t: list[list[tuple[float, float]]] = [[] for _ in work]
    train_t: list[list[tuple[float, float]]] = [[] for _ in work]
    rng = random.Random(seed)
    order = list(range(len(work)))
    for _ in range(s.repeats):
        rng.shuffle(order)
        for i in order:
            w = work[i]
            with torch.no_grad():
                # the prompt is short: PREFILL_CALLS calls per repeat keep the timer's and the scheduler's grain small
                t, wall = time_it(lambda w=w: [w.prefill() for _ in range(PREFILL_CALLS)])
                prefill_t[i].append((t / PREFILL_CALLS, wall / PREFILL_CALLS))
                decode_t[i].append(time_it(w.decode()))
    if s.train_repeats:
        for w_i, w in enumerate(work):
            for _ in range(max(1, s.warmup)):
                w.train_step()
            if s.memory:
                w.release_training()
                held = tensor_bytes(w.model)
                memory[w_i] = (memory[w_i][0], peak_memory_mb(w.train_step, device, held))
        for _ in range(s.train_repeats):
            rng.shuffle(order)
            for i in order:
                train_t[i].append(time_it(work[i].train_step))
    out = []
    tokens = s.batch_size * s.new_tokens
    for i, w in enumerate(work):
        wall = {"prefill_ms": statistics.median(1e3 * t[1] for t in prefill_t[i]),
                "decode_tokens_per_s": statistics.median(tokens / t[1] for t in decode_t[i])}
        if train_t[i]:
            wall["train_step_ms"] = statistics.median(1e3 * t[1] for t in train_t[i])
        out.append(Measurement(
            arch_id=w.arch.id,
            prefill_ms=Figure.of([1e3 * t[0] for t in prefill_t[i]]),
            decode_tokens_per_s=Figure.of([tokens / t[0] for t in decode_t[i]]),
            decode_ms_per_step=Figure.of([1e3 * t[0] / s.new_tokens for t in decode_t[i]]),
            train_step_ms=Figure.of([1e3 * t[0] for t in train_t[i]]) if train_t[i] else None,
            peak_memory_mb=memory[i][0],
            train_peak_memory_mb=memory[i][1],
            settings=s,
            device=description,
            extra={"clock": s.clock_for(device), "wall_clock_medians": wall},
        ))
    return out


def _cache_bytes(cache: KVCache) -> int:
    return sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values])


def measure(arch: Architecture, device: str | torch.device = "cpu", settings: Settings | None = None,
            **changes: Any) -> Measurement:
    """Measure one architecture on ``device`` (``cpu``, ``cuda``, ``cuda:N``); ``changes`` override fields of
    ``settings`` (``measure(arch, "cpu", repeats=5, prompt_len=32)``).

    Example:
        >>> from llmnas.space import load_space
        >>> m = measure(load_space("tiny").sample(0), "cpu", repeats=3, train_repeats=0)
        >>> m.values()["prefill_ms"] > 0
        True
    """
    settings = dataclasses.replace(settings or Settings(), **changes)
    return measure_many([arch], device, settings)[0]
