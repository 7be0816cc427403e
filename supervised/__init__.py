"""Supervised few-shot benchmarks on the RK engine: sinusoid regression, Omniglot, MiniImagenet."""
