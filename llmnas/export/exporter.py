"""Export an :class:`Architecture` with its weights to a Hugging Face model directory, checked for parity.

:func:`export_model` picks the class (:mod:`llmnas.export.targets`), writes ``config.json``,
``model.safetensors``, ``generation_config.json``, the tokenizer files and, for the remote-code class,
``configuration_llmnas.py`` / ``modeling_llmnas.py``. It then reloads the directory with
``AutoModelForCausalLM.from_pretrained`` and compares the logits with the llmnas
:class:`~llmnas.models.decoder.Decoder` on a fixed input, in fp32, both on the whole sequence and
then token by token through the KV cache. Everything is written to a temporary sibling directory that is
renamed to the output only once the check has passed.

Example:
    >>> report = export_model(arch, "out/model")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    exported arch 3f2a... to out/model as LlamaForCausalLM (stock class) ...
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmnas.errors import ExportError, blocking_file
from llmnas.export import targets
from llmnas.export.targets import SpecialTokens, Target
from llmnas.space.arch import Architecture

TOLERANCE = 1e-4
COPIES = 4  # fp32 copies of the weights alive at once during an export
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_CODE_DIR = Path(__file__).resolve().parent / "hf_code"
REMOTE_FILES = ("configuration_llmnas.py", "modeling_llmnas.py")


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` did.

    Attributes:
        path: the exported directory.
        class_name: the transformers class the directory loads as.
        remote_code: whether loading needs ``trust_remote_code=True``.
        max_abs_diff: largest |logit difference| between the llmnas model and the reloaded one (fp32),
            over the full-sequence and the token-by-token (KV cache) comparisons.
        arch_id: id of the exported architecture.
        dtype: dtype of the saved weights.
        custom_reason: with remote code, why: ``"forced"``, or why the first stock class does not fit
            (``"LlamaForCausalLM: positions are alibi, not RoPE"``).
        input_shape: ``(batch, tokens)`` of the parity input.
    """

    path: Path
    class_name: str
    remote_code: bool
    max_abs_diff: float
    arch_id: str
    dtype: str
    custom_reason: str | None
    input_shape: tuple[int, int]

    def __str__(self) -> str:
        kind = "remote code: trust_remote_code=True" if self.remote_code else "stock class"
        why = ""
        if self.custom_reason == "forced":
            why = " (forced)"
        elif self.custom_reason:
            why = f" (no stock class fits; {self.custom_reason})"
        b, t = self.input_shape
        return (
            f"exported arch {self.arch_id} to {self.path} as {self.class_name} ({kind}){why}, "
            f"{self.dtype} weights\nlogits parity: max |diff| {self.max_abs_diff:.3g} over {b}x{t} tokens "
            f"(fp32, tolerance {TOLERANCE:g})"
        )


def export_model(
    arch: Architecture,
    out_dir: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    tokenizer: Any | None = None,
    seed: int = 0,
    dtype: str | torch.dtype = "float32",
    force_custom: bool = False,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``arch`` with its weights as a transformers model directory and check logits parity.

    Args:
        arch: the architecture.
        out_dir: the directory to create.
        state_dict: Decoder weights; ``None`` initialises a fresh Decoder with ``seed``.
        tokenizer: a transformers tokenizer (or an llmnas ``TextTokenizer``) with at most
            ``arch.vocab_size`` tokens; ``None`` uses the byte-level tokenizer.
        seed: seed of the fresh weights (the global RNG is left untouched).
        dtype: dtype of the saved weights (``float32``, ``bfloat16`` or ``float16``); the parity check
            runs in fp32 on the weights rounded to it.
        force_custom: use the llmnas remote code even when a stock class fits.
        overwrite: replace ``out_dir`` if it exists.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ExportError: a bad argument, an existing output, a tokenizer larger than the vocabulary, or
            logits that differ by more than :data:`TOLERANCE` (nothing is written then).
        CheckpointError: ``state_dict`` does not fit ``arch`` (names every differing key and shape).
    """
    from llmnas.export.checkpoint import check_state_dict

    out = Path(out_dir)
    blocker = blocking_file(out)
    if blocker is not None:
        raise ExportError(f"output {out} cannot be created: {blocker} is a file, not a folder")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"output {out} already exists (choose another --out or pass --overwrite)")
    save_dtype = _dtype(dtype)
    check_memory(arch)
    if state_dict is None:
        state_dict = fresh_state_dict(arch, seed)
    check_state_dict(arch, state_dict, "state_dict")
    # the weights as they will be saved: the reference model is built from the same rounded values
    state_dict = {k: v.detach().to("cpu", save_dtype) for k, v in state_dict.items()}
    tokenizer = _prepare_tokenizer(arch, tokenizer)
    target = targets.choose_target(arch, force_custom)
    tmp = out.parent / f".{out.name}.llmnas-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _no_progress_bars():
            _write(arch, target, state_dict, tokenizer, save_dtype, tmp)
            diff, shape = check_parity(arch, state_dict, tmp, target)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    reason = None
    if target.remote_code:
        first = next(iter(targets.misfits(arch).items()), None)
        reason = "forced" if force_custom or first is None else f"{first[0]}: {first[1]}"
    return ExportReport(
        path=out,
        class_name=target.class_name,
        remote_code=target.remote_code,
        max_abs_diff=diff,
        arch_id=arch.id,
        dtype=str(save_dtype).removeprefix("torch."),
        custom_reason=reason,
        input_shape=shape,
    )


def check_memory(arch: Architecture, available: int | None = None) -> None:
    """Refuse an export that cannot fit in memory, before any tensor is allocated.

    The export holds the weights about :data:`COPIES` times in fp32 at once (the weights, the transformers
    model, the reloaded model and the reference Decoder of the parity check).
    """
    need = arch.param_counts().total * 4 * COPIES
    if available is None:
        available = _available_memory()
    if available is not None and need > available:
        raise ExportError(
            f"architecture {arch.id} has {arch.param_counts().total:,} parameters: exporting it needs about "
            f"{need / 2**30:,.1f} GiB of memory and this machine has {available / 2**30:,.1f} GiB"
        )


def _available_memory() -> int | None:
    """Bytes of physical memory of the machine (``None`` where the system does not say). The total, not
    what is free now: the check refuses only what could never fit."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fresh_state_dict(arch: Architecture, seed: int) -> dict[str, torch.Tensor]:
    """The weights of a freshly initialised Decoder, seeded without touching the global RNG."""
    from llmnas.models.decoder import Decoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Decoder(arch).state_dict()


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' weight loading/writing progress bars, restoring the setting after."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ExportError(f"dtype={dtype!r} must be one of {', '.join(DTYPES)}")


def _prepare_tokenizer(arch: Architecture, tokenizer: Any | None) -> Any:
    from llmnas.export.tokenizer import as_hf_tokenizer, resolve_tokenizer

    tokenizer = as_hf_tokenizer(resolve_tokenizer("byte") if tokenizer is None else tokenizer)
    if len(tokenizer) > arch.vocab_size:
        raise ExportError(
            f"the tokenizer has {len(tokenizer)} tokens but architecture {arch.id} has vocab_size="
            f"{arch.vocab_size}: the tokenizer must fit the embedding (a larger vocab_size is fine)"
        )
    tokenizer = copy.deepcopy(tokenizer)  # model_max_length is set on a copy, not the caller's object
    tokenizer.model_max_length = arch.max_seq_len
    return tokenizer


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """The bos/eos/pad ids of ``tokenizer`` (``None`` where it has none)."""
    return SpecialTokens(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


def _write(
    arch: Architecture,
    target: Target,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Any,
    dtype: torch.dtype,
    directory: Path,
) -> None:
    """Build the transformers model with the mapped weights and save it, with tokenizer and code."""
    from transformers import GenerationConfig

    tokens = special_tokens(tokenizer)
    config = target.config(arch, tokens)
    model = _model_class(target)(config)
    weights = target.weights(arch, state_dict)
    if arch.tie_embeddings:  # the tied head is the embedding tensor, but load_state_dict wants both names
        embed = weights[_weight_name(model, model.get_input_embeddings())]
        weights = {**weights, _weight_name(model, model.get_output_embeddings()): embed}
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:  # a bug in a weight map, not a user error
        raise ExportError(
            f"internal error mapping weights onto {target.class_name}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if arch.tie_embeddings and head.weight is not embed.weight:
        raise ExportError(f"internal error: {target.class_name} did not tie its output head")
    model = model.to(dtype).eval()
    # generation pads finished or shorter rows with eos when the tokenizer has no pad token; the model
    # config keeps the tokenizer's own pad id, since stock classes freeze the embedding row of pad_token_id
    pad = tokens.pad if tokens.pad is not None else tokens.eos
    model.generation_config = GenerationConfig(bos_token_id=tokens.bos, eos_token_id=tokens.eos, pad_token_id=pad)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    if target.remote_code:
        for name in REMOTE_FILES:
            shutil.copyfile(HF_CODE_DIR / name, directory / name)


def _model_class(target: Target) -> type:
    if target.remote_code:
        from llmnas.export.hf_code.modeling_llmnas import LlmnasForCausalLM

        return LlmnasForCausalLM
    import transformers

    return getattr(transformers, target.class_name)


def _weight_name(model: Any, module: Any) -> str:
    return next(f"{name}.weight" for name, m in model.named_modules() if m is module)


def parity_input(arch: Architecture, vocab: int | None = None) -> torch.Tensor:
    """The fixed token ids of the parity check: 2 sequences, long enough to cross every window."""
    windows = [b.attn.window for b in arch.blocks if b.attn.window is not None]
    length = min(arch.max_seq_len, max(48, max(windows, default=0) + 16))
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab or arch.vocab_size, (2, length), generator=gen)


def check_parity(
    arch: Architecture, state_dict: dict[str, torch.Tensor], directory: Path, target: Target
) -> tuple[float, tuple[int, int]]:
    """Reload ``directory`` with ``AutoModelForCausalLM`` and compare its logits with the Decoder's.

    Returns ``(max |diff|, input shape)``; raises :class:`ExportError` above :data:`TOLERANCE` or when
    the directory loads as another class.
    """
    from transformers import AutoModelForCausalLM

    from llmnas.models.decoder import Decoder

    with torch.device("meta"):  # no random init: every weight is assigned next
        reference = Decoder(arch).eval()
    reference.load_state_dict({k: v.float() for k, v in state_dict.items()}, assign=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, trust_remote_code=target.remote_code
        ).eval()
    except Exception as e:  # any failure to load is an export failure
        raise ExportError(f"the exported directory does not load with AutoModelForCausalLM: {e}") from e
    if type(loaded).__name__ != target.class_name:
        raise ExportError(f"the exported directory loads as {type(loaded).__name__}, not {target.class_name}")
    ids = parity_input(arch)
    with torch.no_grad():
        want = reference(ids).logits
        diff = _cached_diff(loaded, ids, want)
    if not diff <= TOLERANCE:  # also catches NaN
        raise ExportError(
            f"logits parity failed for {target.class_name}: max |diff| {diff:.3g} > {TOLERANCE:g}; "
            f"the export was not written"
        )
    return diff, tuple(ids.shape)


def _cached_diff(model: Any, ids: torch.Tensor, want: torch.Tensor, steps: int = 4) -> float:
    """Max |logits - want| over all positions: all but the last ``steps`` tokens in one forward pass
    that fills the KV cache, then one token at a time through the cache, as ``generate`` does."""
    t = ids.shape[1] - steps
    out = model(input_ids=ids[:, :t], use_cache=True)
    cache, diff = out.cache, (out.logits - want[:, :t]).abs().max().item()
    for i in range(t, ids.shape[1]):
        out = model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True)
        cache = out.cache
        diff = max(diff, (out.logits[:, -1] - want[:, i]).abs().max().item())
    return diff
