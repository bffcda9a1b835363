"""Redis Streams backend: ``executor`` (driver side, ``redis://`` executors), ``worker`` (the fleet's
worker loop, ``mrkit worker redis://…``) and ``jobs`` (asynchronous jobs' state machine in Redis)."""
