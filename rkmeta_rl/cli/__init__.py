"""Command-line entry points (``rkmeta-train-nav``, ``rkmeta-train-locomotion``, ``rkmeta-train-sinusoid``,
``rkmeta-train-fewshot``); the scripts in ``scripts/`` call the same ``main`` functions."""
