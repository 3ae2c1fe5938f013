"""Smoke test of bench/embedding_codec.py at toy size: a teacher checkpoint and a second model embed real views,
each codec's cosine against float32 and its bytes per vector land in the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_embedding_codec_bench_reports_cosine_and_bytes_per_codec(run_bench, tmp_path, tiny_h5, tiny_teacher):
    out = tmp_path / "embedding_codec.json"
    cmd = [sys.executable, str(REPO / "bench" / "embedding_codec.py"), "--data", tiny_h5, "--teacher", "cnn_tiny",
           "--weights", tiny_teacher, "--images", "12", "--batch-size", "5", "--extra", "bit_resnet_test",
           "--threads", "1", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO / "bench")
    assert res.returncode == 0, res.stderr
    assert "cos mean" in res.stdout
    d = json.loads(out.read_text())
    assert d["images"] == 12 and d["split"] == "test" and d["commit"]
    rows = {(r["model"], r["dtype"]): r for r in d["table"]}
    assert set(rows) == {("cnn_tiny", "float16"), ("cnn_tiny", "int8"),
                         ("bit_resnet_test (random init)", "float16"), ("bit_resnet_test (random init)", "int8")}
    assert d["models"]["cnn_tiny"]["embedding"] == "forward_head(pre_logits=True)"
    # the extra model (64 px by default) sees the teacher's 32 px views
    assert d["models"]["bit_resnet_test (random init)"]["view_size"] == d["models"]["cnn_tiny"]["view_size"] == 32
    for (model, dtype), r in rows.items():
        dim = 32 if model == "cnn_tiny" else 256  # cnn_tiny's 4 * width 8; the tiny BiT's 4 * 64 channels
        assert r["vectors"] == 12 and r["dim"] == dim
        assert r["bytes_per_vector"] == (2 * dim if dtype == "float16" else dim + 4)
        assert r["stored_bytes"] == 12 * r["bytes_per_vector"]
        assert 0.99 < r["cosine_min"] <= r["cosine_mean"] <= 1.0 + 1e-12
    assert rows["cnn_tiny", "float16"]["cosine_min"] >= rows["cnn_tiny", "int8"]["cosine_min"]
