"""The train stage as two torchrun "nodes" on one machine (c10d rendezvous on 127.0.0.1, gloo on the CPU).

This is the cluster command of infra/README.md with 127.0.0.1 as the rendezvous host: each node runs its
own torchrun agent, the agents meet at the c10d store that node 0 hosts, and the workers form one gloo
group. The result must equal a single process trained over the same global batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from salgan import checkpoint
from salgan.layout import ModelFiles
from salgan.settings import to_dict
from salgan.train import run
from tests.conftest import free_port, on_one_cpu, tiny_params

CHECKPOINT_FILE, GENERATOR_FILE = ModelFiles(Path()).checkpoint.name, ModelFiles(Path()).generator.name

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def start_node(rank: int, port: int, params_file: Path, log: Path) -> subprocess.Popen:
    """One node's torchrun agent: infra/README.md's cluster command with 127.0.0.1 as node 0's address.

    Both agents see the endpoint as their own address; the first to bind the port hosts the c10d store and
    the other joins it as a client, as a cluster's other nodes do.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        f"--node-rank={rank}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=salgan-test",
        "-m",
        "salgan.train",
        "--params",
        str(params_file),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cpus = sorted(os.sched_getaffinity(0))
    with open(log, "wb") as out:
        # A session of its own, so that cleanup can kill the agent together with its worker.
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpus[rank % len(cpus)]}),  # one thread: see on_one_cpu
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_two_nodes_match_one_process_over_the_same_global_batch(tmp_path):
    settings = {"epochs": 2, "bce_epochs": 1, "batch_size": 8, "nproc": 1}
    with on_one_cpu():
        run(tiny_params(tmp_path / "one", **settings))

    two = tiny_params(tmp_path / "two", **settings)  # nproc 1 per node: the world is 2 processes
    params_file = tmp_path / "two.yaml"
    params_file.write_text(yaml.safe_dump(to_dict(two)))
    port = free_port()
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [start_node(rank, port, params_file, logs[rank]) for rank in (0, 1)]
    try:
        codes = [node.wait(timeout=TIMEOUT_S) for node in nodes]
    finally:
        for node in nodes:
            stop(node)
    assert codes == [0, 0], "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    assert "2 process(es)" in (logs[0].read_text() + logs[1].read_text())

    w1 = torch.load(tmp_path / "one" / "models" / GENERATOR_FILE, weights_only=True)
    w2 = torch.load(tmp_path / "two" / "models" / GENERATOR_FILE, weights_only=True)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    # AdaGrad's first step is lr * g / |g|: a rounding-level gradient moves a weight by a visible
    # fraction of lr whichever way rounding tips it, hence the looser atol for the discriminator.
    d1 = checkpoint.load(tmp_path / "one" / "models" / CHECKPOINT_FILE)["discriminator"]
    d2 = checkpoint.load(tmp_path / "two" / "models" / CHECKPOINT_FILE)["discriminator"]
    for key in d1:
        torch.testing.assert_close(d2[key], d1[key], rtol=1e-4, atol=1e-4)
