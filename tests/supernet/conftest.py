"""One intra-op thread for the supernet tests: their tensors are small (batches of 2-4 short windows), where
a second thread saves little and, on a loaded 2-core machine, costs several times the run time in spinning."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
