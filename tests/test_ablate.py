"""cifar/ablate.py: budgets, resumable runs, failures, bad input and the report.

Most runner tests drive a stand-in training script that keeps the contract without torch, so they
take about a second each. The tests marked slow train the MNIST MLP through mnist/train.py.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cifar.ablate_report import decision_line
from common.stats import welch_test
from tests.conftest import REPO, read_csv, run_script, script_env, tree_digest

# A training script with the contract: --config FILE, --section.key=value, a run directory with
# summary.json, metrics.csv and checkpoints/last.pt, and exit status 2 with an `error:` line on an
# unknown key. Its accuracy is model.quality + 0.001 x seed, and model.fail_seed makes it crash.
FAKE_TRAIN = r'''
import json
import sys
from pathlib import Path

import yaml

KNOWN = {"run.name", "run.seed", "run.results_dir", "run.resume", "train.batch_size", "train.max_steps",
         "train.schedule_steps", "train.lr", "system.threads", "system.num_workers", "model.quality",
         "model.fail_seed"}
argv = sys.argv[1:]
config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
values = {f"{section}.{key}": value for section, keys in config.items() for key, value in keys.items()}
for arg in argv:
    if arg.startswith("--") and "=" in arg:
        key, value = arg[2:].split("=", 1)
        if key not in KNOWN:
            print(f"error: config key {key} is unknown", file=sys.stderr)
            sys.exit(2)
        values[key] = value
seed = int(values["run.seed"])
if int(values.get("model.fail_seed", -1)) == seed:
    raise RuntimeError("simulated crash")
if values.get("run.resume"):
    run_dir = Path(values["run.resume"])
else:
    root = Path(values["run.results_dir"])
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    while (root / f"{values['run.name']}_{n}").exists():
        n += 1
    run_dir = root / f"{values['run.name']}_{n}"
    run_dir.mkdir()
(run_dir / "checkpoints").mkdir(exist_ok=True)
(run_dir / "checkpoints" / "last.pt").write_text("checkpoint")
with open(run_dir / "argv.jsonl", "a") as f:
    f.write(json.dumps(argv) + "\n")
batch, steps = int(values["train.batch_size"]), int(values["train.max_steps"])
acc = float(values.get("model.quality", 0.9)) + 0.001 * seed
with open(run_dir / "metrics.csv", "w") as f:
    f.write("step,epoch,split,loss,acc,lr\n")
    f.write(f"{steps // 2},0,val,1.0,{acc - 0.01},0.1\n{steps},0,val,0.5,{acc},0.1\n{steps},0,test,0.5,{acc},\n")
summary = {"test_acc": acc - 0.002, "best_val_acc": acc, "steps": steps, "flops_per_step": 1000.0 * batch,
           "global_batch": batch, "train_time_s": 0.01, "samples_per_s": 1000.0}
(run_dir / "summary.json").write_text(json.dumps(summary))
'''


@pytest.fixture
def fake(tmp_path):
    """The stand-in script and its base config, in tmp_path."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    config = tmp_path / "fake.yaml"
    config.write_text("train: {batch_size: 10, lr: 0.1}\nmodel: {quality: 0.9}\n")
    return script, config


def write_grid(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def fake_grid(tmp_path, fake, name="grid.yaml", **changes) -> Path:
    script, config = fake
    fields = {"script": str(script), "base_config": str(config), "seeds": [0, 1], "budget": {"samples": 1000},
              "baseline": "base", "arms": {"base": {}, "big": {"train.batch_size": 40}}}
    fields.update(changes)
    return write_grid(tmp_path / name, **fields)


def ablate(grid: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_script(["cifar/ablate.py", "--grid", str(grid), "--out", str(out), "--workers", "2", *extra],
                      check=check)


def run_dirs(out: Path) -> set[str]:
    """Every run directory under OUT/runs, as paths relative to OUT."""
    return {str(p.relative_to(out)) for p in out.glob("runs/*/seed*/*") if p.is_dir()}


def argv_of(out: Path, arm: str, seed: int) -> list[list[str]]:
    """The command lines of every invocation that wrote into the (arm, seed) run directories."""
    lines = []
    for path in sorted(out.glob(f"runs/{arm}/seed{seed}/*/argv.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def option(argv: list[str], key: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{key}=")]
    assert values, (key, argv)
    return values[-1]


def assert_user_error(args: list[str], watched: Path, expected: str) -> None:
    """Exit status 2, one `error:` line that contains `expected`, and no file under `watched` changed."""
    before = tree_digest(watched)
    proc = run_script(args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert tree_digest(watched) == before


# ---------------------------------------------------------------------------------------------
# Decision lines


def test_decision_equal_arms_no_decision():
    line = decision_line("same", welch_test([0.97, 0.98, 0.99], [0.97, 0.98, 0.99]))
    assert line.startswith("arm same: no detectable difference at this budget (+0.00 pp, 95% CI")
    assert "p = 1.000, n = 3)" in line


def test_decision_clear_gain_beats():
    line = decision_line("wide", welch_test([0.970, 0.971, 0.972], [0.980, 0.981, 0.982]))
    assert line.startswith("arm wide beats baseline by +1.00 pp (95% CI +")
    assert line.endswith(", n = 3)")


def test_decision_clear_loss_is_worse():
    line = decision_line("slow", welch_test([0.980, 0.981, 0.982], [0.970, 0.971, 0.972]))
    assert line.startswith("arm slow is worse than baseline by -1.00 pp (95% CI -")


def test_decision_single_seed_no_test():
    line = decision_line("one", welch_test([0.97], [0.98]))
    assert line.startswith("arm one: no test at this budget (+1.00 pp, n = 1)")


def test_decision_zero_variance_unequal_means():
    line = decision_line("flat", welch_test([0.5, 0.5], [0.6, 0.6]))
    assert line.startswith("arm flat: no test at this budget (+10.00 pp, n = 2)")
    assert "zero variance" in line


# ---------------------------------------------------------------------------------------------
# Runner with the stand-in script


def test_samples_budget_sets_steps_per_arm(tmp_path, fake):
    grid = fake_grid(tmp_path, fake, arms={"base": {}, "big": {"train.batch_size": 40}, "odd": {"train.batch_size": 30}})
    out = tmp_path / "out"
    ablate(grid, out)
    expected = {"base": 100, "big": 25, "odd": 33}  # 1000 samples // global batch 10, 40, 30
    for arm, steps in expected.items():
        for seed in (0, 1):
            (argv,) = argv_of(out, arm, seed)
            assert option(argv, "train.max_steps") == str(steps), (arm, seed)
            assert option(argv, "train.schedule_steps") == str(steps), (arm, seed)
            assert option(argv, "run.seed") == str(seed)
    rows = read_csv(out / "ablation.csv")
    assert len(rows) == 6
    assert {(r["arm"], int(r["steps"]), int(r["samples"])) for r in rows} == {
        ("base", 100, 1000), ("big", 25, 1000), ("odd", 33, 990)}
    for name in ("ablation.md", "grid.yaml", "base_config.yaml", "plots/arms.png", "plots/curves.png"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("probes/*/probe_*/summary.json"))) == 3


def test_flops_budget_sets_steps_per_arm(tmp_path, fake):
    # The stand-in reports 1000 FLOPs per sample: 10,000 per step at batch 10, 40,000 at batch 40.
    grid = fake_grid(tmp_path, fake, budget={"flops": "1e6"}, seeds=[0])
    out = tmp_path / "out"
    ablate(grid, out)
    assert option(argv_of(out, "base", 0)[0], "train.max_steps") == "100"
    assert option(argv_of(out, "big", 0)[0], "train.max_steps") == "25"
    rows = read_csv(out / "ablation.csv")
    assert [float(r["flops"]) for r in rows] == [1e6, 1e6]


def test_report_states_decisions(tmp_path, fake):
    arms = {"base": {}, "better": {"model.quality": 0.95}, "same": {"model.quality": 0.9}}
    grid = fake_grid(tmp_path, fake, arms=arms, seeds=[0, 1, 2], metric="best_val_acc")
    out = tmp_path / "out"
    proc = ablate(grid, out)
    report = (out / "ablation.md").read_text()
    for text in (proc.stdout, report):
        assert "arm better beats baseline by +5.00 pp (95% CI" in text
        assert "arm same: no detectable difference at this budget (+0.00 pp" in text
    assert "samples = 1,000 per run" in report
    assert "| base | 3 | 90.10 |" in report  # mean of 0.900, 0.901, 0.902


def test_child_failure_reported_and_others_finish(tmp_path, fake):
    arms = {"base": {}, "crashy": {"model.fail_seed": 1}}
    out = tmp_path / "out"
    proc = ablate(fake_grid(tmp_path, fake, arms=arms), out, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1, proc.stderr
    assert "arm crashy seed 1" in failed[0]
    log = Path(failed[0].rsplit("log ", 1)[1])
    assert log.is_file()
    assert "simulated crash" in log.read_text()
    rows = read_csv(out / "ablation.csv")
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("base", "0"), ("base", "1"), ("crashy", "0")]
    assert "no finished run: crashy seed 1" in (out / "ablation.md").read_text()


def test_rerun_with_more_seeds_adds_runs(tmp_path, fake):
    grid = fake_grid(tmp_path, fake)
    out = tmp_path / "out"
    ablate(grid, out)
    before = run_dirs(out)
    proc = ablate(grid, out, "--seeds", "0,1,2")
    assert proc.stdout.count(" skip ") == 4
    assert run_dirs(out) - before == {"runs/base/seed2/base_seed2_0", "runs/big/seed2/big_seed2_0"}
    assert len(read_csv(out / "ablation.csv")) == 6


def test_out_with_other_grid_rejected(tmp_path, fake):
    out = tmp_path / "out"
    ablate(fake_grid(tmp_path, fake), out)
    changed = fake_grid(tmp_path, fake, name="other.yaml", arms={"base": {}, "big": {"train.batch_size": 20}})
    assert_user_error(["cifar/ablate.py", "--grid", str(changed), "--out", str(out)], tmp_path,
                      "contains an ablation of a different grid (keys that differ: arms)")


def test_out_without_grid_rejected(tmp_path, fake):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("unrelated")
    assert_user_error(["cifar/ablate.py", "--grid", str(fake_grid(tmp_path, fake)), "--out", str(out)], tmp_path,
                      "contains no grid.yaml")


def test_arm_rejected_by_fake_config_check(tmp_path, fake):
    grid = fake_grid(tmp_path, fake, arms={"base": {}, "typo": {"train.lrr": 0.1}})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, "cifar/ablate.py", "--grid", str(grid), "--out", str(tmp_path / "out")],
        cwd=REPO, env={**script_env(), "TMPDIR": str(scratch)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: " + f"{grid.parent / 'fake_train.py'} rejected the config of arm typo: config key train.lrr is unknown"
    assert not (tmp_path / "out").exists()
    assert list(scratch.iterdir()) == []  # the probes' scratch folder is removed too


BAD_GRIDS = [
    ({"budget": {"epochs": 3}}, "budget kind 'epochs'", []),
    ({"budget": {"samples": 100, "steps": 3}}, "exactly one of samples, steps, flops", []),
    ({"budget": {"samples": -5}}, "must be a positive whole number", []),
    ({"baseline": "nobody"}, "baseline 'nobody' is not among the arms (base, big)", []),
    ({"seeds": [0, "one"]}, "seeds", []),
    ({}, "--seeds '0,x' must be comma-separated integers", ["--seeds", "0,x"]),
    ({"arms": {"base": {}, "big": {"train.max_steps": 5}}}, "arms.big sets train.max_steps", []),
    ({"arms": {"base": {}, "big": {"_nprocs": 2}}}, "_nprocs is not a runner option", []),
    ({"arms": {"base": {}, "big": {"_nproc": 0}}}, "_nproc of arm big is 0", []),
    ({"arms": {"base": {}, "b/ad": {}}}, "arm name 'b/ad'", []),
    ({"script": "nowhere/train.py"}, "grid key script", []),
    ({"epochs": 3}, "grid key 'epochs'", []),
]


@pytest.mark.parametrize("changes,expected,extra", BAD_GRIDS)
def test_bad_grid_exits_2(tmp_path, fake, changes, expected, extra):
    grid = fake_grid(tmp_path, fake, **changes)
    assert_user_error(["cifar/ablate.py", "--grid", str(grid), "--out", str(tmp_path / "out"), *extra], tmp_path,
                      expected)


def test_missing_grid_file_exits_2(tmp_path):
    assert_user_error(["cifar/ablate.py", "--grid", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out")],
                      tmp_path, "not found")


def test_help_lists_every_option():
    proc = run_script(["cifar/ablate.py", "--help"])
    for flag in ("--grid", "--out", "--workers", "--threads-per-run", "--seeds", "_nproc"):
        assert flag in proc.stdout, flag


# ---------------------------------------------------------------------------------------------
# Runner with mnist/train.py

MNIST_OVERRIDES = {"data.train_size": 2000, "train.log_every": 5, "train.warmup_steps": 5}


def mnist_grid(path: Path, arms: dict, budget: dict, seeds: list[int]) -> Path:
    return write_grid(path, script="mnist/train.py", base_config="mnist/configs/mlp.yaml", seeds=seeds,
                      budget=budget, metric="best_val_acc", baseline="base", overrides=MNIST_OVERRIDES, arms=arms)


@pytest.fixture(scope="module")
def mnist_ablation(tmp_path_factory):
    """Two arms x two seeds of the MLP at 1,280 samples: 20 steps at batch 64, 10 steps at batch 128."""
    root = tmp_path_factory.mktemp("mnist_ablation")
    arms = {"base": {"train.batch_size": 64}, "big_batch": {"train.batch_size": 128, "train.lr": 0.004}}
    grid = mnist_grid(root / "grid.yaml", arms, {"samples": 1280}, [0, 1])
    out = root / "out"
    proc = ablate(grid, out)
    return grid, out, proc


@pytest.mark.slow
def test_mnist_report_files(mnist_ablation):
    _, out, proc = mnist_ablation
    for name in ("ablation.csv", "ablation.md", "plots/arms.png", "plots/curves.png", "grid.yaml"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "ablation.csv")
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("base", "0"), ("base", "1"), ("big_batch", "0"), ("big_batch", "1")]
    assert all(0 < float(r["best_val_acc"]) <= 1 for r in rows)
    report = (out / "ablation.md").read_text()
    assert "samples = 1,280 per run" in report
    assert "- arm big_batch" in report
    assert "arm big_batch" in proc.stdout


@pytest.mark.slow
def test_mnist_steps_follow_batch_size(mnist_ablation):
    _, out, _ = mnist_ablation
    for arm, steps, batch in (("base", 20, 64), ("big_batch", 10, 128)):
        for seed in (0, 1):
            (summary_path,) = out.glob(f"runs/{arm}/seed{seed}/*/summary.json")
            summary = json.loads(summary_path.read_text())
            assert summary["steps"] == steps, (arm, seed)
            assert summary["global_batch"] == batch, (arm, seed)
            assert summary["seed"] == seed
    rows = read_csv(out / "ablation.csv")
    assert {int(r["samples"]) for r in rows} == {1280}


@pytest.mark.slow
def test_mnist_rerun_creates_no_run_dirs(mnist_ablation):
    grid, out, _ = mnist_ablation
    before = run_dirs(out)
    proc = ablate(grid, out)
    assert proc.stdout.count(" skip ") == 4
    assert " start " not in proc.stdout
    assert "probing" not in proc.stdout
    assert run_dirs(out) == before


@pytest.mark.slow
def test_mnist_dead_runs_are_redone(mnist_ablation, tmp_path):
    grid, original, _ = mnist_ablation
    out = tmp_path / "out"
    shutil.copytree(original, out)
    (with_checkpoint,) = out.glob("runs/base/seed0/*/summary.json")
    with_checkpoint.unlink()
    (without_checkpoint,) = out.glob("runs/big_batch/seed1/*/summary.json")
    without_checkpoint.unlink()
    (without_checkpoint.parent / "checkpoints" / "last.pt").unlink()
    before = run_dirs(out)

    proc = ablate(grid, out)
    assert f"resuming {with_checkpoint.parent}" in proc.stdout
    assert with_checkpoint.is_file()  # resumed in place from checkpoints/last.pt
    assert without_checkpoint.parent.is_dir()  # the dead run directory is kept
    assert not without_checkpoint.exists()  # and not reused, because it had no checkpoint
    added = run_dirs(out) - before
    assert len(added) == 1
    assert added.pop().startswith("runs/big_batch/seed1/")
    assert len(read_csv(out / "ablation.csv")) == 4


def test_mnist_arm_rejected_by_config_check(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", script="mnist/train.py", base_config="mnist/configs/mlp.yaml",
                      seeds=[0], budget={"steps": 5}, baseline="typo", arms={"typo": {"train.lrr": 0.1}})
    assert_user_error(["cifar/ablate.py", "--grid", str(grid), "--out", str(tmp_path / "out")], tmp_path,
                      "mnist/train.py rejected the config of arm typo: config key train.lrr is unknown")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mnist_nproc_arm_runs_torchrun(tmp_path):
    # One arm that is also the baseline: a probe and a run, both under torchrun.
    grid = write_grid(tmp_path / "grid.yaml", script="mnist/train.py", base_config="mnist/configs/mlp.yaml",
                      seeds=[0], budget={"steps": 5}, baseline="two", overrides=MNIST_OVERRIDES,
                      arms={"two": {"_nproc": 2}})
    out = tmp_path / "out"
    proc = ablate(grid, out)
    assert "2 process(es)" in proc.stdout
    (summary_path,) = out.glob("runs/two/seed0/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 5
    assert summary["ranks_in_sync"] is True
