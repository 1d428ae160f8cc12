import os
import socket
import subprocess
import sys

import pytest
import torch

from patchguard.models.factory import load_model
from patchguard.training.distributed import DistContext, GlobalBatchSampler
from patchguard.training.trainer import train

from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE, tiny_config

pytestmark = pytest.mark.integration  # runs the command line or a whole path end to end


def test_ranks_split_each_global_batch_of_the_single_process_order():
    single = list(GlobalBatchSampler(12, 4, DistContext(), seed=3, epoch=1))
    ranks = [list(GlobalBatchSampler(12, 4, DistContext(r, 2, r), seed=3, epoch=1))
             for r in range(2)]
    for step in range(3):
        global_batch = single[step * 4:(step + 1) * 4]
        assert ranks[0][step * 2:(step + 1) * 2] + ranks[1][step * 2:(step + 1) * 2] \
            == global_batch
    # an incomplete last global batch is dropped with several ranks, kept with one
    assert len(list(GlobalBatchSampler(10, 4, DistContext(0, 2, 0), 0, 0))) == 4
    assert len(list(GlobalBatchSampler(10, 4, DistContext(), 0, 0))) == 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    make_mvtec_class(tmp_path / "data")  # 8 training images, global batch 4: 2 steps/epoch
    overrides = dict(epochs=2, batch_size=4, dsc_dropout=0.0, steps_train=2)
    single = train(tiny_config(tmp_path / "data", tmp_path / "single", **overrides),
                   progress=False)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"backbone: {TINY_BACKBONE}\npretrained: false\nimage_size: 64\nfeature_layers: [3]\n"
        "reg_layers: [2, 3]\nreg_coefficients: [0.01, 0.05]\ndsc_hidden: 64\nepochs: 2\n"
        "batch_size: 4\nsteps_train: 2\nworkers: 0\ndevice: cpu\nsave_every: 1\n"
        "dsc_dropout: 0.0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "patchguard", "train", "--config", str(config), "--dataset-dir",
         str(tmp_path / "data"), "--class-name", "widget", "--output-dir",
         str(tmp_path / "ddp"), "--quiet"],
        capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # Compare what the models compute, not raw parameters: attention key biases get exactly
    # zero gradient (softmax ignores them), and Adam turns the float noise of a different
    # summation order into full-size steps there, without any effect on the outputs.
    models = [load_model(path)[0] for path in (single, tmp_path / "ddp" / "last.pt")]
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [m(x, with_attention=False).logits for m in models]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    reference = load_model(single)[0]
    reference.discriminator.output_layer[0].bias.data += 0.01  # the check would see a change
    with torch.no_grad():
        assert not torch.allclose(reference(x, with_attention=False).logits, logits[1],
                                  atol=1e-4)
    log = (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2  # only rank 0 writes
