"""Thread settings: OpenMP threads sleep while waiting, and --threads reaches torch and ONNX Runtime."""

import os
import subprocess
import sys

import pytest

from edge_persrep.runtime import threads


def python(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_edge_persrep_makes_openmp_wait_passively_unless_told_otherwise():
    code = "import edge_persrep, os; print(os.environ['OMP_WAIT_POLICY'])"
    assert python(code) == "PASSIVE"
    assert python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


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
