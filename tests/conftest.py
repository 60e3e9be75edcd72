import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*bos_token_id.*")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _two_threads():
    """A run's train.num_threads must not leak into the tests after it."""
    yield
    torch.set_num_threads(2)
