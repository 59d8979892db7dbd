"""thinkrec's benchmarks, by purpose: ``quality``, ``speed``, ``peers``, ``llm``; see ``benchmarks/README.md``."""
