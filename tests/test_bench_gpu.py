"""Smoke test of bench/gpu.py at toy size on the CPU: every part and mode runs and the JSON holds medians and
ratios; its test runner counts a `pytest -m cuda` run (on a small file: the suite's start-up alone takes 15 s)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_at_toy_size_on_cpu(run_bench, tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu.py"), "--toy", "--device", "cpu", "--workers", "0",
           "--rounds", "1", "--images", "32", "--pairs", "resnet", "--tests", "none", "--work", str(tmp_path / "jpeg"),
           "--json", str(out)]
    res = run_bench(cmd, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["medians"]) == {"cnn_tiny->cnn_tiny"}  # one pair: the DeiT pair is the same code
    for med in r["medians"].values():
        assert set(med) == {"infer", "dump", "cached", "plain", "online", "data-m1", "data-m4", "data-torchvision"}
        assert min(med.values()) > 0
    for ratios in r["ratios"].values():
        assert set(ratios) == {"cached/plain", "cached/online", "dump/infer", "data-m1/torchvision",
                               "data-m4/torchvision"}
    assert "tests" not in r["result"]
    assert "cached/plain" in res.stdout and "total" in res.stdout


@pytest.mark.slow
def test_gpu_bench_counts_the_cuda_tests(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu

    f = tmp_path / "test_fake_cuda.py"
    f.write_text("import pytest\n\n"
                 "@pytest.mark.cuda\ndef test_a():\n    pass\n\n"
                 "@pytest.mark.cuda\ndef test_b():\n    pytest.skip('no device')\n\n"
                 "@pytest.mark.cuda\ndef test_c():\n    assert False\n\n"
                 "def test_not_cuda():\n    pass\n")
    r = gpu.run_tests(str(f), timeout=120)
    assert r["counts"] == {"passed": 1, "skipped": 1, "failed": 1, "deselected": 1}, r
    assert r["rc"] == 1 and any("test_c" in x for x in r["failures"])
