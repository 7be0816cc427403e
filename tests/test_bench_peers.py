"""``scripts/bench_peers.py``: its ``torch.nn`` conv4 is rkmeta-rl's conv4, a source tree loads without the
package's ``__init__`` files, and the harness runs end to end and compares meta-gradients; learn2learn itself is
not installed in CI, so a small stand-in with learn2learn's MAML interface (``clone``, ``adapt``) plays it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_script

from rkmeta_rl.supervised.conv4 import conv4_forward, init_conv4
from rkmeta_rl.supervised.mlp import init_mlp, mlp_forward

# learn2learn's MAML interface, second order, written with torch.func: what the harness calls, nothing more
STAND_IN = '''
import torch
from torch.func import functional_call


class MAML(torch.nn.Module):
    def __init__(self, model, lr, first_order=False, params=None):
        super().__init__()
        self.module, self.lr = model, lr
        self.fast = dict(model.named_parameters()) if params is None else params

    def forward(self, x):
        return functional_call(self.module, self.fast, (x,))

    def clone(self):
        return MAML(self.module, self.lr, params=dict(self.fast))

    def adapt(self, loss):
        names = list(self.fast)
        grads = torch.autograd.grad(loss, [self.fast[k] for k in names], create_graph=True)
        self.fast = {k: self.fast[k] - self.lr * g for k, g in zip(names, grads)}
'''


def load() -> ModuleType:
    return load_script("bench_peers")


@pytest.fixture
def clean_modules() -> object:
    saved = {k: v for k, v in sys.modules.items() if k == "learn2learn" or k.startswith("learn2learn.")}
    yield
    for k in [k for k in sys.modules if k == "learn2learn" or k.startswith("learn2learn.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _source_tree(tmp_path: Path) -> Path:
    pkg = tmp_path / "learn2learn-x" / "learn2learn"
    (pkg / "algorithms").mkdir(parents=True)
    # the real package's __init__ files import compiled parts: they must not run
    (pkg / "__init__.py").write_text("raise ImportError('the package __init__ ran')\n")
    (pkg / "algorithms" / "__init__.py").write_text("raise ImportError('the algorithms __init__ ran')\n")
    (pkg / "algorithms" / "maml.py").write_text(STAND_IN)
    (pkg / "_version.py").write_text("__version__ = '9.9.9'\n")
    return pkg.parent


def test_the_nn_conv4_is_the_functional_conv4() -> None:
    params = init_conv4(1, 5, filters=8, pool="stride", image_size=28, generator=torch.Generator().manual_seed(0))
    model = load().Conv4(params)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model(x), conv4_forward(params, x), rtol=0, atol=1e-5)


def test_without_learn2learn_it_says_so_and_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      clean_modules: object) -> None:
    assert load().main(["--learn2learn-src", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "learn2learn is not available" in lines[0]
    out = json.loads(lines[-1])
    assert out["learn2learn"] is None and "maml.py" in out["reason"]


@pytest.mark.parametrize("workload", ["omniglot", "sinusoid"])
def test_the_harness_runs_and_both_sides_compute_the_same_meta_gradient(
        workload: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_modules: object) -> None:
    src = _source_tree(tmp_path)
    flags = ["--workload", workload, "--learn2learn-src", str(src), "--rounds", "1", "--warmup", "0", "--block", "2",
             "--warmup-max-s", "0"]
    assert load().main(flags) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["workload"] == workload
    assert out["max_rel_diff"] < 1e-4  # a second-order MAML written independently agrees with meta_gradient
    assert out["learn2learn_version"] == "9.9.9"
    if workload == "omniglot":
        assert out["rkmeta_path"] == "analytic"
    for side in ("learn2learn", "rkmeta", "loop"):
        assert out[f"{side}_s_per_iter"] > 0


def test_the_nn_mlp_is_the_functional_mlp() -> None:
    params = init_mlp((1, 40, 40, 1), generator=torch.Generator().manual_seed(0))
    x = torch.rand(10, 1, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(load().MLP(params)(x), mlp_forward(params, x), rtol=0, atol=1e-6)


def test_bad_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load().main(["--rounds", "0"])
    assert exc.value.code == 2 and "--rounds and --block must be >= 1" in capsys.readouterr().err
