"""Where a run's missing images are computed: ``local`` (this process) or ``ray`` (a Ray cluster).

An engine has one method, ``compute(run, todo, memo, bad, cached)``: it
computes ``todo`` into ``run.extraction`` (whose lock the caller holds),
records each image's hash in ``run.sha`` and bad ones with ``run.skip``.
Both run the per-image step of :mod:`featx.extraction.steps`.
"""
