"""The strided conv4's gradient and Hessian-vector product written out by hand, for many tasks at once.

What the engine's ``"analytic"`` path (:mod:`rkmeta_rl.rk.analytic`) calls for MAML's Omniglot network
(:mod:`rkmeta_rl.supervised.conv4`, ``pool="stride"``): per task ``t`` with its own parameters ``theta_t``,

* ``value_and_grad``: ``L_t(theta_t)`` and ``grad L_t`` (one forward and one backward pass), keeping what the
  Hessian-vector product needs;
* ``hvp``: ``H_t v_t = d/de grad L_t(theta_t + e v_t)`` at the kept point: one forward-mode pass through the
  forward and the backward pass (the tangent of every quantity below), with no autograd graph.

Autograd's double backward of the same network (the ``"batched"`` path) rebuilds every convolution's unfolded
image matrix and its adjoint several times over and runs one generic kernel per small step; here each layer
unfolds its input once per point, reuses it for the weight gradient and the tangent, each product is one ``bmm``
over all tasks, and the element-wise work is gathered into few passes. The equations, per block and task (``U``
the unfolded input ``[N, 9 C]`` with ``N = B Ho Wo`` output positions, sums and means over the positions of
each channel, ``M = N`` their count)::

    forward     Z = U W^T,  xh = (Z - mean Z) r,  r = (var Z + eps)^-1/2,  Y = gamma xh + beta,  A = relu(Y)
    backward    dY = [A > 0] dA,  g_gamma = sum dY xh,  g_beta = sum dY,  g_W = dZ^T U,  dU = dZ W
                dZ = r gamma (dY - g_beta / M - xh g_gamma / M)                 (batch norm's backward)
    tangent     Z' = U V_W^T + U' W^T,  s = mean(xh Z'),  xh' = r (Z' - mean Z' - xh s),  r'/r = -r s
                Y' = gamma xh' + V_gamma xh + V_beta,  A' = [A > 0] Y'
    tangent of  dY' = [A > 0] dA',  (Hv)_gamma = sum (dY' xh + dY xh'),  (Hv)_beta = sum dY'
    backward    dxh' = gamma dY' + V_gamma dY
                dZ' = (r'/r) dZ - r (xh' gamma g_gamma + xh gamma sum(dY xh')) / M
                      + r (dxh' - mean dxh' - xh mean(xh dxh'))
                (Hv)_W = dZ'^T U + dZ^T U',  dU' = dZ' W + dZ V_W,  dX' = fold(dU')

(every ``mean`` of a product with ``dY`` is a per-channel sum already at hand, so ``dZ'`` is one combination of
five tensors with per-channel coefficients). The head: ``f = mean_pixels A_4 [B, F]``, ``s = f W_fc^T + b_fc``,
``p = softmax(s)``, ``L = mean_b CE``, so ``ds = (p - onehot) / B`` and its tangent ``p (s' - <p, s'>) / B``.
ReLU's second derivative is zero almost everywhere, so its mask carries over unchanged. The first block, whose
input is data, evaluates the same equations through products with its unfolded images (:class:`_InputBlock`), and
hidden blocks form an input gradient one kernel tap at a time (:func:`fold3x3_products`).

Activations are channels-last, ``[T, N, C]`` (images ``[T, B, H, W, C]``). :func:`unfold3x3` writes the
unfolded images ``[T, B, Ho, Wo, 3, 3, C]`` with copies whose innermost runs are whole channel vectors, and
:func:`fold3x3_products` its adjoint (nine strided additions); both are several times faster on the
CPU than ``F.unfold`` / ``F.fold`` and the layout changes around them. Everything is tested against autograd in
float64 (``tests/test_conv4_analytic.py``), the Hessian-vector product also against central finite differences
of the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Conv4Analytic", "Conv4State", "unfold3x3", "fold3x3_products"]

_EPS = 1e-5
_K = 3  # kernel side
_relu_mask = torch.ops.aten.threshold_backward  # (grad, out, 0): grad where out > 0, else 0; one pass


def _out_size(size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - _K) // stride + 1


def _tap(size: int, out: int, k: int, stride: int, padding: int) -> tuple[int, int, int]:
    """For kernel offset ``k`` along one axis: ``(first, count, source)``: the outputs ``first .. first + count - 1``
    read inputs ``source, source + stride, ...`` (input ``stride * o + k - padding``); the others read padding."""
    first = 0
    while stride * first + k - padding < 0:
        first += 1
    last = out - 1
    while last >= first and stride * last + k - padding > size - 1:
        last -= 1
    return first, max(0, last - first + 1), stride * first + k - padding


def unfold3x3(x: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Unfolded channels-last images for a 3x3 convolution of every task.

    Args:
        x: ``[T, B, H, W, C]``.
        stride, padding: as ``F.conv2d``.

    Returns:
        ``[T, B * Ho * Wo, 9 * C]`` with ``out[t, (b, oh, ow), (i, j, c)] = x[t, b, s oh + i - p, s ow + j - p, c]``
        (zero outside the image): ``out @ W'^T`` is the convolution, ``W'`` the kernel matrix ``[F, 9 C]``
        (:func:`_kernel_matrix`).

    With several channels the images are first copied into a zero-bordered buffer, and one copy then reads the
    strided view of every output position's 3x3 window and writes the result in memory order (nine copies, one
    per tap, each writing 1/9 of every row of an unfolded matrix that is not in cache, took 1.2-1.3x as long
    inside the meta-gradient, and twice as long timed alone with cold caches). With one channel (data images)
    the nine strided tap copies are faster: the window's runs are single numbers.
    """
    t, b, h, w, c = x.shape
    ho, wo = _out_size(h, stride, padding), _out_size(w, stride, padding)
    if c == 1:
        return _unfold_by_taps(x, stride, padding, ho, wo)
    hp, wp = stride * (ho - 1) + _K, stride * (wo - 1) + _K  # the rows and columns the windows read
    nh, nw = min(h, hp - padding), min(w, wp - padding)     # the image's rows and columns among them
    xp = x.new_empty(t, b, hp, wp, c)
    xp[:, :, :padding].zero_()
    xp[:, :, padding + nh:].zero_()
    xp[:, :, padding:padding + nh, :padding].zero_()
    xp[:, :, padding:padding + nh, padding + nw:].zero_()
    xp[:, :, padding:padding + nh, padding:padding + nw] = x[:, :, :nh, :nw]
    s = xp.stride()
    windows = xp.as_strided((t, b, ho, wo, _K, _K, c), (s[0], s[1], stride * s[2], stride * s[3], s[2], s[3], s[4]))
    return windows.contiguous().view(t, b * ho * wo, _K * _K * c)


def _unfold_by_taps(x: torch.Tensor, stride: int, padding: int, ho: int, wo: int) -> torch.Tensor:
    """:func:`unfold3x3` as nine strided copies, one per kernel tap (the faster form for one channel)."""
    t, b, h, w, c = x.shape
    out = x.new_empty(t, b, ho, wo, _K, _K, c)
    for i in range(_K):
        r0, nr, sr = _tap(h, ho, i, stride, padding)
        for j in range(_K):
            c0, nc, sc = _tap(w, wo, j, stride, padding)
            o = out[:, :, :, :, i, j]
            if nr and nc:
                o[:, :, r0:r0 + nr, c0:c0 + nc] = x[:, :, sr:sr + stride * (nr - 1) + 1:stride,
                                                    sc:sc + stride * (nc - 1) + 1:stride]
            if r0:
                o[:, :, :r0] = 0
            if r0 + nr < ho:
                o[:, :, r0 + nr:] = 0
            if c0:
                o[:, :, :, :c0] = 0
            if c0 + nc < wo:
                o[:, :, :, c0 + nc:] = 0
    return out.view(t, b * ho * wo, _K * _K * c)


def fold3x3_products(terms: Sequence[tuple[torch.Tensor, torch.Tensor]], batch: int, size: tuple[int, int],
                     stride: int, padding: int) -> torch.Tensor:
    """``fold(sum_i dZ_i K_i^T)``, the gradient of a convolution's input: the adjoint of :func:`unfold3x3` applied
    to a sum of products, one kernel tap at a time.

    Args:
        terms: ``((dZ_i [T, N, F], K_i [T, F, 9 C]), ...)``, ``K_i`` in :func:`_kernel_matrix`'s layout.
        batch, size: ``B`` and ``(H, W)`` of the input.
        stride, padding: as ``F.conv2d``.

    Returns:
        ``[T, B, H, W, C]`` with ``<unfold3x3(x), sum_i dZ_i K_i> = <x, result>`` for every ``x``. Each tap's
        ``[T, N, C]`` part is added into place while it is still in cache: the ``[T, N, 9 C]`` product is never
        materialised (18 MB for the conv4's second block at the paper's protocol).
    """
    dz0, k0 = terms[0]
    t, _, f = dz0.shape
    c = k0.shape[2] // (_K * _K)
    h, w = size
    ho, wo = _out_size(h, stride, padding), _out_size(w, stride, padding)
    out = dz0.new_zeros(t, batch, h, w, c)
    taps = [k.view(t, f, _K, _K, c) for _, k in terms]
    for i in range(_K):
        r0, nr, sr = _tap(h, ho, i, stride, padding)
        for j in range(_K):
            c0, nc, sc = _tap(w, wo, j, stride, padding)
            if not (nr and nc):
                continue
            part = torch.bmm(dz0, taps[0][:, :, i, j])
            for (dz, _), kt in zip(terms[1:], taps[1:]):
                part.baddbmm_(dz, kt[:, :, i, j])
            out[:, :, sr:sr + stride * (nr - 1) + 1:stride, sc:sc + stride * (nc - 1) + 1:stride] += \
                part.view(t, batch, ho, wo, c)[:, :, r0:r0 + nr, c0:c0 + nc]
    return out


def _kernel_matrix(w: torch.Tensor) -> torch.Tensor:
    """Per-task kernels ``[T, F, C, 3, 3]`` as the kernel matrix ``[T, F, 9 C]`` (columns in :func:`unfold3x3`'s
    order): a view when ``w`` is in :meth:`Conv4Analytic.prepare`'s layout (as every tensor of the engine's
    program then is), a copy otherwise. Stored this way (each filter's window contiguous), the weight gradient
    ``dZ^T U`` runs 1.6x faster than ``U^T dZ`` into a ``[9 C, F]`` layout (measured at the conv4's second block),
    and the forward product ``U K^T`` and the input gradient's tap products ``dZ K_tap`` as fast."""
    t, f = w.shape[:2]
    return w.permute(0, 1, 3, 4, 2).reshape(t, f, -1)


def _kernel_grad(g: torch.Tensor, c: int) -> torch.Tensor:
    """``[T, F, 9 C]`` (:func:`_kernel_matrix`'s layout) -> ``[T, F, C, 3, 3]``, a view in
    :meth:`Conv4Analytic.prepare`'s layout when ``g`` is contiguous."""
    t, f, _ = g.shape
    return g.reshape(t, f, _K, _K, c).permute(0, 1, 4, 2, 3)


def _col(x: torch.Tensor) -> torch.Tensor:
    """Per-task per-channel ``[T, F]`` -> ``[T, 1, F]`` for broadcasting over positions."""
    return x[:, None, :]


@dataclass
class _Tangent:
    """A block's forward-tangent quantities that its tangent backward pass reads."""

    vk: torch.Tensor                    # V_W as [T, F, 9 C]
    rr: torch.Tensor                    # r'/r = -r mean(xh Z')  [T, 1, F]
    u_dot: torch.Tensor | None = None   # hidden block: the unfolded input's tangent
    xh_dot: torch.Tensor | None = None  # hidden block: xh'
    q: torch.Tensor | None = None       # input block: xh' = (U - mean U) q, q [T, 9 C, F]


class _HiddenBlock:
    """A block whose input depends on the parameters: everything per position (the module docstring's equations).

    Args:
        h: input ``[T, B, H, W, C]``; wk: kernel matrix ``[T, F, 9 C]``; bias: ``[T, F]`` or None; gamma, beta:
        ``[T, F]``; eps: batch-norm epsilon.
    """

    def __init__(self, h: torch.Tensor, wk: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor,
                 beta: torch.Tensor, eps: float) -> None:
        self.in_shape = tuple(h.shape[1:])  # (B, H, W, C)
        self.u = unfold3x3(h, 2, 1)  # [T, N, 9 C]
        self.wk, self.gamma = wk, _col(gamma)
        z = torch.bmm(self.u, wk.mT)  # [T, N, F]
        if bias is not None:
            z = z + _col(bias)
        # centred two-pass statistics (torch.var_mean over a non-innermost dimension is 4x slower here)
        xh = z - z.mean(1, keepdim=True)
        self.r = torch.rsqrt((xh * xh).mean(1, keepdim=True) + eps)
        self.xh = xh.mul_(self.r)
        self.a = torch.addcmul(_col(beta), self.xh, self.gamma).relu_()
        self.m = self.xh.shape[1]

    def _input_grad(self, *terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The input's gradient ``[T, B H W, C]`` from ``((dZ_i, K_i), ...)`` (:func:`fold3x3_products`)."""
        b, h, w, c = self.in_shape
        return fold3x3_products(terms, b, (h, w), 2, 1).view(terms[0][0].shape[0], b * h * w, c)

    def backward(self, da: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(g_W [T, F, 9 C], g_bias, g_gamma, g_beta [T, F], dA of the input [T, N_in, C])``."""
        m = self.m
        dy = _relu_mask(da, self.a, 0)
        g_gamma = (dy * self.xh).sum(1, keepdim=True)
        g_beta = dy.sum(1, keepdim=True)
        rg = self.r * self.gamma
        dz = torch.addcmul(-rg * g_beta / m, dy, rg).addcmul_(self.xh, rg * g_gamma, value=-1.0 / m)
        self.dy, self.dz, self.g_gamma, self.g_beta = dy, dz, g_gamma, g_beta
        gw = torch.bmm(dz.mT, self.u)
        return gw, dz.sum(1), g_gamma[:, 0], g_beta[:, 0], self._input_grad((dz, self.wk))

    def tangent(self, a_dot: torch.Tensor, vk: torch.Tensor, v_bias: torch.Tensor | None, v_gamma: torch.Tensor,
                v_beta: torch.Tensor) -> tuple[torch.Tensor, _Tangent]:
        """``(A', kept)`` from the input's tangent ``a_dot [T, N_in, C]`` and the direction's block parameters."""
        b, h, w, c = self.in_shape
        u_dot = unfold3x3(a_dot.view(a_dot.shape[0], b, h, w, c), 2, 1)
        z_dot = torch.bmm(self.u, vk.mT).baddbmm_(u_dot, self.wk.mT)
        if v_bias is not None:
            z_dot = z_dot + _col(v_bias)
        s = (self.xh * z_dot).mean(1, keepdim=True)
        xh_dot = torch.addcmul(-self.r * z_dot.mean(1, keepdim=True), z_dot, self.r).addcmul_(self.xh, -self.r * s)
        y_dot = torch.addcmul(_col(v_beta), self.xh, _col(v_gamma)).addcmul_(xh_dot, self.gamma)
        return _relu_mask(y_dot, self.a, 0), _Tangent(vk=vk, rr=-self.r * s, u_dot=u_dot, xh_dot=xh_dot)

    def tangent_backward(self, tan: _Tangent, da_dot: torch.Tensor, v_gamma: torch.Tensor
                         ) -> tuple[torch.Tensor, ...]:
        """``((Hv)_W [T, F, 9 C], (Hv)_bias, (Hv)_gamma, (Hv)_beta [T, F], dA' of the input)``."""
        m, r, gamma, vg = self.m, self.r, self.gamma, _col(v_gamma)
        xh_dot, u_dot = tan.xh_dot, tan.u_dot
        assert xh_dot is not None and u_dot is not None
        dy_dot = _relu_mask(da_dot, self.a, 0)
        sum_dyd_xh = (dy_dot * self.xh).sum(1, keepdim=True)
        sum_dy_xhd = (self.dy * xh_dot).sum(1, keepdim=True)
        sum_dyd = dy_dot.sum(1, keepdim=True)
        # dxh' = gamma dY' + V_gamma dY: its mean and its mean against xh from the sums above
        mean_dxhd = (gamma * sum_dyd + vg * self.g_beta) / m
        mean_xh_dxhd = (gamma * sum_dyd_xh + vg * self.g_gamma) / m
        dz_dot = torch.addcmul(-r * mean_dxhd, self.dz, tan.rr)
        dz_dot.addcmul_(xh_dot, -r * gamma * self.g_gamma / m)
        dz_dot.addcmul_(self.xh, -r * (gamma * sum_dy_xhd / m + mean_xh_dxhd))
        dz_dot.addcmul_(dy_dot, r * gamma)
        dz_dot.addcmul_(self.dy, r * vg)
        hw = torch.bmm(dz_dot.mT, self.u).baddbmm_(self.dz.mT, u_dot)
        return (hw, dz_dot.sum(1), (sum_dyd_xh + sum_dy_xhd)[:, 0], sum_dyd[:, 0],
                self._input_grad((dz_dot, self.wk), (self.dz, tan.vk)))


class _InputBlock:
    """The first block: its unfolded input ``U`` is data, so every per-position quantity is a product with ``U``.

    With ``Uc = U - mean U`` and the covariance ``C = Uc^T Uc / M`` (``[9 C, 9 C]`` per task, tiny), ``Z - mean Z
    = Uc W^T`` (a bias cancels), ``var Z = diag(W C W^T)``, ``U^T xh = M r C W^T``, and every sum over positions of
    ``dY`` times ``xh`` (or ``xh'``) follows from ``U^T dY``. The forward pass, the backward pass and their tangents
    each touch the ``[T, N, F]`` activations twice (one product with ``[U, 1]``, one ReLU mask), instead of about
    ten element-wise passes; the first block has the largest activations, so this is most of the element-wise
    work of the whole program.
    """

    def __init__(self, x: torch.Tensor, wk: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                 eps: float) -> None:
        u = unfold3x3(x, 2, 1)  # [T, N, K]
        t, n, _ = u.shape
        wk = wk.mT  # [T, K, F]: this block's products are with U^T
        self.m, self.wk, self.gamma = n, wk, _col(gamma)
        self.u_aug = torch.cat([u, u.new_ones(t, n, 1)], dim=2)  # [U, 1]: U^T dY and sum dY in one product
        self.m_u = u.mean(1, keepdim=True)  # [T, 1, K]
        uc = u - self.m_u
        self.cov = torch.bmm(uc.transpose(1, 2), uc) / n  # [T, K, K]
        self.cw = torch.bmm(self.cov, wk)  # C W^T [T, K, F]
        self.r = torch.rsqrt((self.cw * wk).sum(1, keepdim=True) + eps)  # [T, 1, F]
        self.mw = torch.bmm(self.m_u, wk)  # mean(U) W^T = mean Z - bias [T, 1, F]
        gr = self.gamma * self.r
        # Y = gamma r Uc W^T + beta = [U, 1] [gamma r W^T; beta - gamma r mean(U) W^T]
        self.a = torch.bmm(self.u_aug, torch.cat([wk * gr, _col(beta) - gr * self.mw], dim=1)).relu_()

    def backward(self, da: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(g_W [T, F, K], g_bias (zero: a bias before batch norm cancels), g_gamma, g_beta [T, F], None)``."""
        dy = _relu_mask(da, self.a, 0)
        prod = torch.bmm(self.u_aug.transpose(1, 2), dy)  # [T, K + 1, F]
        self.ut_dy, self.g_beta = prod[:, :-1], prod[:, -1:]
        self.g_gamma = self.r * ((self.ut_dy * self.wk).sum(1, keepdim=True) - self.g_beta * self.mw)
        # U^T dZ = r gamma (U^T dY - mean(U)^T g_beta - r C W^T g_gamma)
        gw = self.r * self.gamma * (self.ut_dy - self.m_u.transpose(1, 2) * self.g_beta
                                    - self.r * self.cw * self.g_gamma)
        return gw.mT, torch.zeros_like(self.g_beta[:, 0]), self.g_gamma[:, 0], self.g_beta[:, 0], None

    def tangent(self, vk: torch.Tensor, v_gamma: torch.Tensor, v_beta: torch.Tensor
                ) -> tuple[torch.Tensor, _Tangent]:
        """``(A', kept)`` for the direction's block parameters (a bias direction cancels in batch norm)."""
        vt = vk.mT  # [T, K, F]
        s = self.r * (self.cw * vt).sum(1, keepdim=True)  # mean(xh Z') = r w^T C v
        gr = self.gamma * self.r
        a2 = (_col(v_gamma) - gr * s) * self.r  # Y' = Uc (gamma r V^T + a2 W^T) + V_beta
        mv = torch.bmm(self.m_u, vt)
        w_aug = torch.cat([gr * vt + a2 * self.wk, _col(v_beta) - gr * mv - a2 * self.mw], dim=1)
        y_dot = torch.bmm(self.u_aug, w_aug)
        q = self.r * (vt - self.r * s * self.wk)  # xh' = r (Z' - mean Z' - xh s) = Uc q
        return _relu_mask(y_dot, self.a, 0), _Tangent(vk=vk, rr=-self.r * s, q=q)

    def tangent_backward(self, tan: _Tangent, da_dot: torch.Tensor, v_gamma: torch.Tensor
                         ) -> tuple[torch.Tensor, ...]:
        """``((Hv)_W [T, F, K], (Hv)_bias, (Hv)_gamma, (Hv)_beta [T, F], None)``: the hidden block's ``dZ'``
        written as ``c1 dY' + c2 dY + c3 xh' + c4 xh + c5`` and multiplied by ``U^T`` term by term."""
        m, r, gamma, vg, q = self.m, self.r, self.gamma, _col(v_gamma), tan.q
        assert q is not None
        dy_dot = _relu_mask(da_dot, self.a, 0)
        prod = torch.bmm(self.u_aug.transpose(1, 2), dy_dot)
        ut_dyd, sum_dyd = prod[:, :-1], prod[:, -1:]
        sum_dyd_xh = r * ((ut_dyd * self.wk).sum(1, keepdim=True) - sum_dyd * self.mw)
        sum_dy_xhd = (self.ut_dy * q).sum(1, keepdim=True) - self.g_beta * torch.bmm(self.m_u, q)
        mean_dxhd = (gamma * sum_dyd + vg * self.g_beta) / m
        mean_xh_dxhd = (gamma * sum_dyd_xh + vg * self.g_gamma) / m
        rg, rr = r * gamma, tan.rr
        c_dyd = rg
        c_dy = rr * rg + r * vg
        c_xhd = -rg * self.g_gamma / m
        c_xh = -rr * rg * self.g_gamma / m - r * (gamma * sum_dy_xhd / m + mean_xh_dxhd)
        c_1 = -rr * rg * self.g_beta / m - r * mean_dxhd
        # U^T dY' , U^T dY, U^T xh' = M C q, U^T xh = M r C W^T, U^T 1 = M mean(U)^T
        hw = (ut_dyd * c_dyd + self.ut_dy * c_dy + (m * c_xhd) * torch.bmm(self.cov, q)
              + (m * r * c_xh) * self.cw + m * self.m_u.transpose(1, 2) * c_1)
        h_bias = c_dyd * sum_dyd + c_dy * self.g_beta + m * c_1  # sum dZ' (xh and xh' sum to zero)
        return hw.mT, h_bias[:, 0], (sum_dyd_xh + sum_dy_xhd)[:, 0], sum_dyd[:, 0], None


@dataclass
class Conv4State:
    """What :meth:`Conv4Analytic.hvp` needs from :meth:`Conv4Analytic.value_and_grad` at one point."""

    params: dict[str, torch.Tensor]
    blocks: list[_InputBlock | _HiddenBlock]
    feats: torch.Tensor    # [T, B, F] head input
    probs: torch.Tensor    # [T, B, N] softmax
    ds: torch.Tensor       # [T, B, N] d loss / d logits
    pixels: int            # pixels per image of the last block


class Conv4Analytic:
    """Hand-written value, gradient and Hessian-vector product of the strided conv4's cross-entropy per task.

    Args:
        images, labels: keys of the task batch (``"xs"``, ``"ys"`` for the support loss, ``"xq"``, ``"yq"``
            for the query loss): images ``[T, B, C, H, W]``, labels ``[T, B]``.
        eps: batch-norm epsilon.

    Parameters are ``{name: [T, *shape]}`` with the names of :func:`rkmeta_rl.supervised.conv4.init_conv4`
    (``pool="stride"``, 3x3 kernels; optional ``conv{i}.bias``). Every method returns per-task values: ``loss
    [T]``, gradients and products ``{name: [T, *shape]}`` (each task's own, not summed).
    """

    def __init__(self, images: str, labels: str, eps: float = _EPS) -> None:
        self.images, self.labels, self.eps = images, labels, eps

    @staticmethod
    def prepare(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same values with every kernel ``[..., F, C, 3, 3]`` stored as ``[..., F, 3, 3, C]`` (a permuted
        view; PyTorch's ``channels_last`` for a convolution's weight): the layout in which :func:`_kernel_matrix`
        is a view, and which element-wise arithmetic on such tensors (the inner step, sums of gradients and
        products) keeps."""
        out: dict[str, torch.Tensor] = {}
        for k, v in params.items():
            if k.endswith(".weight") and v.dim() >= 4:
                n = v.dim()
                lead = tuple(range(n - 4))
                v = v.permute(*lead, n - 4, n - 2, n - 1, n - 3).contiguous().permute(*lead, n - 4, n - 1, n - 3,
                                                                                        n - 2)
            out[k] = v
        return out

    def _forward(self, p: Mapping[str, torch.Tensor], x: torch.Tensor
                 ) -> tuple[torch.Tensor, list[_InputBlock | _HiddenBlock], torch.Tensor, int]:
        """Logits ``[T, B, N]``, the blocks, the head input ``[T, B, F]`` and its pixels per image."""
        t, b = x.shape[:2]
        h = x.permute(0, 1, 3, 4, 2)  # [T, B, H, W, C] (a view for one channel)
        blocks: list[_InputBlock | _HiddenBlock] = []
        i = 1
        while f"conv{i}.weight" in p:
            w = p[f"conv{i}.weight"]
            if w.shape[-2:] != (_K, _K):
                raise ValueError(f"the analytic conv4 takes 3x3 kernels; conv{i}.weight is {tuple(w.shape[1:])}")
            _, _, hh, ww, _ = h.shape
            wk = _kernel_matrix(w)
            gamma, beta = p[f"bn{i}.weight"], p[f"bn{i}.bias"]
            blk = (_InputBlock(h, wk, gamma, beta, self.eps) if i == 1
                   else _HiddenBlock(h, wk, p.get(f"conv{i}.bias"), gamma, beta, self.eps))
            blocks.append(blk)
            h = blk.a.view(t, b, _out_size(hh, 2, 1), _out_size(ww, 2, 1), -1)
            i += 1
        pixels = h.shape[2] * h.shape[3]
        feats = h.mean(dim=(2, 3))  # [T, B, F]
        logits = torch.baddbmm(p["fc.bias"][:, None, :], feats, p["fc.weight"].transpose(1, 2))
        return logits, blocks, feats, pixels

    @staticmethod
    def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t, b, n = logits.shape
        return F.cross_entropy(logits.reshape(t * b, n), labels.reshape(t * b), reduction="none"
                               ).reshape(t, b).mean(1)

    @staticmethod
    def _spread(df: torch.Tensor, pixels: int) -> torch.Tensor:
        """d loss / d features ``[T, B, F]`` -> d loss / d A_4 ``[T, B * pixels, F]`` (through the spatial mean)."""
        t, b, f = df.shape
        return (df / pixels)[:, :, None, :].expand(t, b, pixels, f).reshape(t, b * pixels, f)

    def logits(self, params: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Every task's logits ``[T, B, N]`` for images ``[T, B, C, H, W]`` (forward only)."""
        return self._forward(params, images)[0]

    def value(self, params: Mapping[str, torch.Tensor], tasks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-task loss ``[T]`` (forward only)."""
        logits = self._forward(params, tasks[self.images])[0]
        return self._loss(logits, tasks[self.labels])

    def value_and_grad(self, params: Mapping[str, torch.Tensor], tasks: Mapping[str, torch.Tensor], *,
                       keep: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor], Conv4State | None]:
        """Per-task loss ``[T]``, gradients ``{name: [T, *shape]}`` and (``keep``) the state for :meth:`hvp`."""
        p = dict(params)
        logits, blocks, feats, pixels = self._forward(p, tasks[self.images])
        labels = tasks[self.labels]
        loss = self._loss(logits, labels)
        b = logits.shape[1]
        probs = torch.softmax(logits, dim=-1)
        ds = probs.scatter_add(2, labels[..., None], torch.full_like(probs[..., :1], -1.0)).div_(b)
        g: dict[str, torch.Tensor] = {"fc.weight": torch.bmm(ds.transpose(1, 2), feats), "fc.bias": ds.sum(1)}
        da = self._spread(torch.bmm(ds, p["fc.weight"]), pixels)
        for i in range(len(blocks), 0, -1):
            gw, gb, gg, gbeta, da = blocks[i - 1].backward(da)
            c = p[f"conv{i}.weight"].shape[2]
            g[f"conv{i}.weight"], g[f"bn{i}.weight"], g[f"bn{i}.bias"] = _kernel_grad(gw, c), gg, gbeta
            if f"conv{i}.bias" in p:
                g[f"conv{i}.bias"] = gb
        grads = {k: g[k] for k in p}
        state = Conv4State(params=p, blocks=blocks, feats=feats, probs=probs, ds=ds, pixels=pixels) if keep else None
        return loss, grads, state

    def hvp(self, state: Conv4State, v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: H_t v_t}``: each task's Hessian of its loss at the state's point times its vector ``v_t``."""
        p, blocks = state.params, state.blocks
        b = state.feats.shape[1]
        out: dict[str, torch.Tensor] = {}
        tans: list[_Tangent] = []
        a_dot = None
        for i, blk in enumerate(blocks, start=1):
            vk = _kernel_matrix(v[f"conv{i}.weight"])
            if isinstance(blk, _InputBlock):
                a_dot, tan = blk.tangent(vk, v[f"bn{i}.weight"], v[f"bn{i}.bias"])
            else:
                assert a_dot is not None
                a_dot, tan = blk.tangent(a_dot, vk, v.get(f"conv{i}.bias"), v[f"bn{i}.weight"], v[f"bn{i}.bias"])
            tans.append(tan)
        assert a_dot is not None
        # the head and its backward pass, differentiated
        f_dot = a_dot.view(a_dot.shape[0], b, state.pixels, -1).mean(2)  # [T, B, F]
        s_dot = torch.baddbmm(v["fc.bias"][:, None, :], f_dot, p["fc.weight"].transpose(1, 2))
        s_dot.baddbmm_(state.feats, v["fc.weight"].transpose(1, 2))
        pr = state.probs
        ds_dot = pr * (s_dot - (pr * s_dot).sum(2, keepdim=True)) / b
        out["fc.weight"] = torch.bmm(ds_dot.transpose(1, 2), state.feats).baddbmm_(state.ds.transpose(1, 2), f_dot)
        out["fc.bias"] = ds_dot.sum(1)
        da_dot = self._spread(torch.bmm(ds_dot, p["fc.weight"]).baddbmm_(state.ds, v["fc.weight"]), state.pixels)
        for i in range(len(blocks), 0, -1):
            hw, hb, hg, hbeta, da_dot = blocks[i - 1].tangent_backward(tans[i - 1], da_dot, v[f"bn{i}.weight"])
            c = p[f"conv{i}.weight"].shape[2]
            out[f"conv{i}.weight"], out[f"bn{i}.weight"], out[f"bn{i}.bias"] = _kernel_grad(hw, c), hg, hbeta
            if f"conv{i}.bias" in p:
                out[f"conv{i}.bias"] = hb
        return {k: out[k] for k in p}
