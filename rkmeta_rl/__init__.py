"""rkmeta-rl: gradient-based meta-learning whose meta-update is a Runge-Kutta integrator (MAML-RK)."""

__version__ = "0.1.0"
