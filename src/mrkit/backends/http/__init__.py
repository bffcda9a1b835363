"""HTTP worker backend: ``executor`` (driver side, starts missing workers), ``server`` (the worker's
HTTP server), ``tasks`` (the task processes a worker runs) and ``auth`` (signed requests)."""
