"""Gaussian MLP policy used functionally (parameters are passed in, never read from the module).

The policy of MAML-RL (Finn, Abbeel and Levine, 2017) and TRPO (Schulman et al., "Trust Region Policy
Optimization", ICML 2015): an MLP maps the observation to the action mean; a learned, state-independent
``log_std`` vector sets the diagonal covariance.

Parameters are a flat dict ``{"w0", "b0", ..., "w{L}", "b{L}", "log_std"}`` with ``w_i`` of shape
``[out, in]`` (``torch.nn.Linear`` layout), in that order. ``L = len(hidden_sizes)``: ``w0, b0`` is the first
hidden layer, ``w{L}, b{L}`` the output layer (the action mean), ``log_std [act_dim]`` the state-independent
log standard deviation. The default ``(100, 100)`` policy has ``w0 b0 w1 b1 w2 b2 log_std``. Per-parameter RK
methods and ``adapt=`` take glob patterns over these names (``|`` joins alternatives): the policy's head, output
layer and ``log_std``, is ``"w2|b2|log_std"`` for two hidden layers (:attr:`GaussianMLPPolicy.head_pattern`
gives it for any depth), and the body is everything else, for example
``method={policy.head_pattern: "midpoint", "*": "ralston"}`` or ``adapt=policy.head_pattern`` (ANIL).

Two kinds of parameter dicts are accepted everywhere:

* **shared**: ``w_i [out, in]``, ``b_i [out]``, ``log_std [act_dim]``; observations ``[..., obs_dim]``.
* **per task**: every tensor has a leading task dimension ``T`` (``w_i [T, out, in]``, ``log_std [T, act_dim]``);
  observations ``[T, ..., obs_dim]``. Task ``t``'s observations go through task ``t``'s parameters with one
  batched matmul per layer. This is how post-adaptation (per-task adapted) policies run, and how the inner
  gradient of every task is taken at once: expanding shared parameters to ``[T, ...]`` views and
  differentiating a sum of per-task losses w.r.t. the views gives per-task gradients.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["GaussianMLPPolicy", "Params", "ACTIVATIONS", "per_task", "is_per_task", "per_task_linear",
           "gaussian_log_prob", "gaussian_kl"]

Params = dict[str, torch.Tensor]

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mu: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Diagonal-Gaussian log-density summed over the last dim: ``mu, actions [..., d]``, ``log_std``
    broadcastable to them; returns ``[...]``."""
    z = (actions - mu) * torch.exp(-log_std)
    return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * mu.shape[-1] * _LOG_2PI


def gaussian_kl(mu_old: torch.Tensor, ls_old: torch.Tensor, mu: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu_old, e^ls_old) || N(mu, e^ls))`` of diagonal Gaussians, summed over the last dim: ``[...]``.

    ``KL = sum_d [ ls - ls_old + (e^{2 ls_old} + (mu_old - mu)^2) / (2 e^{2 ls}) - 1/2 ]``; ``mu_old, mu
    [..., d]``, ``ls_old, ls`` broadcastable to them.
    """
    var_ratio = torch.exp(2.0 * (ls_old - ls))
    d = (mu_old - mu) * torch.exp(-ls)
    return (ls - ls_old + 0.5 * (var_ratio + d * d) - 0.5).sum(-1)


#: a layer with at most this many outputs (and more inputs) is computed transposed, ``(W h^T)^T``: a batched product
#: whose result is narrow runs several times faster with the long dimension as its columns (measured on one core: a
#: 100-to-2 layer over 10 tasks x 400 rows, its value and a second product accumulated, 0.30 ms as ``h W^T``, 0.13
#: ms transposed)
NARROW_OUTPUT = 8


def per_task_linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                    extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-task affine map ``h w^T + b`` (``+ h2 w2^T`` with ``extra = (h2, w2)``, accumulated in place).

    Shapes: ``h, h2 [T, N, in]``, ``w, w2 [T, out, in]``, ``b [T, out]`` -> ``[T, N, out]`` (a transposed view
    when ``out <= NARROW_OUTPUT < in``)."""
    if w.shape[1] <= NARROW_OUTPUT < w.shape[2]:
        zt = torch.baddbmm(b.unsqueeze(-1), w, h.transpose(1, 2))
        if extra is not None:
            zt.baddbmm_(extra[1], extra[0].transpose(1, 2))
        return zt.transpose(1, 2)
    z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
    if extra is not None:
        z.baddbmm_(extra[0], extra[1].transpose(1, 2))
    return z


def is_per_task(params: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``params`` carry a leading task dimension (``w0`` is 3-D)."""
    return params["w0"].dim() == 3


def per_task(params: Mapping[str, torch.Tensor], num_tasks: int) -> Params:
    """Shared parameters expanded (as views, differentiably) to ``num_tasks`` per-task copies."""
    if is_per_task(params):
        return dict(params)
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


class GaussianMLPPolicy(nn.Module):
    """Diagonal-Gaussian MLP policy ``a ~ N(mu_theta(s), diag(exp(log_std))^2)``.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden_sizes: hidden layer widths (default ``(100, 100)``: the seed paper's navigation policy;
            the reference MAML-RL code uses ``(64, 64)`` with ``tanh``).
        activation: ``"relu"`` or ``"tanh"``.
        init_log_std: initial value of every entry of ``log_std``.
        generator: optional torch generator for the initialisation (Xavier-uniform weights, zero biases,
            as the reference MAML-RL code).
        dtype, device: of the parameters.

    The module holds the parameters only so that they can be saved and moved; every computation takes a
    parameter dict (:meth:`params`, or adapted / candidate parameters) as its first argument.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_log_std: float = 0.0,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.activation = activation
        self.init_log_std = float(init_log_std)
        self._act = ACTIVATIONS[activation]
        sizes = (self.obs_dim, *self.hidden_sizes, self.act_dim)
        self.num_layers = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            # drawn on the generator's device (a CPU generator can initialise a CUDA policy), then moved once
            w = torch.empty(fan_out, fan_in, dtype=dtype, device=device if generator is None else generator.device)
            bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier_uniform_
            with torch.no_grad():
                w.uniform_(-bound, bound, generator=generator)
            w = w.to(device)
            self.register_parameter(f"w{i}", nn.Parameter(w))
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(fan_out, dtype=dtype, device=device)))
        self.log_std = nn.Parameter(torch.full((self.act_dim,), self.init_log_std, dtype=dtype, device=device))

    # ---- parameters -------------------------------------------------------------------------------
    @property
    def head_pattern(self) -> str:
        """The glob pattern of the policy's head (output layer and ``log_std``): ``"w{L}|b{L}|log_std"``."""
        last = self.num_layers - 1
        return f"w{last}|b{last}|log_std"

    def params(self) -> Params:
        """``{name: nn.Parameter}``, in a fixed order (layers, then ``log_std``)."""
        return dict(self.named_parameters())

    def config(self) -> dict[str, object]:
        """Constructor arguments (for checkpoints)."""
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden_sizes": list(self.hidden_sizes),
                "activation": self.activation, "init_log_std": self.init_log_std}

    # ---- pure functions of (params, obs) ----------------------------------------------------------
    def mean(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        """Action mean ``mu_theta(s)``.

        Args:
            params: shared or per-task parameters (module docstring).
            obs: ``[..., obs_dim]`` (shared) or ``[T, ..., obs_dim]`` (per task).

        Returns:
            ``[..., act_dim]`` with the batch shape of ``obs``.
        """
        if is_per_task(params):
            t = obs.shape[0]
            h = obs.reshape(t, -1, obs.shape[-1])
            for i in range(self.num_layers):
                h = per_task_linear(h, params[f"w{i}"], params[f"b{i}"])
                if i < self.num_layers - 1:
                    h = self._act(h)
            return h.reshape(*obs.shape[:-1], self.act_dim)
        h = obs
        for i in range(self.num_layers):
            h = nn.functional.linear(h, params[f"w{i}"], params[f"b{i}"])
            if i < self.num_layers - 1:
                h = self._act(h)
        return h

    @staticmethod
    def _log_std(params: Mapping[str, torch.Tensor], batch_dims: int) -> torch.Tensor:
        """``log_std`` shaped to broadcast against ``[(T,) ..., act_dim]`` with ``batch_dims`` dims before act."""
        ls = params["log_std"]
        if ls.dim() == 2:  # per task [T, act]
            return ls.reshape(ls.shape[0], *([1] * (batch_dims - 1)), ls.shape[1])
        return ls

    def mean_log_std(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean [..., act_dim], log_std broadcastable to it)``."""
        mu = self.mean(params, obs)
        return mu, self._log_std(params, mu.dim() - 1)

    def distribution(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor) -> torch.distributions.Normal:
        """``Normal(mean, exp(log_std))`` with batch shape ``[..., act_dim]`` (independent per action dim)."""
        mu, ls = self.mean_log_std(params, obs)
        return torch.distributions.Normal(mu, ls.exp().expand_as(mu))

    def log_prob(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor, actions: torch.Tensor
                 ) -> torch.Tensor:
        """``log pi_theta(a|s)`` summed over action dims: ``[...]`` for ``obs [..., obs_dim]``."""
        mu, ls = self.mean_log_std(params, obs)
        return gaussian_log_prob(mu, ls, actions)

    def kl(self, params_old: Mapping[str, torch.Tensor], params_new: Mapping[str, torch.Tensor],
           obs: torch.Tensor) -> torch.Tensor:
        """``KL(pi_old(.|s) || pi_new(.|s))`` of the diagonal Gaussians, summed over action dims: ``[...]``.

        ``KL = sum_d [ log s_new - log s_old + (s_old^2 + (mu_old - mu_new)^2) / (2 s_new^2) - 1/2 ]``.
        """
        mu0, ls0 = self.mean_log_std(params_old, obs)
        mu1, ls1 = self.mean_log_std(params_new, obs)
        return gaussian_kl(mu0, ls0, mu1, ls1)

    def sample(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw actions and their log-probabilities: ``([..., act_dim], [...])`` (no gradient)."""
        with torch.no_grad():
            mu, ls = self.mean_log_std(params, obs)
            std = ls.exp()
            if deterministic:
                eps = torch.zeros_like(mu)
            else:
                eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            act = mu + std * eps
            logp = -0.5 * (eps * eps).sum(-1) - ls.sum(-1) * torch.ones_like(mu[..., 0]) \
                - 0.5 * self.act_dim * _LOG_2PI
        return act, logp
