"""The weekly report scripts on a tiny budget: they run, write every file, and never overwrite."""

import json

import pytest

from tests.conftest import read_csv, run_script


def test_week01_writes_report(tmp_path):
    out = tmp_path / "week01"
    run_script(["mnist/week01.py", "--out", str(out), "--models", "softmax,cnn", "--lrs", "1e-3,1e-2",
                "--seeds", "0,1", "--max-steps", "20"])
    for name in ("metrics.csv", "runs.csv", "notes.md", "plots/val_acc_vs_lr.png",
                 "plots/train_loss_softmax.png", "plots/train_loss_cnn.png"):
        assert (out / name).is_file(), name
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 8
    notes = (out / "notes.md").read_text()
    for heading in ("## Hypothesis", "## Method", "## Result", "## Interpretation", "## Next step"):
        assert heading in notes
    softmax_means = {}
    for lr in {r["lr"] for r in runs if r["model"] == "softmax"}:
        accs = [float(r["best_val_acc"]) for r in runs if r["model"] == "softmax" and r["lr"] == lr]
        softmax_means[lr] = sum(accs) / len(accs)
    best_lr = max(softmax_means, key=softmax_means.get)
    assert f"lr {float(best_lr):g} is best on validation ({100 * softmax_means[best_lr]:.2f}%" in notes


def test_week01_refuses_existing_folder(tmp_path):
    (tmp_path / "week01").mkdir()
    proc = run_script(["mnist/week01.py", "--out", str(tmp_path / "week01")], check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: output folder")


def test_week01_rejects_bad_lr_list(tmp_path):
    proc = run_script(["mnist/week01.py", "--out", str(tmp_path / "w"), "--lrs", "fast"], check=False)
    assert proc.returncode == 2
    assert "--lrs and --seeds take comma-separated numbers" in proc.stderr


@pytest.mark.multiprocess
def test_week02_writes_report(tmp_path):
    out = tmp_path / "week02"
    run_script(["mnist/week02.py", "--out", str(out), "--max-steps", "40", "--log-every", "10"], timeout=600)
    for name in ("metrics.csv", "throughput.md", "notes.md", "plots/throughput.png", "plots/loss.png"):
        assert (out / name).is_file(), name
    table = (out / "throughput.md").read_text()
    assert "2proc_1thread_fp32" in table
    assert "2proc_1thread_bf16" in table
    assert "Scaling efficiency" in (out / "notes.md").read_text()
    arms = {row["arm"] for row in read_csv(out / "metrics.csv")}
    assert len(arms) == 4


def test_week03_writes_report(tmp_path):
    out = tmp_path / "week03"
    run_script(["cifar/week03.py", "--out", str(out), "--models", "mlp,cnn", "--budget-s", "2"])
    for name in ("metrics.csv", "runs.csv", "notes.md", "plots/val_acc_vs_time.png", "plots/test_acc.png"):
        assert (out / name).is_file(), name
    runs = read_csv(out / "runs.csv")
    assert [(r["model"], r["augment"]) for r in runs] == [
        ("mlp", "True"), ("mlp", "False"), ("cnn", "True"), ("cnn", "False")]
    for run in runs:
        assert float(run["train_time_s"]) < 2 + 30  # the limit, plus at most one step and the final validation
    notes = (out / "notes.md").read_text()
    assert "## Interpretation" in notes
    assert "2,250 train / 250 validation /" in notes


@pytest.mark.slow
def test_week06_writes_notes_and_metrics(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "script: mnist/train.py\n"
        "base_config: mnist/configs/mlp.yaml\n"
        "seeds: [0, 1]\n"
        "budget: {samples: 640}\n"
        "metric: best_val_acc\n"
        "baseline: base\n"
        "overrides: {data.train_size: 2000, train.log_every: 5, train.warmup_steps: 0}\n"
        "arms:\n"
        "  base: {}\n"
        "  high_lr: {train.lr: 0.02}\n"
    )
    out = tmp_path / "week06"
    run_script(["cifar/week06.py", "--grid", str(grid), "--out", str(out)])
    for name in ("ablation.md", "ablation.csv", "metrics.csv", "notes.md", "plots/arms.png", "plots/curves.png"):
        assert (out / name).is_file(), name
    notes = (out / "notes.md").read_text()
    assert "arm high_lr" in notes
    assert "of 1 comparisons found a difference" in notes
    arms = {(row["arm"], row["seed"]) for row in read_csv(out / "metrics.csv")}
    assert arms == {("base", "0"), ("base", "1"), ("high_lr", "0"), ("high_lr", "1")}


def test_week04_writes_report(tmp_path):
    out = tmp_path / "week04"
    run_script(["charlm/week04.py", "--out", str(out), "--repeats", "2", "--max-iters", "20", "--bench-repeats", "1",
                "--seq-lens", "16,32", "--eval-tokens", "500", "--data-dir", str(tmp_path / "char")], timeout=600)
    for name in ("metrics.csv", "runs.csv", "notes.md", "samples.md", "bench.json", "plots/loss.png",
                 "plots/loss_vs_time.png", "plots/tokens_per_s.png"):
        assert (out / name).is_file(), name
    runs = read_csv(out / "runs.csv")
    assert [r["name"] for r in runs] == ["cpu_1", "cpu_2", "cpu_best"]
    assert runs[0]["final_val_loss"] == runs[1]["final_val_loss"]  # same seed, deterministic
    assert all(int(r["eval_tokens"]) == 499 for r in runs)
    notes = (out / "notes.md").read_text()
    ms = sorted(float(r["ms_per_step"]) for r in runs[:2])
    assert f"**{(ms[0] + ms[1]) / 2:.1f} ms per iteration** over 2 runs" in notes
    assert (out / "samples.md").read_text().count("```text\nROMEO:") == 4


def test_week05_writes_report(tmp_path):
    out = tmp_path / "week05"
    week04 = tmp_path / "week04"
    week04.mkdir()
    (week04 / "runs.csv").write_text("name,config,eval_bits_per_byte,step_time_s\ncpu_1,charlm/configs/cpu.yaml,2.5,80\n")
    run_script(["lm/week05.py", "--out", str(out), "--vocab-size", "512", "--max-iters", "20", "--bench-repeats", "1",
                "--eval-tokens", "400", "--week04", str(week04)], timeout=600)
    for name in ("tokenizer.json", "data/meta.json", "metrics.csv", "summary.json", "notes.md", "samples.md",
                 "plots/loss.png", "plots/tokenizer_mb_per_s.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["vocab_size"] == 512
    assert summary["eval"]["tokens"] == 399
    notes = (out / "notes.md").read_text()
    assert f"**{summary['eval']['bits_per_byte']:.3f} bits per byte**" in notes
    assert "characters, cpu_1" in notes
    assert "2.500" in notes


def test_week11_writes_report(tmp_path):
    data = tmp_path / "char"
    run_script(["charlm/train.py", "--config", "charlm/configs/cpu.yaml", "--model.n_layer=1", "--model.n_embd=32",
                "--model.n_head=2", "--train.max_iters=20", "--train.eval_interval=20", "--train.eval_iters=2",
                f"--data.dir={data}", f"--run.results_dir={tmp_path / 'target'}"])
    target = next((tmp_path / "target").iterdir())
    out = tmp_path / "week11"
    run_script(["infer/week11.py", "--out", str(out), "--repeats", "1", "--new-tokens", "8,16", "--hf-new-tokens", "8",
                "--lengths", "256,512", "--target-run", str(target), "--draft-iters", "20", "--spec-tokens", "40",
                "--data-dir", str(data)], timeout=600)
    for name in ("bench.md", "bench.json", "speculative.json", "notes.md", "plots/cache_tokens_per_s.png",
                 "plots/ours_vs_transformers.png", "plots/attention_memory.png"):
        assert (out / name).is_file(), name
    spec = json.loads((out / "speculative.json").read_text())
    greedy = [r for r in spec["rows"] if r["temperature"] == 0]
    assert len(greedy) == 2
    assert all(r["same_tokens_as_target"] is True for r in greedy)
    assert all(0 <= r["acceptance_rate"] <= 1 for r in spec["rows"])
    bench = json.loads((out / "bench.json").read_text())
    assert all(r["same_tokens"] is True for r in bench["hf"])
    notes = (out / "notes.md").read_text()
    assert "## Interpretation" in notes
    assert "512 new tokens were not measured" in notes
