"""Tools that ship with mrkit but are not part of the engine: the demo job (``mrkit demo``) and the
deterministic corpus generator it, the examples and the benchmarks use."""
