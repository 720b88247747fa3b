"""docs/cluster/ and the Dockerfile (issue 39): the SLURM script, the Kubeflow TrainJob and the plain Kubernetes Job
parse, run a valid `resnets train` command (our own parser) that continues one named run, and stop the way a
scheduler does: the script's USR1 trap is run offline against stand-ins for srun, torchrun and scontrol."""

import os
import re
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import yaml

from resnets.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "docs" / "cluster"
# what the multi-agent test gives torchrun, and what a job that restarts must give it
LAUNCH = {"--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--max-restarts", "--nnodes", "--nproc-per-node"}
# sbatch's options (its man page): a misspelt directive is a comment to SLURM, and silently not applied
SBATCH = {"--job-name", "--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time", "--requeue",
          "--signal", "--open-mode", "--output", "--partition", "--account", "--mem"}  # fmt: skip


def _train_args(argv: list[str]) -> list[str]:
    """The arguments after `-m resnets train`, checked by our own parser (only parsed: nothing runs)."""
    i = argv.index("-m")
    assert argv[i + 1 : i + 3] == ["resnets", "train"], argv
    args = argv[i + 3 :]
    ns = build_parser().parse_args(["train", *args])
    assert ns.resume == "auto" and ns.cfg__name, args  # every restart continues the one named run
    return args


def _sbatch_command(env: dict) -> list[str]:
    text = (CLUSTER / "train.sbatch").read_text()
    command = re.search(r"^srun .*?torchrun(.*?) &$", text, re.M | re.S)[1].replace("\\\n", " ")
    return shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), command))


def test_the_sbatch_script_parses_follows_the_allocation_and_signals_ahead_of_the_time_limit():
    script = CLUSTER / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    directives = dict(re.findall(r"^#SBATCH (--[\w-]+)=?(\S*)", text, re.M))
    assert set(directives) <= SBATCH, set(directives) - SBATCH
    assert "--requeue" in directives and directives["--ntasks-per-node"] == "1"  # one agent per node, requeued
    assert re.fullmatch(r"B:USR1@\d+", directives["--signal"])  # to the script, minutes before --time
    argv = _sbatch_command({"SLURM_NNODES": "4", "HEAD": "node1", "SLURM_JOB_ID": "42", "SHARED": "/s", "NPROC": "8"})
    flags = {a.split("=")[0] for a in argv[: argv.index("-m")] if a.startswith("--")}
    assert LAUNCH <= flags, LAUNCH - flags
    assert argv[argv.index("--rdzv-backend") + 1] == "c10d"
    assert re.search(r"^NPROC=\$\{SLURM_GPUS_ON_NODE", text, re.M)  # processes per node from the allocation
    assert re.search(r"^source \"\$VENV/bin/activate\"$", text, re.M)  # an environment, not a bare torchrun
    assert re.search(r"^export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1$", text, re.M)  # as the restart test runs it
    assert "NCCL_SOCKET_IFNAME" in text
    _train_args(argv)


def _stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_sbatch_scripts_usr1_stops_the_run_with_sigterm_and_requeues_the_job(tmp_path):
    """The script as SLURM runs it, with srun, torchrun and scontrol stood in for: USR1 (what --signal sends) makes
    it SIGTERM the training (our run's checkpoint signal) and wait for it, then `scontrol requeue` its job."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "log"
    _stand_in(bin_, "srun", 'shift; exec "$@"\n')  # --kill-on-bad-exit=0 torchrun ...
    _stand_in(bin_, "torchrun", f'echo "torchrun $*" >> {log}\ntrap \'echo TERM >> {log}; kill $!; exit 143\' TERM\n'
              "sleep 60 & wait\n")  # fmt: skip
    _stand_in(bin_, "scontrol", f'[ "$1" = show ] && echo node1 || echo "scontrol $*" >> {log}\n')
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text("")
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", VENV=str(venv.parent), SHARED=str(tmp_path),
               SLURM_JOB_ID="42", SLURM_JOB_NODELIST="node1", SLURM_NNODES="1", SLURM_GPUS_ON_NODE="2")  # fmt: skip
    p = subprocess.Popen(["bash", str(CLUSTER / "train.sbatch")], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while time.time() < deadline and not (log.exists() and "torchrun" in log.read_text()):
        time.sleep(0.05)
    time.sleep(0.2)  # the trap is set before torchrun starts; the stand-in's own trap just after it does
    p.send_signal(signal.SIGUSR1)
    out, _ = p.communicate(timeout=20)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("torchrun --nnodes 1 --nproc-per-node 2 ") and lines[1:] == [
        "TERM",
        "scontrol requeue 42",
    ]
    assert "checkpointing, then requeueing job 42" in out


def _container_command(doc: dict) -> tuple[list[str], dict]:
    if doc["kind"] == "TrainJob":
        trainer = doc["spec"]["trainer"]
        return [str(a) for a in trainer["command"]], trainer
    container = doc["spec"]["template"]["spec"]["containers"][0]
    return [str(a) for a in container["command"]], container


def test_the_trainjob_runs_the_sbatch_scripts_training_on_the_torch_runtime():
    job = yaml.safe_load((CLUSTER / "trainjob.yaml").read_text())
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"  # torchrun's rendezvous from PET_* variables
    argv, trainer = _container_command(job)
    assert argv[:2] == ["torchrun", "-m"]
    k8s = _train_args(argv)
    slurm = " ".join(_sbatch_command({}))
    for flag in ("--recipe", "--model", "--name", "--checkpoint-steps", "--resume"):  # the same run in both
        assert f"{flag} {k8s[k8s.index(flag) + 1]}" in slurm, flag
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in trainer["env"]
    override = job["spec"]["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    mounts = {m["mountPath"] for m in override["spec"]["containers"][0]["volumeMounts"]}
    assert {"/shared", "/dev/shm"} <= mounts and k8s[k8s.index("--out") + 1].startswith("/shared/")


def test_the_plain_job_meets_at_pod_zero_and_does_not_count_a_preemption_as_a_failure():
    service, job = yaml.safe_load_all((CLUSTER / "job.yaml").read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 60  # the step in flight and the checkpoint, before SIGKILL
    argv, container = _container_command(job)
    name = job["metadata"]["name"]
    assert argv[argv.index("--rdzv-endpoint") + 1] == f"{name}-0.{service['metadata']['name']}:29500"
    assert argv[argv.index("--nnodes") + 1] == str(spec["completions"])
    flags = {a for a in argv[: argv.index("-m")] if a.startswith("--")}
    assert LAUNCH <= flags, LAUNCH - flags
    _train_args(argv)
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert not any("onExitCodes" in r for r in rules)  # torchrun exits 1 when signalled: no code tells a stop
    assert pod["securityContext"]["fsGroup"] == 1000  # the image's user writes the shared volume
    wait = next(int(e["value"]) for e in container["env"] if e["name"] == "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
    assert wait < pod["terminationGracePeriodSeconds"]  # torchrun's workers get their time before the pod's SIGKILL


def test_the_manifests_name_the_image_the_dockerfile_builds():
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:\S+$", docker, re.M) and re.search(r"^FROM \$\{BASE\}$", docker, re.M)
    built = set(re.findall(r"docker build .*?-t (\S+) \.", docker))
    assert len(built) == 2 and any("pytorch/pytorch:" in line for line in docker.splitlines() if "BASE=" in line)
    for name in ("trainjob.yaml", "job.yaml"):
        for doc in yaml.safe_load_all((CLUSTER / name).read_text()):
            if doc["kind"] in ("TrainJob", "Job"):
                _, where = _container_command(doc)
                assert where["image"] in built, (name, where["image"])
    assert "USER resnets" in docker and 'pip install --no-cache-dir ".[tensorboard]"' in docker  # --tensorboard runs
    sbatch = (CLUSTER / "train.sbatch").read_text()
    assert "--tensorboard" in sbatch and "'resnets[tensorboard]'" in sbatch  # the venv it sources has it too


def test_the_serving_manifest_runs_a_valid_server_that_its_probes_service_and_autoscaler_reach():
    """docs/cluster/serve.yaml (issue 40): the Deployment's command is a `resnets serve` our parser takes, listening
    beyond the pod on the port its probes, the Service and the container name; the probes ask endpoints the server
    has (/readyz: ready to take requests, /healthz: up); the token comes from a Secret, not the command line; the
    autoscaler scales this Deployment within bounds."""
    from resnets.serve.routes import open_routes

    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "serve.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    argv = container["command"]
    assert argv[:2] == ["resnets", "serve"] and "--token" not in argv
    ns = build_parser().parse_args(argv[1:])
    assert ns.host == "0.0.0.0" and ns.weights.startswith("/models/")  # reachable from the Service; the volume
    (port,) = container["ports"]
    assert port["containerPort"] == ns.port
    paths = {r.path for r in open_routes(None).routes}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        got = container[probe]["httpGet"]
        assert got["path"] == path and path in paths and got["port"] in (port["name"], ns.port)
    env = {e["name"]: e for e in container["env"]}
    assert env["RESNETS_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], ns.port)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert (
        "resources" in container and container["resources"]["requests"]["cpu"] == env["RESNETS_DECODE_WORKERS"]["value"]
    )


def test_the_kserve_inferenceservice_serves_the_protocol_from_where_kserve_puts_the_model():
    """docs/cluster/kserve.yaml (issue 40): a v1beta1 InferenceService whose predictor container runs a `resnets
    serve` our parser takes, on the port KServe sends requests to, from /mnt/models (where the storage initializer
    puts STORAGE_URI), under the model name its clients ask for; its probes are the protocol's health endpoints,
    which the server has and which need no token."""
    from resnets.serve.oip import health_routes
    from resnets.serve.routes import open_routes

    (doc,) = yaml.safe_load_all((CLUSTER / "kserve.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = doc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    argv = container["command"]
    assert argv[:2] == ["resnets", "serve"] and "--token" not in argv
    ns = build_parser().parse_args(argv[1:])
    assert ns.host == "0.0.0.0" and ns.weights == "/mnt/models" and ns.model_name == "pets"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].startswith("pvc://") and env["STORAGE_URI"].endswith("/pets")
    (port,) = container["ports"]
    assert port["containerPort"] == ns.port == 8080  # KServe's custom containers listen on 8080
    unguarded = {r.path for r in health_routes(None).routes} | {r.path for r in open_routes(None).routes}
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        got = container[probe]["httpGet"]
        assert got["path"] == path and path in unguarded and got["port"] == ns.port
    assert container["resources"]["requests"]["cpu"] == env["RESNETS_DECODE_WORKERS"]
    assert container["image"] in set(re.findall(r"docker build .*?-t (\S+) \.", (ROOT / "Dockerfile").read_text()))
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"] and predictor["scaleMetric"] == "cpu"
