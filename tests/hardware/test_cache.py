"""Decoding with the KV cache gives the decoder's own logits at every position."""

from __future__ import annotations

import pytest
import torch

from llmnas.hardware.cache import KVCache, decode_step, forward_cached, generate_greedy, prefill
from llmnas.models.decoder import Decoder
from llmnas.space import load_space


@pytest.mark.parametrize(("space", "seeds"), [("tiny", range(8)), ("moe", range(3))])
def test_cached_decoding_matches_the_full_forward(space: str, seeds: range) -> None:
    """Prompt, single steps, then a chunk of several positions: sliding windows, ALiBi, learned positions, GQA
    and MoE layers among the sampled architectures."""
    for seed in seeds:
        arch = load_space(space).sample(seed)
        torch.manual_seed(seed)
        model = Decoder(arch).eval()
        idx = torch.randint(0, arch.vocab_size, (2, 90))
        with torch.no_grad():
            full = model(idx).logits
        cache = KVCache.for_model(model, 2, 90)
        torch.testing.assert_close(prefill(model, idx[:, :20], cache), full[:, 19], atol=2e-5, rtol=1e-4)
        for t in range(20, 75):
            torch.testing.assert_close(decode_step(model, idx[:, t : t + 1], cache), full[:, t], atol=2e-5, rtol=1e-4)
        chunk = forward_cached(model, idx[:, 75:90], cache, all_logits=True)
        torch.testing.assert_close(chunk, full[:, 75:90], atol=2e-5, rtol=1e-4)


def test_greedy_generation_with_the_cache_equals_recomputing_the_context() -> None:
    arch = load_space("tiny").sample(4)
    torch.manual_seed(0)
    model = Decoder(arch).eval()
    prompt = torch.randint(0, arch.vocab_size, (1, 10))
    cached = generate_greedy(model, prompt, 12, KVCache.for_model(model, 1, 22))
    idx = prompt
    with torch.no_grad():
        for _ in range(12):
            idx = torch.cat((idx, model(idx).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(cached, idx[:, 10:])


def test_cache_longer_than_the_model_is_refused() -> None:
    arch = load_space("tiny").sample(0)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        KVCache(arch, 1, arch.max_seq_len + 1)
