"""Redis Streams backend: ``executor`` (driver side, ``redis://`` executors), ``worker`` (the fleet's
worker loop, ``mrkit worker redis://…``), and asynchronous jobs: ``job_state`` (the state machine's
keys and Lua scripts), ``jobs`` (submit, resume), ``job_steps`` (what workers do with a job's
entries) and ``job_handle`` (following a job by id)."""
