"""The device latency is measured on: resolving a device name, and a description that identifies it.

A measured latency means something only with the device and the settings it was measured under, so a
:func:`describe_device` record goes with every figure and every predictor file. Two records describe the
same device when their :data:`IDENTITY` keys are equal (the CPU model, cores, GPU, torch version, threads
and dtype); a predictor fitted on one device is refused on another.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from llmnas.errors import LlmnasError

#: Keys of a device description that must match for figures (and predictors) to be comparable.
IDENTITY = ("kind", "cpu_model", "cpu_count", "gpu_name", "torch", "threads", "dtype")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HardwareError(LlmnasError, ValueError):
    """A device, a predictor file or a hardware setting cannot be used (the message says which and why)."""


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`, present on this machine.

    Raises:
        HardwareError: an unknown device name, or CUDA asked for where there is none.
    """
    text = str(name).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise HardwareError(f"device {text!r}: unknown device (allowed: cpu, cuda, cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HardwareError(f"device {text!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HardwareError(
                f"device {text!r}: no such GPU (this machine has {torch.cuda.device_count()}: cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise HardwareError(f"dtype {name!r}: not allowed (allowed: {', '.join(DTYPES)})")
    return DTYPES[name]


def _cpu_info() -> dict[str, str]:
    """Model name, family/model/stepping and flags' count from /proc/cpuinfo (Linux), else platform's name."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "stepping", "flags") and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    numbers = "/".join(info[k] for k in ("cpu family", "model", "stepping") if k in info)
    # Virtual machines often report a generic name ("Intel Xeon Processor"): family/model/stepping tell them apart.
    return {"cpu_model": f"{name} (family/model/stepping {numbers})" if numbers else name,
            "cpu_flags": str(len(info.get("flags", "").split()))}


def describe_device(device: str | torch.device = "cpu", threads: int | None = None,
                    dtype: str = "float32") -> dict[str, Any]:
    """What identifies the device a figure was measured on (see :data:`IDENTITY`), plus helpful extras."""
    device = resolve_device(device)
    cpu = _cpu_info()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    out: dict[str, Any] = {
        "kind": device.type,
        "cpu_model": cpu["cpu_model"],
        "cpu_count": os.cpu_count(),
        "gpu_name": None,
        "torch": torch.__version__.split("+")[0],
        "threads": threads if threads is not None else torch.get_num_threads(),
        "dtype": dtype,
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_affinity": affinity,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        out["gpu_name"] = props.name
        out["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        out["cuda"] = torch.version.cuda
    return out


def identity(description: dict[str, Any]) -> dict[str, Any]:
    return {k: description.get(k) for k in IDENTITY}


def same_device(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The identity keys on which two descriptions differ, as ``key: a != b`` (empty when the same device)."""
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in IDENTITY if a.get(k) != b.get(k)]


def short(description: dict[str, Any]) -> str:
    """One line: ``cpu Intel Xeon ... (2 cores), torch 2.13.0, 1 thread(s), float32``."""
    what = description.get("gpu_name") or f"{description['cpu_model']} ({description['cpu_count']} cores)"
    return (f"{description['kind']} {what}, torch {description['torch']}, {description['threads']} thread(s), "
            f"{description['dtype']}")
