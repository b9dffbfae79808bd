import os
import shutil
import tempfile

import pytest
import torch

# Kernels run through Triton's interpreter unless a GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Generated kernels go to a fresh cache per run, never the user's ~/.cache/axon; so do Triton's compiles
# (the sm_90 sweep of test_aot.py), never the user's ~/.triton/cache: each run compiles from cold, as CI.
# Both are removed when the session ends (a run leaves nothing behind in /tmp).
_MADE = []
for _var, _prefix in (("AXON_CACHE_DIR", "axon-test-kernels-"), ("TRITON_CACHE_DIR", "axon-test-triton-")):
    if _var not in os.environ:
        os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
        _MADE.append(os.environ[_var])


def pytest_sessionfinish(session, exitstatus):
    for folder in _MADE:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if "slow" not in (config.getoption("-m") or ""):  # slow tests run when asked for: -m slow
        slow = pytest.mark.skip(reason="slow: run with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A seeded torch generator, so every test draws the same random inputs on every run."""
    return torch.Generator().manual_seed(1234)
