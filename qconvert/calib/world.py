"""The processes of one run under torchrun: data-parallel calibration with torch.distributed.

    torchrun --nproc-per-node N -m qconvert quantize MODEL --calibration FILE ...

torchrun starts N copies of the command and tells each who it is in its environment
(WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT); several hosts are the
same command with --nnodes and a rendezvous endpoint. Every rank reads the model and the
text and cuts the same calibration windows, then keeps its own share of them (whole
batches, see `shard_bounds`). Per layer, what a single process would have summed over all
windows -- squared inputs for importance statistics, XᵀX for GPTQ Hessians -- is summed
per rank and all-reduced (sums and counts, never means, so the totals are the single
process's up to the order of float64 additions). GPTQ's solves are dealt out by module
(`owners`), and each result is broadcast from the rank that solved it, so every rank runs
the next layer on the same quantized weights. Rank 0 alone writes anything; the others
end once calibration is done.

Outside torchrun (no WORLD_SIZE, or 1) this is a world of one: no process group, every
collective is a no-op, and the code path is the same.

Failures: an error raised on some ranks inside `agreed()` is told to all (one all-reduce),
so every rank ends with the failing rank's exit code instead of waiting for a peer that
is gone. Elsewhere torchrun itself stops the other local processes when one exits non-zero,
and collectives give up after QCONVERT_DIST_TIMEOUT seconds (default 1800: a rank may wait
that long for a peer's layer forward or GPTQ solve on a big model).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from ..errors import InputError, QConvertError

TIMEOUT_ENV = "QCONVERT_DIST_TIMEOUT"
THREADS_ENV = "QCONVERT_RANK_THREADS"
DEFAULT_TIMEOUT_S = 1800


class PeerError(QConvertError):
    """Another rank failed; this one stops with that rank's exit code (its message was
    printed by that rank)."""

    def __init__(self, rank: int, size: int, what: str, exit_code: int) -> None:
        super().__init__(f"rank {rank} of {size} failed while {what} (its message is printed by that rank); "
                         "this rank stops too")
        self.exit_code = exit_code


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: Optional[str] = None  # "gloo" or "nccl" once the process group is up

    @property
    def writer(self) -> bool:
        """Rank 0: the one process that writes files and prints the summary."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def comm_device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    # -- collectives (no-ops in a world of one) ----------------------------------------------
    def all_sum(self, tensors) -> None:
        """Sum each tensor over all ranks, in place, in the order given (the same on every rank)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        dev = self.comm_device()
        for t in tensors:
            if t.device == dev:
                dist.all_reduce(t)
            else:  # e.g. CPU statistics under NCCL
                c = t.to(dev)
                dist.all_reduce(c)
                t.copy_(c.to(t.device))

    def union(self, local: dict) -> dict:
        """The union over ranks of name -> small value (a shape): which statistics exist
        anywhere, so every rank runs the same collectives even where its windows never
        reached a module (a routed expert no token of this rank chose)."""
        if not self.distributed:
            return dict(local)
        import torch.distributed as dist

        got: list = [None] * self.size
        dist.all_gather_object(got, dict(local))
        out: dict = {}
        for d in got:
            for k, v in d.items():
                out.setdefault(k, v)
        return dict(sorted(out.items()))

    def share(self, payload: Optional[dict], src: int) -> dict:
        """`payload` (name -> numpy array, torch tensor or small picklable value) from rank
        `src`, on every rank. Arrays travel as tensors (NCCL: through the GPU); the
        receivers get numpy arrays on the host and tensors on the communication device."""
        if not self.distributed:
            return dict(payload or {})
        import numpy as np
        import torch
        import torch.distributed as dist

        mine = self.rank == src
        meta = [None]
        if mine:
            meta[0] = {k: (("np", v.shape, str(v.dtype)) if isinstance(v, np.ndarray) else
                           ("torch", tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else ("value", v))
                       for k, v in payload.items()}
        dist.broadcast_object_list(meta, src=src, device=self.comm_device() if self.backend == "nccl" else None)
        dev, out = self.comm_device(), {}
        for k, (kind, *rest) in meta[0].items():
            if kind == "value":
                out[k] = payload[k] if mine else rest[0]
                continue
            shape, dtype = rest
            if kind == "np":
                dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
            # as bytes: every backend moves uint8, not every one bfloat16
            if mine:
                v = payload[k]
                t = torch.from_numpy(np.ascontiguousarray(v)) if kind == "np" else v.detach().contiguous()
                buf = t.reshape(-1).view(torch.uint8).to(dev)
            else:
                buf = torch.empty(math.prod(shape) * dtype.itemsize, dtype=torch.uint8, device=dev)
            dist.broadcast(buf, src=src)
            if mine:
                out[k] = payload[k]
            else:
                t = buf.view(dtype).reshape(shape)
                out[k] = t.cpu().numpy() if kind == "np" else t
        return out

    @contextmanager
    def agreed(self, what: str) -> Iterator[None]:
        """Run the block on every rank, then agree on the outcome: a rank that failed raises
        its own error, the others a PeerError with its exit code. The block must hold no
        collective (a failed rank would skip it and the others would wait for it)."""
        failure: Optional[BaseException] = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported to the peers, then re-raised
            if not self.distributed:
                raise
            failure = e
        if not self.distributed:
            return
        import torch

        code = getattr(failure, "exit_code", 70) if failure is not None else 0
        flags = torch.tensor([self.rank + 1 if failure is not None else 0, code], dtype=torch.int64)
        self.all_max(flags)
        if failure is not None:
            raise failure
        if int(flags[0]):
            raise PeerError(int(flags[0]) - 1, self.size, what, int(flags[1]))

    def all_max(self, t) -> None:
        import torch.distributed as dist

        c = t.to(self.comm_device())
        dist.all_reduce(c, op=dist.ReduceOp.MAX)
        t.copy_(c.to(t.device))


_current = World()


def current() -> World:
    """The world this process belongs to (a world of one until `joined` starts a group)."""
    return _current


def from_env(env=os.environ) -> World:
    """Who this process is, from torchrun's variables; a world of one without them."""
    def number(key: str, default: int) -> int:
        raw = env.get(key)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"environment {key}={raw!r}: not a number; start qconvert with torchrun") from None

    size = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", 0)
    local_size = number("LOCAL_WORLD_SIZE", size)
    if size < 1 or not 0 <= rank < size or not 0 <= local_rank < max(local_size, 1):
        raise InputError(f"environment WORLD_SIZE={size} RANK={rank} LOCAL_RANK={local_rank} is inconsistent; "
                         "start qconvert with torchrun")
    return World(rank, size, local_rank, max(local_size, 1))


def rank_device(device: str, world: World) -> str:
    """The compute device of this rank: 'cuda' (or 'auto' with a GPU) becomes
    cuda:LOCAL_RANK. A fixed cuda:N would put every rank on one GPU, so it is refused."""
    if not world.distributed:
        return device
    import torch

    d = str(device)
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda:"):
        raise InputError(f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; give --device cuda")
    if d == "cuda":
        # judged on the host's count, not this rank's index, so every rank on it fails alike
        if torch.cuda.device_count() < world.local_size:
            raise InputError(f"--device cuda: {world.local_size} processes on this host but "
                             f"{torch.cuda.device_count()} GPU(s) visible; start at most one process per GPU")
        return f"cuda:{world.local_rank}"
    return d


def rank_threads(world: World, env=os.environ) -> int:
    """Torch threads per rank: this host's usable cores shared by its ranks (torchrun sets
    OMP_NUM_THREADS=1, which would leave most cores idle); QCONVERT_RANK_THREADS overrides."""
    raw = env.get(THREADS_ENV)
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"environment {THREADS_ENV}={raw!r}: give a whole number of threads, 1 or more")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // world.local_size)


def timeout_seconds(env=os.environ) -> int:
    raw = env.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        t = int(raw)
    except ValueError:
        t = 0
    if t < 1:
        raise InputError(f"environment {TIMEOUT_ENV}={raw!r}: give the collective timeout in whole seconds")
    return t


@contextmanager
def joined(device: str) -> Iterator[World]:
    """Join the process group torchrun set up (gloo for CPU calibration, NCCL for CUDA),
    make it `current()`, and leave it at the end. Outside torchrun: a world of one."""
    global _current
    world = from_env()
    if not world.distributed:
        yield world
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    dev = rank_device(device, world)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(dev.split(":")[1]))
    threads = rank_threads(world)
    numba_before = _numba_threads(threads)  # first: starting numba's pool may reset OpenMP's count
    torch.set_num_threads(threads)
    own = not dist.is_initialized()  # a caller's program may have set up the group already
    if own:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
    _current = World(world.rank, world.size, world.local_rank, world.local_size, dist.get_backend())
    done = False
    try:
        yield _current
        done = True
    finally:
        joined_as, _current = _current, World()
        if done:  # every rank's last broadcast has arrived before any rank leaves
            dist.barrier(device_ids=[torch.cuda.current_device()] if joined_as.backend == "nccl" else None)
        if own:
            dist.destroy_process_group()
        _numba_threads(numba_before)  # rank 0 encodes and writes next: on the numba threads it had


def _numba_threads(n: int) -> int:
    """Give numba's parallel kernels `n` threads (at most its pool's size); returns the
    count it had. Needed beside torch.set_num_threads: numba's OpenMP layer shares torch's
    libgomp and sets the OpenMP thread count to its own on every parallel launch, so the
    first parallel kernel (GPTQ's row_sigma2, an encoder) would silently raise this rank's
    torch threads from its share of the cores to numba's count (all the host's cores)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    return before


def shard_bounds(n_samples: int, batch_size: int, world: World) -> tuple[int, int]:
    """Rows [start, stop) of the calibration windows this rank runs.

    Ranks get runs of whole batches (the same batches a single process would form, so each
    batch's activations and sums are computed from the same inputs); with fewer batches
    than ranks, single windows. Fewer windows than ranks is refused: a rank with nothing
    to run would have no activations to sum."""
    if not world.distributed:
        return 0, n_samples
    if n_samples < world.size:
        raise InputError(f"--calibration-samples {n_samples}: fewer windows than the {world.size} processes; "
                         f"give at least {world.size} or start fewer processes")
    n_batches = -(-n_samples // batch_size)
    if n_batches >= world.size:
        b0, b1 = world.rank * n_batches // world.size, (world.rank + 1) * n_batches // world.size
        return b0 * batch_size, min(b1 * batch_size, n_samples)
    return world.rank * n_samples // world.size, (world.rank + 1) * n_samples // world.size


def own_windows(samples, batch_size: int, world: Optional[World] = None):
    """This rank's rows of the (n, seqlen) calibration windows (all of them outside torchrun)."""
    lo, hi = shard_bounds(len(samples), batch_size, world or current())
    return samples[lo:hi]


def owners(costs: list[float], world: World) -> list[int]:
    """The rank that solves each of a layer's modules: largest first, each to the least
    loaded rank so far (the same answer on every rank: it depends on shapes only)."""
    load = [0.0] * world.size
    out = [0] * len(costs)
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(world.size), key=lambda r: (load[r], r))
        out[k] = r
        load[r] += costs[k]
    return out
