import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# 2-core CI machines: one intra-op thread is several times faster than two under load.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    from graft_train.synth import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synth"), n_train=192, n_test=64, dim=32, seed=0)
