"""One-shot search over NAS-Bench-201's cell space: one weight-shared supernet, five strategies.

- :mod:`~llmnas.vision.oneshot.supernet`: :class:`CellSuperNet` (every edge holds all five ops;
  ``forward(x, arch)`` with a cell, op weights or a GDAS sample; ``extract(cell)`` a standalone network).
- :mod:`~llmnas.vision.oneshot.strategies`: DARTS (first order), GDAS, ENAS, SPOS, DrNAS.
- :mod:`~llmnas.vision.oneshot.evaluate`: inherited-weight accuracy with BatchNorm recalibrated per cell.
- :mod:`~llmnas.vision.oneshot.search`: :func:`run_search`, one search start to end.
- :mod:`~llmnas.vision.oneshot.bench`, :mod:`~llmnas.vision.oneshot.cli`: ``llmnas bench nb201-oneshot``.

The submodules are imported where used (the command line stays quick to start).
"""
