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
