"""docs/cluster/: the SLURM script and the Kubernetes PyTorchJob parse, and the command they run is a valid
`resnets train` command with the launcher flags the multi-agent test (test_distributed.py) runs."""

import re
import shlex
import subprocess
from pathlib import Path

import yaml

from resnets.cli.main import build_parser

CLUSTER = Path(__file__).resolve().parents[1] / "docs" / "cluster"
# what the multi-agent test gives torchrun, and what a job that restarts must give it
LAUNCH = {"--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--max-restarts", "--nnodes", "--nproc-per-node"}


def _train_args(argv: list[str]) -> list[str]:
    """The arguments after `-m resnets train`, checked by our own parser (only parsed: nothing runs)."""
    i = argv.index("-m")
    assert argv[i + 1 : i + 3] == ["resnets", "train"], argv
    args = argv[i + 3 :]
    ns = build_parser().parse_args(["train", *args])
    assert ns.resume == "auto" and ns.cfg__name, args  # every restart continues the one named run
    return args


def test_the_sbatch_script_parses_and_runs_torchrun_with_resume_auto():
    script = CLUSTER / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert "--requeue" in directives and "--ntasks-per-node=1" in directives  # one agent per node, requeued
    command = re.search(r"^srun .*?torchrun(.*?)(?:\n\n|\Z)", text, re.M | re.S)[1].replace("\\\n", " ")
    env = {"SLURM_NNODES": "4", "HEAD": "node1", "SLURM_JOB_ID": "42", "SHARED": "/shared"}
    argv = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), command))
    flags = {a.split("=")[0] for a in argv[: argv.index("-m")] if a.startswith("--")}
    assert LAUNCH <= flags, LAUNCH - flags
    assert argv[argv.index("--rdzv-backend") + 1] == "c10d"
    assert re.search(r"^export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1$", text, re.M)  # as the restart test runs it
    _train_args(argv)


def test_the_pytorchjob_parses_and_runs_the_same_training_command():
    job = yaml.safe_load((CLUSTER / "pytorchjob.yaml").read_text())
    assert job["kind"] == "PyTorchJob" and job["apiVersion"] == "kubeflow.org/v1"
    policy = job["spec"]["elasticPolicy"]
    assert policy["rdzvBackend"] == "c10d" and policy["maxRestarts"] >= 1  # torchrun's rendezvous, via PET_*
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["restartPolicy"] == "OnFailure"
    container = worker["template"]["spec"]["containers"][0]
    argv = [str(a) for a in container["command"]]
    assert argv[0] == "torchrun"
    k8s = _train_args(argv)
    slurm = (CLUSTER / "train.sbatch").read_text()
    for flag in ("--recipe", "--model", "--name", "--checkpoint-steps"):  # the same run in both
        assert f"{flag} {k8s[k8s.index(flag) + 1]}" in slurm, flag
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in container["env"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/shared" in mounts and k8s[k8s.index("--out") + 1].startswith("/shared/")  # runs on the shared volume
