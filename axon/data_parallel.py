"""Data-parallel training: `axon train FILE --nproc N` and `torchrun --nproc-per-node N -m axon.train FILE`.

Every rank compiles the same two graphs, cut from the one-process training step at the all-reduce:

    gradient graph   the rank's rows of the batch -> `loss`, `grad.<p>` (and running statistics), its
                     dropout drawing the random numbers one process draws for those rows
                     (`passes/data_parallel.py`)
    all-reduce       each tensor weighted by the rank's share of the rows and summed over the ranks, in
                     buckets (`runtime/distributed.py`): the one-process gradient of the mean loss
    update graph     the optimizer on the summed gradients (clipping sees the global norm)

so every rank makes the one process's update and the parameters stay equal on all ranks without being
sent. Every rank reads the same data order and runs the same validation; rank 0 alone writes checkpoints,
metrics and the log. An interrupt seen by any rank stops all of them at the same step (one flag summed
each step), rank 0 writing the checkpoint; `--resume` continues on any number of processes (the global
batch stays the run's). The all-reduce overlaps the backward: the gradient executable hands over each
gradient as soon as the kernel that writes it is issued, and a bucket leaves as soon as it is full (the
last layers' first) while the kernels of the earlier layers run.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import torch

from axon.driver import executable, optimize
from axon.frontend.builtins import UPDATE_PREFIX
from axon.ir import DType, Graph, GraphBuilder, verify
from axon.passes.autocast import autocast
from axon.passes.autodiff import GRAD_PREFIX, grad
from axon.passes.loss_scale import LOSS_SCALE, SCALED_LOSS, scale_loss
from axon.passes.data_parallel import ROWS_OFFSET, offset_rands
from axon.runtime.distributed import Buckets, World
from axon.train_graphs import NEW, QUIET, update_part


def gradient_graph(loss_graph: Graph, precision: str = "f32", wrt=None) -> Graph:
    """Forward, loss and backward: outputs `loss`, `grad.<p>` for each trained parameter, and the
    `update.<b>` running statistics the model computes itself. In f16 the gradients are of the loss
    times the `loss_scale` input (summed over the ranks as they are; the update graph unscales them).
    `wrt`: the parameters trained (a GAN's step: its group), default every float one."""
    loss_graph = autocast(loss_graph, precision)
    buffers = [n[len(UPDATE_PREFIX):] for n in loss_graph.outputs if n.startswith(UPDATE_PREFIX)]
    trained = [n for n, p in loss_graph.params.items() if p.dtype.is_float and n not in buffers
               and (wrt is None or n in wrt)]
    if precision == "f16":
        g = grad(scale_loss(loss_graph), SCALED_LOSS, trained)
    else:
        g = grad(loss_graph, "loss", trained)
    outputs = {"loss": g.outputs["loss"], **{GRAD_PREFIX + n: g.outputs[GRAD_PREFIX + n] for n in trained},
               **{UPDATE_PREFIX + n: g.outputs[UPDATE_PREFIX + n] for n in buffers}}
    graph, _ = optimize(Graph(g.nodes, outputs, g.name), verify=False, out=QUIET)
    return verify(graph)


def update_graph(grads: Graph, optimizer: dict, masked=(), scaled: bool = False) -> Graph:
    """The optimizer's update of each parameter `gradient_graph` differentiates, from `grad.<p>` inputs
    (`step_graph`'s update part: pruning masks, f16 unscaling and skipped steps included)."""
    b = GraphBuilder("update")
    names = [n[len(GRAD_PREFIX):] for n in grads.outputs if n.startswith(GRAD_PREFIX)]
    params = {n: b.param(n, grads.params[n].dtype, grads.params[n].shape) for n in names}
    inputs = {n: b.input(GRAD_PREFIX + n, p.dtype, p.shape) for n, p in params.items()}
    scale = b.input(LOSS_SCALE, DType.F32, ()) if scaled else None
    for name, node in update_part(b, params, inputs, optimizer, masked, scale).items():
        b.output(name, node)
    graph, _ = optimize(b.build(), verify=False, out=QUIET)
    return verify(graph)


class DataParallelStep:
    """One rank's training step, called as the one-process step executable is (`feeds` for the whole
    global batch, the parameters; returns `loss` and the `new.<...>` values)."""

    def __init__(self, loss_graph: Graph, optimizer: dict, precision: str, world: World, device,
                 rows: tuple[str, ...], batch_dim, masked=(), wrt=None):
        self.world, self.rows = world, rows
        self.buckets = Buckets(world)
        grads = gradient_graph(offset_rands(loss_graph, batch_dim), precision, wrt)
        self.grad_exe = executable(grads, device)
        update = update_graph(grads, optimizer, masked, scaled=precision == "f16")
        self.update_exe = executable(update, self.grad_exe.device)
        self.kernels = [*self.grad_exe.kernels, *self.update_exe.kernels]  # (as an executable's)
        # every input a call takes: the gradient graph's and the update graph's
        self.inputs = {**self.update_exe.graph.inputs, **self.grad_exe.graph.inputs}

    @property
    def device(self):
        return self.grad_exe.device

    def __call__(self, feeds: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict:
        n = len(feeds[self.rows[0]])
        start, stop = self.world.rows(n)
        ins = self.grad_exe.graph.inputs
        local = {k: (v[start:stop] if k in self.rows else v) for k, v in feeds.items() if k in ins}
        if ROWS_OFFSET in ins:
            local[ROWS_OFFSET] = torch.tensor(start, dtype=torch.int64, device=self.device)
        reduction = self.buckets.open((stop - start) / n)
        self.grad_exe(local, params, on_ready=reduction.add)  # each bucket leaves once it is full
        summed = reduction.finish()
        update = {k: v for k, v in feeds.items() if k in self.update_exe.graph.inputs}
        update.update({k: v for k, v in summed.items() if k.startswith(GRAD_PREFIX)})
        new = self.update_exe(update, params)
        new.update({NEW + k[len(UPDATE_PREFIX):]: v for k, v in summed.items()
                    if k.startswith(UPDATE_PREFIX)})
        new["loss"] = summed["loss"]
        return new


# --- the launcher ------------------------------------------------------------------------------------
ORPHAN_GRACE_S = 10.0  # after a rank fails, how long the others get to end before they are killed

def launch(argv: list[str], nproc: int, out: str) -> int:
    """Run `python -m axon.train ARGV --out OUT` as `nproc` local ranks (the environment torchrun would
    give them); returns the first non-zero exit status, else 0. Ctrl-C reaches every rank (one process
    group); SIGTERM is passed on to them."""
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "axon.train", *argv, "--out", out], env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = signal.signal(signal.SIGTERM, forward)
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:  # the ranks got it too: they checkpoint and exit
                continue
            failed = [p for p in procs if p.poll() not in (None, 0, 130, 143)]
            if failed and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > ORPHAN_GRACE_S:
                for p in procs:  # a rank died: the others wait for it in a collective forever
                    if p.poll() is None:
                        p.kill()
    finally:
        signal.signal(signal.SIGTERM, old)
    codes = [p.wait() for p in procs]
    for rank, code in enumerate(codes):
        if code < 0:  # killed by a signal: nothing of its own was said
            print(f"axon train: rank {rank} of {nproc} was killed by {signal.Signals(-code).name}",
                  file=sys.stderr)
    return next((c if c > 0 else 128 - c for c in codes if c != 0), 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
