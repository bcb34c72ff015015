"""Bad input: one `error:` line on stderr, exit status 2, no traceback, and results/ untouched."""

import gzip
import shutil

import pytest

from mnist import data as mnist_data
from tests.conftest import only_run_dir, run_script, tree_digest
from tests.test_mnist_data import LoopbackServer

BASE = ["mnist/train.py", "--config", "mnist/configs/baseline.yaml", "--system.num_workers=0",
        "--data.train_size=2000", "--train.max_steps=20"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Create a results folder that contains one finished softmax run."""
    root = tmp_path_factory.mktemp("results")
    run_script([*BASE, f"--run.results_dir={root}"])
    return root


def assert_user_error(args, results_root, expected: str):
    before = tree_digest(results_root)
    proc = run_script([*args, f"--run.results_dir={results_root}"], check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert tree_digest(results_root) == before


def test_missing_data_directory(results, tmp_path):
    assert_user_error([*BASE, f"--data.dir={tmp_path / 'nowhere'}"], results, "not found")


def test_corrupted_data_file(results, tmp_path, mnist_dir):
    broken = tmp_path / "mnist"
    shutil.copytree(mnist_dir, broken)
    images = broken / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-1000]))
    assert_user_error([*BASE, f"--data.dir={broken}"], results, "is truncated")


def test_failed_checksum(results, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in mnist_data.OFFICIAL_MD5:
        (mirror / name).write_bytes(b"tampered")
    with LoopbackServer(mirror) as server:
        assert_user_error(
            [*BASE, f"--data.dir={tmp_path / 'download'}", "--data.download=true", f"--data.url={server.url}"],
            results, "checksum failed",
        )


def test_bad_config_value(results):
    assert_user_error([*BASE, "--train.batch_size=large"], results, "train.batch_size expects int")


def test_float16_needs_cuda(results):
    assert_user_error([*BASE, "--system.dtype=float16", "--system.device=cpu"], results, "float16 runs only on CUDA")


def test_cuda_requested_without_cuda(results):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_user_error([*BASE, "--system.device=cuda"], results, "CUDA is not available")


def test_resume_with_another_model(results):
    run_dir = only_run_dir(results)
    assert_user_error([*BASE, "--model.name=cnn", f"--run.resume={run_dir}"], results, "model.name=softmax")


def test_resume_with_other_shapes(results):
    # Same architecture name, different widths: the strict key and shape check catches it.
    mlp_root = results.parent / "mlp_results"
    run_script([*BASE, "--model.name=mlp", "--model.hidden=32", f"--run.results_dir={mlp_root}"])
    run_dir = only_run_dir(mlp_root)
    before = tree_digest(mlp_root)
    proc = run_script([*BASE, "--model.name=mlp", "--model.hidden=64", f"--run.resume={run_dir}"], check=False)
    assert proc.returncode == 2
    assert "does not match the model" in proc.stderr
    assert tree_digest(mlp_root) == before


def test_resume_finished_run(results):
    assert_user_error([*BASE, f"--run.resume={only_run_dir(results)}"], results, "already finished")


def test_resume_missing_directory(results, tmp_path):
    assert_user_error([*BASE, f"--run.resume={tmp_path / 'gone'}"], results, "not found")


def test_corrupted_checkpoint(results, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(only_run_dir(results), run_dir)
    (run_dir / "summary.json").unlink()
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    assert_user_error([*BASE, f"--run.resume={run_dir}"], results, "cannot be read")


def test_resume_from_best_checkpoint(results, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(only_run_dir(results), run_dir)
    (run_dir / "summary.json").unlink()
    assert_user_error([*BASE, f"--run.resume={run_dir / 'checkpoints' / 'best.pt'}"], results, "contains only model weights")


def test_resume_without_metrics(results, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(only_run_dir(results), run_dir)
    (run_dir / "summary.json").unlink()
    (run_dir / "metrics.csv").unlink()
    assert_user_error([*BASE, f"--run.resume={run_dir}"], results, "has no metrics.csv")


def test_quoted_integer_in_yaml(results, tmp_path):
    config = tmp_path / "quoted.yaml"
    config.write_text('train:\n  epochs: "3"\n')
    assert_user_error(["mnist/train.py", "--config", str(config)], results, "train.epochs expects int, got '3' (str)")


def test_yaml_syntax_error_names_the_line(results, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  lr: [0.1\n")
    assert_user_error(["mnist/train.py", "--config", str(config)], results, "line 3")


def test_week_report_folder_removed_after_early_failure(tmp_path):
    out = tmp_path / "w1"
    proc = run_script(["mnist/week01.py", "--out", str(out), "--data-dir", str(tmp_path / "nowhere")], check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data directory")
    assert not out.exists()
