"""Latency-constrained architecture search over RLFN channel widths (Optuna).

- :mod:`~workbench.search.space`: the search space (ranges with steps, checked against the parent);
- :mod:`~workbench.search.latency`: isolated, cached latency on the target device;
- :mod:`~workbench.search.objective`: objectives, constraints, how a candidate is made and scored;
- :mod:`~workbench.search.study`: storage, workers, exact trial counts, resume;
- :mod:`~workbench.search.results`: Pareto front (CSV, markdown, PNG), best artifact, summary;
- :mod:`~workbench.stages.search`: the ``search`` recipe stage (``workbench search`` is the CLI).
"""
