"""Thread settings: OpenMP threads spin briefly then sleep, training gives up threads while other
processes use the cores, and --threads reaches torch and ONNX Runtime."""

import os
import subprocess
import sys

import pytest

from edge_persrep.runtime import threads


def python(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_edge_persrep_makes_openmp_spin_briefly_unless_told_otherwise():
    code = ("import edge_persrep, os\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), sep='|')")
    assert python(code) == "PASSIVE|10000"
    assert python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE|None"  # the environment's choice stands
    assert python(code, OMP_WAIT_POLICY="") == "|None"  # libgomp's own default
    assert python(code, GOMP_SPINCOUNT="0") == "None|0"


def test_threads_to_use_leaves_the_cores_others_are_using():
    assert threads.threads_to_use(2, 0.0, 2) == 2
    assert threads.threads_to_use(2, 0.4, 2) == 2  # a little background work: keep both
    assert threads.threads_to_use(2, 0.6, 2) == 1  # a busy loop next door: one core is ours
    assert threads.threads_to_use(2, 3.0, 2) == 1  # never none
    assert threads.threads_to_use(16, 3.2, 16) == 13
    assert threads.threads_to_use(16, 0.0, 4) == 4  # never more than we started with


def test_busy_cpu_seconds_counts_only_the_usable_cpus_busy_time():
    stat = ("cpu  999 999 999 999 999 999 999 999 0 0\n"
            "cpu0 100 10 20 5000 70 1 2 3 0 0\n"  # busy: 100 + 10 + 20 + 1 + 2 + 3 = 136 (idle, iowait out)
            "cpu1 200 0 0 100 0 0 0 0 0 0\n"
            "cpu2 700 0 0 0 0 0 0 0 0 0\n"
            "intr 12 34\n")
    assert threads.busy_cpu_seconds(stat, {0, 1}, 100) == pytest.approx((136 + 200) / 100)
    assert threads.busy_cpu_seconds(stat, {2}, 100) == pytest.approx(7.0)


def test_core_share_drops_to_the_free_cores_and_restores_the_count(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(threads, "_threads", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # (wall, the CPUs' busy seconds, this process's CPU seconds): each second, first this process
        # alone on both cores, then another process taking one core, then gone again
        samples = iter([(0, 0, 0), (0, 0, 0), (0.5, 1.0, 1.0), (1, 2, 2), (2, 4, 3), (3, 6, 4), (4, 7.9, 5.9),
                        (4.5, 9, 7), (5, 10, 8)])
        share = threads.CoreShare(period_s=1.0, sample=lambda: next(samples), cpus={0, 1})
        seen = []
        with share:
            for _ in range(6):
                share.check()
                seen.append(torch.get_num_threads())
        assert seen == [2, 2, 1, 1, 2, 2]  # half a second is too soon to judge; one core left; freed
        assert torch.get_num_threads() == 2  # restored
        assert share.record() == {"adaptive": True, "seconds_at": {"1": 2.0, "2": 3.0}}
    finally:
        torch.set_num_threads(before)


def test_core_share_is_off_when_threads_are_pinned(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(threads, "_threads", 2)  # --threads 2
    samples = iter([(0, 0, 0), (0, 0, 0), (1, 2, 0)])  # others took both cores
    before = torch.get_num_threads()
    with threads.CoreShare(sample=lambda: next(samples), cpus={0, 1}) as share:
        share.check()
        assert torch.get_num_threads() == before
    assert share.record() == {"adaptive": False, "seconds_at": {}}


def test_set_threads_reaches_torch_even_after_it_was_imported():
    pytest.importorskip("torch")
    code = ("import torch\n"
            "from edge_persrep.runtime.threads import set_threads, settings\n"
            "set_threads(1)\n"
            "print(torch.get_num_threads(), settings()['threads'], settings()['torch_threads'])\n")
    assert python(code) == "1 1 1"


def test_sessions_take_the_thread_count(tmp_path, monkeypatch):
    from edge_persrep.runtime.bundle import make_session

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    monkeypatch.setattr(threads, "_threads", None)
    assert make_session(path).get_session_options().intra_op_num_threads == 0  # ORT's default: one per core
    monkeypatch.setattr(threads, "_threads", 1)  # what set_threads(1) records (it would also cap this process's torch)
    assert make_session(path).get_session_options().intra_op_num_threads == 1
    assert make_session(path, threads=2).get_session_options().intra_op_num_threads == 2  # explicit wins
    with pytest.raises(ValueError):
        threads.set_threads(-1)


def test_cli_refuses_a_negative_thread_count():
    proc = subprocess.run([sys.executable, "-m", "edge_persrep.cli", "find", "b", "x.jpg", "--threads", "-1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--threads: -1: use 0 (one per core) or a positive count" in proc.stderr
