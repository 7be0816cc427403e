"""``compile="auto"`` (the default of ``meta_gradient``): when it compiles, the cache per loss functions and
settings, the eager fallback with a warning, and the compiled default path against the plain loop."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest
import torch

from rkmeta_rl.rk import autocompile, meta_gradient

SIZES = [(1, 8), (8, 8), (8, 1)]


def net(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(len(SIZES)):
        h = h @ p[f"w{i}"].T + p[f"b{i}"]
        if i < len(SIZES) - 1:
            h = torch.tanh(h)
    return h


def support_loss(p: dict[str, torch.Tensor], d: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((net(p, d["xs"]) - d["ys"]) ** 2).mean()


def query_loss(p: dict[str, torch.Tensor], d: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((net(p, d["xq"]) - d["yq"]) ** 2).mean()


def other_query_loss(p: dict[str, torch.Tensor], d: dict[str, torch.Tensor]) -> torch.Tensor:
    return (net(p, d["xq"]) - d["yq"]).abs().mean()


def make(n_tasks: int = 4, dtype: torch.dtype = torch.float32, seed: int = 0
         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    params = {}
    for i, (fi, fo) in enumerate(SIZES):
        params[f"w{i}"] = (torch.randn(fo, fi, generator=g) * 0.7).to(dtype)
        params[f"b{i}"] = (torch.randn(fo, generator=g) * 0.1).to(dtype)
    data = {k: torch.randn(n_tasks, 5, 1, generator=g).to(dtype) for k in ("xs", "ys", "xq", "yq")}
    return params, data


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts with no compiled program or count, under the rule (``RKMETA_COMPILE`` unset)."""
    monkeypatch.delenv(autocompile.ENV_VAR, raising=False)
    autocompile.clear()
    yield
    autocompile.clear()


class FakeCompile:
    """Stands in for ``torch.compile``: records each compilation and each call of a "compiled" program."""

    def __init__(self, fail_compile: bool = False, fail_call: bool = False) -> None:
        self.builds = 0
        self.calls = 0
        self.fail_compile, self.fail_call = fail_compile, fail_call

    def __call__(self, fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
        if self.fail_compile:
            raise RuntimeError("no compiler here")
        self.builds += 1

        def compiled(*args: Any) -> Any:
            self.calls += 1
            if self.fail_call:
                raise RuntimeError("backend exploded")
            return fn(*args)

        return compiled


def call(params: dict[str, torch.Tensor], data: dict[str, torch.Tensor], q: Callable[..., Any] = query_loss,
         **kw: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    return meta_gradient(params, support_loss, q, data, "ralston", 0.05, path="vmap", **kw)


def test_bad_settings_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    params, data = make()
    with pytest.raises(ValueError, match="compile must be True, False or 'auto', got 'yes'"):
        call(params, data, compile="yes")
    monkeypatch.setenv(autocompile.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="RKMETA_COMPILE must be 0, 1 or auto, got 'sometimes'"):
        call(params, data)


def test_what_auto_never_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    params, data = make()
    assert autocompile.auto_blocker(params, data) is None
    conv = dict(params, conv=torch.zeros(4, 1, 3, 3))
    assert "convolution" in autocompile.auto_blocker(conv, data)
    p64, d64 = make(dtype=torch.float64)
    assert "float32" in autocompile.auto_blocker(p64, d64)
    assert "float32" in autocompile.auto_blocker(params, {k: v.double() for k, v in data.items()})
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    assert "torch.distributed" in autocompile.auto_blocker(params, data)
    monkeypatch.setenv(autocompile.ENV_VAR, "0")
    assert autocompile.auto_blocker(params, data) == "RKMETA_COMPILE=0"


def test_auto_compiles_after_enough_eager_use_once_per_program(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(autocompile, "AUTO_MIN_CALLS", 3)
    monkeypatch.setattr(autocompile, "AUTO_MIN_EAGER_SECONDS", 0.0)
    params, data = make()
    for _ in range(3):
        call(params, data)
    assert (fake.builds, fake.calls) == (0, 0)  # three eager calls first
    call(params, data)
    call(params, data)
    assert (fake.builds, fake.calls) == (1, 2)  # compiled on the fourth, reused on the fifth
    # other loss functions are another program: counted and compiled on their own
    for _ in range(3):
        call(params, data, q=other_query_loss)
    assert fake.builds == 1
    call(params, data, q=other_query_loss)
    assert (fake.builds, fake.calls) == (2, 3)
    # other settings (inner_lr) are another program too
    meta_gradient(params, support_loss, query_loss, data, "ralston", 0.07, path="vmap")
    assert fake.builds == 2
    # a new shape of a compiled program is counted anew (it would recompile) before the program answers it
    _, data8 = make(n_tasks=8)
    for _ in range(3):
        call(params, data8)
    assert (fake.builds, fake.calls) == (2, 3)
    call(params, data8)
    assert (fake.builds, fake.calls) == (2, 4)
    assert autocompile.compiled_programs() == 2


def test_auto_waits_for_eager_seconds_and_never_compiles_what_it_must_not(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(autocompile, "AUTO_MIN_CALLS", 1)
    monkeypatch.setattr(autocompile, "AUTO_MIN_EAGER_SECONDS", 1e9)
    params, data = make()
    for _ in range(5):
        call(params, data)
    assert fake.builds == 0  # not enough eager seconds yet
    monkeypatch.setattr(autocompile, "AUTO_MIN_EAGER_SECONDS", 0.0)
    p64, d64 = make(dtype=torch.float64)
    counted = len(autocompile._COUNTS)
    for _ in range(3):
        call(p64, d64)
        call(params, data, compile=False)
        meta_gradient(params, support_loss, query_loss, data, "ralston", 0.05, path="loop")
    assert fake.builds == 0  # float64, compile=False and the loop path stay eager
    assert len(autocompile._COUNTS) == counted  # and are not counted (their loss functions are not kept alive)
    monkeypatch.setenv(autocompile.ENV_VAR, "0")
    call(params, data)
    assert fake.builds == 0
    call(params, data, compile=True)  # an explicit request still compiles
    assert fake.builds == 1
    monkeypatch.setenv(autocompile.ENV_VAR, "1")
    call(params, data, q=other_query_loss)  # RKMETA_COMPILE=1: on the first call
    assert fake.builds == 2


@pytest.mark.parametrize("where", ["compile", "first call"])
@pytest.mark.parametrize("mode", [True, "auto"])
def test_a_failed_compile_warns_and_answers_eagerly(monkeypatch: pytest.MonkeyPatch, where: str, mode: Any) -> None:
    params, data = make()
    ref, ref_stats = call(params, data, compile=False)
    fake = FakeCompile(fail_compile=where == "compile", fail_call=where == "first call")
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setenv(autocompile.ENV_VAR, "1")
    with pytest.warns(RuntimeWarning, match="torch.compile of the meta-gradient failed .*RuntimeError: "
                      "(no compiler here|backend exploded).*eager"):
        g, st = call(params, data, compile=mode)
    for k in params:
        assert torch.equal(g[k], ref[k])  # the eager program answered
    assert st == ref_stats
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g2, _ = call(params, data, compile=mode)  # no second attempt, no second warning
    assert fake.builds == (1 if where == "first call" else 0) and fake.calls == (1 if where == "first call" else 0)
    assert all(torch.equal(g2[k], ref[k]) for k in params)
    assert autocompile.compiled_programs() == 0


def test_compiled_default_path_equals_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torch.compile, reached by the default (``compile="auto"``), against the plain per-task loop in
    float32, and the float32 loop against float64."""
    monkeypatch.setenv(autocompile.ENV_VAR, "1")
    params, data = make(n_tasks=6, seed=3)
    loop, loop_stats = meta_gradient(params, support_loss, query_loss, data, "ralston", 0.05, path="loop")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide the compiled program
        g, st = meta_gradient(params, support_loss, query_loss, data, "ralston", 0.05)
    assert autocompile.compiled_programs() == 1
    for k in params:
        torch.testing.assert_close(g[k], loop[k], rtol=1e-4, atol=1e-6)
    for k, v in loop_stats.items():
        assert st[k] == pytest.approx(v, rel=1e-5)
    p64 = {k: v.double() for k, v in params.items()}
    d64 = {k: v.double() for k, v in data.items()}
    exact, _ = meta_gradient(p64, support_loss, query_loss, d64, "ralston", 0.05, path="loop")
    for k in params:
        torch.testing.assert_close(g[k].double(), exact[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("setting,builds", [(None, 1), (False, 0), (True, 1)])
def test_the_trainer_passes_its_compile_setting(monkeypatch: pytest.MonkeyPatch, setting: Any, builds: int) -> None:
    """``MetaTrainConfig.compile``: None (default) is ``compile="auto"``, False never, True always."""
    from rkmeta_rl.supervised.config import MetaTrainConfig
    from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
    from rkmeta_rl.supervised.trainer import MetaTrainer

    fake = FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setenv(autocompile.ENV_VAR, "1")  # auto compiles on the first call
    tr = MetaTrainer(SinusoidProblem(), MetaTrainConfig(meta_batch_size=3, compile=setting, eval_interval=0))
    assert MetaTrainConfig().compile is None
    tr.step()
    tr.step()
    assert fake.builds == builds and fake.calls == 2 * builds
