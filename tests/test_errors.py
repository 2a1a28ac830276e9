"""The bad inputs of docs/errors.md not covered next to their modules: each gives a clear message naming the file
or option, a non-zero exit and no traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch

from srdensenet.checkpoint import save_checkpoint
from srdensenet.dataset import DatasetError, TrainDataset, find_validation_sets, make_train_loader
from srdensenet.evaluation import EvaluationError, evaluate
from srdensenet.image_files import write_image
from srdensenet.model import SRDenseNet

TINY = dict(num_blocks=1, layers_per_block=2, growth_rate=4, num_features=8, bottleneck_features=8)
TINY_FLAGS = ["--num-blocks", "1", "--layers-per-block", "2", "--growth-rate", "4", "--num-features", "8",
              "--bottleneck-features", "8", "--upscale-factor", "2", "--hr-patch-size", "16", "--batch-size", "4",
              "--patches-per-image", "8", "--num-workers", "0", "--precision", "fp32", "--log-every", "1"]


def cli(repo_root, *args, timeout=180):
    result = subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_image(root / "chelsea.png", skimage.data.chelsea()[:48, :64])
    return root


@pytest.fixture(scope="module")
def x2_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "x2.pth"
    save_checkpoint(path, SRDenseNet(2, **TINY))
    return path


def test_unwritable_outputs_fail_before_work(repo_root, folder, x2_weights, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = cli(repo_root, "validate.py", "--weights", "bicubic", "--upscale-factor", "2", "--valid-dirs",
                 str(folder), "--json", str(blocker / "out.json"))
    assert result.returncode == 1 and "--json" in result.stderr and "cannot write" in result.stderr
    assert "chelsea" not in result.stdout  # nothing was computed first
    result = cli(repo_root, "train.py", "--preset", "demo", "--train-dirs", str(folder), "--valid-dirs",
                 str(folder), "--output-dir", str(blocker), *TINY_FLAGS)
    assert result.returncode == 1 and "--output-dir" in result.stderr and "cannot write" in result.stderr
    result = cli(repo_root, "inference.py", "--weights", str(x2_weights), "-i", str(folder / "chelsea.png"),
                 "-o", str(blocker / "sr.png"), "--precision", "fp32")
    assert result.returncode != 0 and str(blocker) in result.stderr


def test_checkpoint_of_another_model_is_named(repo_root, folder, x2_weights, tmp_path):
    result = cli(repo_root, "train.py", "--preset", "demo", "--train-dirs", str(folder), "--valid-dirs",
                 str(folder), "--output-dir", str(tmp_path), *TINY_FLAGS, "--num-features", "16",
                 "--init-weights", str(x2_weights), "--epochs", "1")
    assert result.returncode == 1
    assert str(x2_weights) in result.stderr and "another variant, layout or scale" in result.stderr
    # Not strict: the mismatching tensors are skipped and reported, training goes on.
    result = cli(repo_root, "train.py", "--preset", "demo", "--train-dirs", str(folder), "--valid-dirs",
                 str(folder), "--output-dir", str(tmp_path), *TINY_FLAGS, "--num-features", "16",
                 "--init-weights", str(x2_weights), "--no-init-strict", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert "missing/mismatched" in result.stdout


def test_resume_with_other_model_fields_is_refused(repo_root, folder, tmp_path):
    common = ["train.py", "--preset", "demo", "--train-dirs", str(folder), "--valid-dirs", str(folder),
              "--output-dir", str(tmp_path), *TINY_FLAGS, "--epochs", "1"]
    assert cli(repo_root, *common).returncode == 0
    result = cli(repo_root, *common, "--variant", "hl", "--resume", "auto")
    assert result.returncode == 1 and "pass the same model fields to resume" in result.stderr


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(folder, tmp_path, monkeypatch):
    """Fault injection: the loss turns NaN at step 5 (epoch 3); the run stops with a message and `last` keeps the
    good epoch-2 weights."""
    from srdensenet import train_step
    from srdensenet import training as train
    from srdensenet.config import parse_config

    config, _ = parse_config(["--preset", "demo", "--train-dirs", str(folder), "--valid-dirs", str(folder),
                              "--output-dir", str(tmp_path), *TINY_FLAGS, "--epochs", "5"])
    calls = {"n": 0}
    real_mse = train_step.F.mse_loss

    def failing_mse(*args, **kwargs):
        calls["n"] += 1
        loss = real_mse(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(train_step.F, "mse_loss", failing_mse)
    with pytest.raises(train.TrainingError, match="loss became nan at step 5.*last good checkpoint"):
        train.train(config)
    kept = torch.load(tmp_path / "demo" / "checkpoints" / "last.pth", weights_only=True)
    assert kept["step"] == 4 and kept["epoch"] == 2  # 2 steps per epoch: the end of epoch 2
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_nan_model_output_is_reported_with_the_image(folder, tiny):
    with torch.no_grad():
        tiny.reconstruction.bias.fill_(float("nan"))  # a model whose weights went bad
    sets = find_validation_sets([str(folder)], 2)
    with pytest.raises(EvaluationError, match="chelsea.png.*NaN"):
        evaluate(tiny, sets, device="cpu")


def test_world_size_larger_than_data_set(folder):
    dataset = TrainDataset([str(folder)], 2, 16, patches_per_image=4)
    with pytest.raises(DatasetError, match="to each of 8 process"):
        make_train_loader(dataset, 1, 0, torch.device("cpu"), num_replicas=8, rank=0)


def test_lmdb_key_cannot_escape(tmp_path):
    from srdensenet.dataset import read_lmdb_meta

    (tmp_path / "data.mdb").write_bytes(b"")
    (tmp_path / "meta_info.txt").write_text("../../etc/passwd.png (8,8,3) 1\n")
    with pytest.raises(DatasetError, match="not a plain name"):
        read_lmdb_meta(tmp_path)


def test_predict_rejects_non_finite_input():
    from srdensenet.inference import predict_y

    y = np.full((8, 8), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        predict_y(SRDenseNet(2, **TINY).eval(), y, precision="fp32", backend="torch")


def test_weights_only_file_cannot_resume_but_initialises(repo_root, folder, tmp_path):
    weights = tmp_path / "x2.safetensors"
    save_checkpoint(weights, SRDenseNet(2, **TINY))
    common = ["train.py", "--preset", "demo", "--train-dirs", str(folder), "--valid-dirs", str(folder),
              "--output-dir", str(tmp_path), *TINY_FLAGS, "--epochs", "1"]
    result = cli(repo_root, *common, "--resume", str(weights))
    assert result.returncode == 1 and str(weights) in result.stderr and "--init-weights" in result.stderr
    result = cli(repo_root, *common, "--init-weights", str(weights))
    assert result.returncode == 0, result.stderr
    assert f"initialised from {weights}" in result.stdout
