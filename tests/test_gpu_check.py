"""bench/gpu_check.py runs its checks end to end on a CPU, so the script is ready when a GPU is lent."""

import json

import pytest

from tests.conftest import run_script


@pytest.mark.multiprocess
def test_gpu_check_passes_on_cpu(tmp_path):
    out = tmp_path / "gpu_check"
    proc = run_script(["bench/gpu_check.py", "--out", str(out), "--device", "cpu", "--quick"], timeout=600)
    assert "all checks passed" in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    checks = report["checks"]
    assert checks["train_fp16"] == {"passed": None, "skipped": "needs CUDA"}
    for name in ("train_bf16", "attention", "flash_attention", "generation"):
        assert checks[name]["passed"] is True, (name, checks[name])
    assert all(row["same_tokens"] for row in checks["generation"]["ours_vs_transformers"])
