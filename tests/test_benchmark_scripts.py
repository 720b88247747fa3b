"""The benchmark scripts (benchmarks/*.py, run as `python benchmarks/NAME.py`): each one imports, and each names
the CPU its figures came from the same way (benchmarks/machine.py)."""

import importlib
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: another CPU
"""
ZEN4 = ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n").replace("bmi2", "bmi2 avx512f avx512_bf16 avx512_vnni")


def _script(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_the_cpu_name_says_family_model_and_vector_units():
    machine = _script("machine")
    assert machine.cpu_name(ZEN3) == "AMD EPYC 7B13 (family 25 model 1; avx2)"  # the first processor's
    assert machine.cpu_name(ZEN4) == "AMD EPYC 7B13 (family 25 model 17; avx2 avx512f avx512_bf16)"
    assert "avx" not in machine.cpu_name("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name (ARM): the platform's
    assert machine.cpu_name()  # this machine's, whatever it is


def test_every_benchmark_script_imports():
    """Each script's imports run (the shared helper included); their main() runs only as a script."""
    names = sorted(p.stem for p in BENCH.glob("*.py"))
    assert {"machine", "time_to_accuracy", "train_throughput", "inference_speed"} <= set(names)
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r})\n" + "".join(f"import {n}\n" for n in names)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout == ""  # importing runs nothing


def test_a_study_run_replaces_only_its_own_cpus_record():
    """time_to_accuracy.json holds runs of several CPUs: a rerun on one must not drop another's (it once replaced the
    Zen 4's bf16 runs of the recipe with a Zen 3's fp32 ones), and each row says which CPU and precision it ran."""
    tta = _script("time_to_accuracy")
    zen3, zen4 = (_script("machine").cpu_name(text) for text in (ZEN3, ZEN4))
    run = {"name": "recipe", "seed": 0, "isa": "native", "kind": "engine"}
    on_zen4 = {**run, "cpu": zen4, "wall_s": 112.0}  # a record from before "precision" was kept: bf16
    on_zen3 = {**run, "cpu": zen3, "wall_s": 257.0, "precision": "fp32"}
    records = tta.merged([on_zen4], on_zen3)
    assert records == [on_zen4, on_zen3]
    again = {**on_zen3, "wall_s": 250.0}
    assert tta.merged(records, again) == [on_zen4, again]
    assert tta.merged(records, {**on_zen3, "seed": 1})[:2] == records
    assert [tta.ran_as(r) for r in records] == ["25/17, bf16", "25/1, fp32"]
    assert tta.ran_as({**on_zen4, "isa": "avx2", "precision": "fp32"}) == "25/17, AVX2 limit, fp32"
