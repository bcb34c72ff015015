"""infer/bench.py: our cached generation gives transformers' tokens; the memory probe detects the (L, L) matrix."""

import json

from infer.bench import bench_hf
from tests.conftest import run_script


def test_generation_matches_transformers_tokens():
    # Same weights, greedy: our cached loop (with left padding unused) and GPT2LMHeadModel.generate agree.
    rows = bench_hf(repeats=1, new_tokens=12, batches=[1, 3])
    assert [r["batch"] for r in rows] == [1, 3]
    for row in rows:
        assert row["same_tokens"] is True
        assert row["ours_tokens_per_s"] > 0
        assert row["hf_tokens_per_s"] > 0


def test_memory_probe_separates_naive_from_tiled():
    sizes = {}
    for kind in ("naive", "tiled"):
        proc = run_script(["infer/bench.py", "--measure-memory", kind, "2048"])
        sizes[kind] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    # Naive attention keeps (1, 2, 2048, 2048) float32 scores (32 MiB) and more of that size for softmax and backward.
    assert sizes["naive"] > 32
    assert sizes["tiled"] < sizes["naive"] / 4


def test_cli_writes_report(tmp_path):
    out = tmp_path / "bench"
    run_script(["infer/bench.py", "--out", str(out), "--parts", "cache,memory", "--repeats", "1",
                "--new-tokens", "4,8", "--lengths", "256"])
    report = (out / "bench.md").read_text()
    assert "Cached vs uncached generation" in report
    assert "Peak memory" in report
    results = json.loads((out / "bench.json").read_text())
    assert [r["new_tokens"] for r in results["cache"]] == [4, 8]
    assert (out / "plots" / "cache_tokens_per_s.png").is_file()
    assert (out / "plots" / "attention_memory.png").is_file()
    again = run_script(["infer/bench.py", "--out", str(out), "--parts", "cache"], check=False)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    bad = run_script(["infer/bench.py", "--out", str(tmp_path / "x"), "--new-tokens", "many"], check=False)
    assert bad.returncode == 2
    assert "--new-tokens" in bad.stderr
