"""Worker of ``tests/test_distributed.py``: run under torchrun (or with the torchrun variables set by hand).

    python tests/_dist_worker.py equiv OUTDIR        # same-tasks equivalence + exact resume; writes rank<r>.pt
    python tests/_dist_worker.py crash OUTDIR        # rank 1 raises after its first meta-iteration
    python tests/_dist_worker.py hang OUTDIR         # rank 1 stops taking part (sleeps) after its first one
    python tests/_dist_worker.py signal OUTDIR       # rank 1 alone gets SIGTERM: both ranks stop together

Without the torchrun variables ``equiv`` runs as one process (the reference).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

torch.set_num_threads(1)

from rkmeta_rl.distributed import DistInfo, batch_slice, destroy, init_distributed  # noqa: E402
from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem  # noqa: E402
from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer, _slice_tasks  # noqa: E402

#: tasks per meta-iteration in the equivalence run: 5 splits unevenly (3 + 2) over two ranks
META_BATCH = 5


class SlicedProblem(SinusoidProblem):
    """Sinusoid whose training batch ``i`` is a fixed ``total``-task batch, of which rank r of w gets its
    contiguous slice: the ranks together see exactly the tasks one process sees."""

    def __init__(self, total: int, info: DistInfo) -> None:
        super().__init__()
        self.total = total
        self.info = info
        self.calls = 0

    def sample_tasks(self, num_tasks: int, generator: torch.Generator, stages: int, device: torch.device,
                     split: str = "train") -> Any:
        if split != "train":
            return super().sample_tasks(num_tasks, generator, stages, device, split)
        full = self.tasks.sample(self.total, torch.Generator().manual_seed(1234 + self.calls), stages, device)
        self.calls += 1
        sl = batch_slice(self.total, self.info.rank, self.info.world_size)
        assert sl.stop - sl.start == num_tasks, (sl, num_tasks)
        return _slice_tasks(full, sl)


def config(**kw: Any) -> MetaTrainConfig:
    """A tiny second-order run on CPU."""
    base = dict(method="ralston", iterations=2, meta_batch_size=META_BATCH, log_interval=1, eval_interval=0,
                eval_tasks=4, final_eval_tasks=7, checkpoint_interval=1, device="cpu", test_inner_steps=2,
                eval_chunk=4, path="vmap")
    base.update(kw)
    return MetaTrainConfig(**base)


def params_of(tr: MetaTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.params.items()}


def run_equiv(outdir: str, info: DistInfo) -> dict[str, Any]:
    """Two meta-iterations on the sliced tasks, a split evaluation, and an interrupted-then-resumed run."""
    tr = MetaTrainer(SlicedProblem(META_BATCH, info), config(), logdir=os.path.join(outdir, "equiv"), dist=info)
    stats: list[dict[str, float]] = []
    tr.learn(callback=lambda t, s: stats.append(dict(s)) and None, progress_bar=False)
    out: dict[str, Any] = {"params": params_of(tr), "stats": stats,
                           "eval": tr.evaluate(7, seed=99, split="test"), "world_size": info.world_size}
    tr.close()
    # exact resume with each rank's own task stream: 3 iterations straight vs 2 + resume to 3
    ref = MetaTrainer(SinusoidProblem(), config(iterations=3), logdir=os.path.join(outdir, "straight"), dist=info)
    ref.learn(progress_bar=False)
    ref.close()
    part = MetaTrainer(SinusoidProblem(), config(iterations=2), logdir=os.path.join(outdir, "resumed"), dist=info)
    part.learn(progress_bar=False)
    part.close()
    res = MetaTrainer(SinusoidProblem(), config(iterations=3), logdir=os.path.join(outdir, "resumed"), resume=True,
                      dist=info)
    assert res.iteration == 2
    res.learn(progress_bar=False)
    res.close()
    out["straight"] = params_of(ref)
    out["resumed"] = params_of(res)
    return out


def run_signal(outdir: str, info: DistInfo) -> None:
    """Rank 1 alone receives SIGTERM during its third meta-iteration: both ranks stop after that iteration
    together, rank 0 writes the checkpoint, and both exit with the SIGTERM code."""
    import signal

    from rkmeta_rl.errors import TrainingInterrupted

    def sigterm_rank1(tr: MetaTrainer, stats: Any) -> None:
        if info.rank == 1 and tr.num_iterations == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    tr = MetaTrainer(SinusoidProblem(), config(iterations=50, checkpoint_interval=100, path="loop",
                                               meta_batch_size=2, method="euler"),
                     logdir=os.path.join(outdir, "run"), dist=info)
    try:
        tr.learn(callback=sigterm_rank1, progress_bar=False)
    except TrainingInterrupted as err:
        print(f"rank {info.rank} interrupted at {tr.num_iterations}", flush=True)
        raise SystemExit(err.exit_code) from None


def main() -> None:
    mode, outdir = sys.argv[1], sys.argv[2]
    info = init_distributed("cpu", timeout_s=float(os.environ.get("TEST_DIST_TIMEOUT", 60)))
    try:
        if mode == "equiv":
            out = run_equiv(outdir, info)
            torch.save(out, os.path.join(outdir, f"rank{info.rank}.pt"))
            return
        if mode == "signal":
            run_signal(outdir, info)
            return
        if mode not in ("crash", "hang"):
            raise SystemExit(f"unknown mode {mode!r}")

        def misbehave(tr: MetaTrainer, stats: Any) -> None:
            if info.rank == 1 and tr.num_iterations == 1:
                if mode == "crash":
                    raise RuntimeError("rank 1 crashes on purpose")
                time.sleep(600)  # alive but no longer taking part in collectives

        tr = MetaTrainer(SinusoidProblem(), config(iterations=50, checkpoint_interval=100, path="loop",
                                                   meta_batch_size=2, method="euler"), dist=info)
        print(f"rank {info.rank} ready", flush=True)
        tr.learn(callback=misbehave, progress_bar=False)
        print(f"rank {info.rank} finished training without an error", flush=True)
    finally:
        destroy()


if __name__ == "__main__":
    main()
