"""lm/bench.py on a tiny setting: it measures both sides and writes its report."""

import json

from tests.conftest import run_script


def test_bench_writes_report(tmp_path):
    out = tmp_path / "bench"
    run_script(["lm/bench.py", "--out", str(out), "--repeats", "1", "--seq-lens", "32,64"])
    results = json.loads((out / "bench.json").read_text())
    assert [row["seq_len"] for row in results["attention"]] == [32, 64]
    for row in results["attention"]:
        assert row["manual_tokens_per_s"] > 0
        assert row["sdpa_tokens_per_s"] > 0
    tokenizer = results["tokenizer"]
    assert tokenizer["tiktoken_ours_mb_per_s"] > tokenizer["python_mb_per_s"]
    assert 2.5 < tokenizer["bytes_per_token"] < 5
    assert "## BPE tokenizer" in (out / "bench.md").read_text()
