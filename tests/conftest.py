import os

import pytest
import torch

# Kernel modules must see the interpreter switch before they are imported: the tests ask for it
# here, first, exactly as every notebook's setup_notebook() does.
import hrvit_edu.kernels

hrvit_edu.kernels.enable_interpreter()

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
