import os

import pytest
import torch

# Kernel modules must see the interpreter switch before they are imported: importing the
# package's kernel runtime first guarantees it (it is also what every notebook does).
import hrvit_edu.kernels  # noqa: F401

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
