"""Worker of ``tests/test_distributed_rl.py``: run under torchrun (two gloo processes) or as one process.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_dist_rl_worker.py OUTDIR

Each rank writes ``OUTDIR/rank<r>.pt`` with

* ``params`` / ``stats``: two MetaTRPO meta-iterations of 2D navigation on *the same tasks and episodes* as one
  process with the whole meta-batch (:class:`SlicedSampler`): rank r takes its contiguous slice of a fixed
  task list, and every task's episodes come from a generator seeded by (sampling call, global task index);
* ``straight`` / ``resumed``: three meta-iterations on the ranks' own random streams, straight, and as two,
  a collective :meth:`MetaTRPO.save`, a :meth:`MetaTRPO.load` and one more (an exact resume under torchrun).

:func:`run_equiv` with a one-process :class:`DistInfo` is the reference the test compares with.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np
import torch

torch.set_num_threads(1)

from rkmeta_rl.distributed import DistInfo, batch_slice, destroy, init_distributed  # noqa: E402
from rkmeta_rl.rl.algorithm import MetaTRPO  # noqa: E402
from rkmeta_rl.rl.episodes import Episodes  # noqa: E402
from rkmeta_rl.rl.policy import is_per_task  # noqa: E402
from rkmeta_rl.rl.sampler import Sampler  # noqa: E402

#: tasks per meta-iteration (2 + 2 over two ranks)
META_BATCH = 4

#: a tiny second-order 2D-navigation setting, in float64: CG amplifies rounding differences (the two processes
#: sum in another order than one) when the Fisher matrix is ill conditioned; in float32 they reach ~1e-4 after
#: two iterations, in float64 they stay far below the test's tolerance
KWARGS: dict[str, Any] = dict(method="ralston", meta_batch_size=META_BATCH, fast_batch_size=3, inner_lr=0.1,
                              horizon=25, seed=3, device="cpu", fvp_subsample=0.5,
                              policy_kwargs={"hidden_sizes": (16, 16), "activation": "tanh",
                                             "dtype": torch.float64})


class SlicedSampler:
    """Wraps a sampler so that ``world`` processes together see exactly one process's tasks and episodes.

    ``sample_tasks`` call ``i`` draws a fixed ``total``-task list (seed ``1234 + i``) and returns this rank's
    contiguous slice of it; ``sample`` samples each task alone with its own generator seeded by the call number
    and the task's index in the full list, so a task's episodes do not depend on which process samples it.
    """

    def __init__(self, inner: Sampler, total: int, info: DistInfo) -> None:
        self.inner = inner
        self.total = int(total)
        self.info = info
        self.horizon = inner.horizon
        self.task_calls = 0
        self.sample_calls = 0
        self.offset = 0

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        full = self.inner.sample_tasks(self.total, np.random.default_rng(1234 + self.task_calls))
        self.task_calls += 1
        sl = batch_slice(self.total, self.info.rank, self.info.world_size)
        assert sl.stop - sl.start == num_tasks, (sl, num_tasks)
        self.offset = sl.start
        return full[sl]

    def sample(self, tasks: Sequence[Any], params: Mapping[str, torch.Tensor], num_traj: int,
               generator: torch.Generator | None = None) -> Episodes:
        call = self.sample_calls
        self.sample_calls += 1
        per = is_per_task(params)
        parts = []
        for i, task in enumerate(tasks):
            p = {k: v[i:i + 1] for k, v in params.items()} if per else dict(params)
            gen = torch.Generator().manual_seed(100_003 * call + self.offset + i)
            parts.append(self.inner.sample([task], p, num_traj, gen))
        fields = ("obs", "actions", "rewards", "masks", "log_probs")
        return Episodes(*(torch.cat([getattr(e, f) for e in parts]) for f in fields), tasks=list(tasks))


def params_of(model: MetaTRPO) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.policy.params().items()}


def run_equiv(outdir: str, info: DistInfo) -> dict[str, Any]:
    """Two meta-iterations on the sliced tasks; then straight vs saved-and-resumed runs on the own streams."""
    model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", dist=info, **KWARGS)
    model.sampler = SlicedSampler(model.sampler, META_BATCH, info)
    stats = [model.train_iteration() for _ in range(2)]
    out: dict[str, Any] = {"params": params_of(model), "stats": stats, "world_size": info.world_size,
                           "local_batch_size": model.local_batch_size, "num_timesteps": model.num_timesteps}
    straight = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", dist=info, **KWARGS)
    for _ in range(3):
        straight.train_iteration()
    part = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", dist=info, **KWARGS)
    for _ in range(2):
        part.train_iteration()
    path = os.path.join(outdir, "ckpt.pt")
    part.save(path)  # collective: rank 0 writes every rank's random state
    if info.distributed:
        torch.distributed.barrier()
    resumed = MetaTRPO.load(path, device="cpu", dist=info)
    assert resumed.num_iterations == 2
    resumed.train_iteration()
    out["straight"] = params_of(straight)
    out["resumed"] = params_of(resumed)
    return out


def main() -> None:
    outdir = sys.argv[1]
    info = init_distributed("cpu", timeout_s=60)
    try:
        out = run_equiv(outdir, info)
        torch.save(out, os.path.join(outdir, f"rank{info.rank}.pt"))
    finally:
        destroy()


if __name__ == "__main__":
    main()
