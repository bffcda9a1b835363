"""Dask distributed backend: ``executor`` (driver side: a ``LocalCluster``, a scheduler address or a
``distributed.Client``) and ``tasks`` (what a Dask worker runs). Imported only when an executor string
names it (``dask``, ``dask://…``, ``tls://…``), so ``import mrkit`` never imports dask."""
