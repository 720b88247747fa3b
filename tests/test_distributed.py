"""resnets.distributed: without torchrun a single-process context whose reductions and barriers are the identity;
under torchrun (WORLD_SIZE > 1) a process group whose sums are exact (tests/engine/test_run.py trains on two)."""

import json

import torch

from resnets import distributed as D


def test_without_torchrun_one_process_and_identity_collectives(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = D.setup("cpu")
    assert (ctx.rank, ctx.world, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t, ctx) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    assert D.broadcast_object({"a": 1}, ctx) == {"a": 1}
    D.barrier(ctx)
    D.cleanup(ctx)


def test_two_gloo_processes_sum_exactly(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "sum.py"
    script.write_text(
        "import torch, json\n"
        "from resnets import distributed as D\n"
        "ctx = D.setup('cpu')\n"
        "t = D.all_reduce_sum(torch.tensor([float(ctx.rank + 1)], dtype=torch.float64), ctx)\n"
        "obj = D.broadcast_object({'from': ctx.rank}, ctx)\n"
        "D.barrier(ctx)\n"
        "import pathlib, sys\n"
        "out = pathlib.Path(sys.argv[1]) / f'rank{ctx.rank}.json'\n"  # a file each: stdout lines interleave
        "out.write_text(json.dumps([ctx.rank, ctx.world, t.item(), obj['from']]))\n"
        "D.cleanup(ctx)\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547"]
    p = subprocess.run([*cmd, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = sorted(json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rows == [[0, 2, 3.0, 0], [1, 2, 3.0, 0]]


# --- two torchrun agents (as on two nodes) meeting at a c10d rendezvous on this machine, one gloo process each ---

ELASTIC = [
    *("--model", "resnet8", "--dataset", "synthetic", "--synthetic-samples", 1024, "--synthetic-classes", 4),
    *("--train-crop", 32, "--batch-size", 64, "--epochs", 2, "--lr", 0.01, "--norm", "group", "--amp", "none"),
    *("--no-channels-last", "--deterministic", "--no-progress", "--device", "cpu", "--workers", 0),
    *("--checkpoint-steps", 2, "--resume", "auto"),
]


def _children(pid: int) -> list[int]:
    from pathlib import Path

    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _agents(out, name, *, kill_after_checkpoint=False, timeout=300):
    """Two `torchrun --nnodes 2` agents on one c10d rendezvous, each with one worker: `resnets train ... --resume
    auto`, restarted once (--max-restarts 1) if a worker dies. With kill_after_checkpoint, the second agent's worker
    is SIGKILLed once the run has written a checkpoint. Returns the two agents' outputs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", name, "--max-restarts", "1"]
    cmd += [
        "--monitor-interval",
        "0.5",
        "-m",
        "resnets",
        "train",
        *map(str, ELASTIC),
        "--out",
        str(out),
        "--name",
        name,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = [open(out / f"{name}-agent{i}.log", "w+") for i in range(2)]
    agents = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env) for log in logs]
    try:
        if kill_after_checkpoint:
            deadline = time.time() + timeout
            while not (out / name / "last.pt").exists() and time.time() < deadline:
                assert all(a.poll() is None for a in agents), "an agent ended before the first checkpoint"
                time.sleep(0.02)
            workers = _children(agents[1].pid)
            assert workers, "the second agent has no worker"
            for w in workers:
                os.kill(w, signal.SIGKILL)
        for a in agents:
            a.wait(timeout)
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert [a.returncode for a in agents] == [0, 0], outputs
    return outputs


def test_two_agents_train_as_one_process_and_a_killed_worker_is_restarted_into_the_same_weights(tmp_path):
    """(a) Two torchrun agents on the same global batches train the weights one process trains (to 1e-5: kernels
    for 32 and 64 images round differently); (b) the same two agents with the second one's worker SIGKILLed after a
    checkpoint: torchrun restarts the group, --resume auto continues the run, and it ends with exactly the weights
    of the uninterrupted two-agent run."""
    import subprocess
    import sys

    from conftest import saved_weights

    one = subprocess.run(
        [sys.executable, "-m", "resnets", "train", *map(str, ELASTIC), "--out", str(tmp_path), "--name", "one"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    _agents(tmp_path, "two")
    killed = _agents(tmp_path, "killed", kill_after_checkpoint=True)
    assert "resuming" in "".join(killed), killed  # the group was restarted and continued the run, not begun again
    a, b, c = (saved_weights(tmp_path / n / "model.safetensors") for n in ("one", "two", "killed"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert all(torch.equal(b[k], c[k]) for k in b), "the restarted run ended with other weights"
    history = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
