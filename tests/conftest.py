import os

import pytest

# Everything in the suite runs on the CPU, offline, and must not oversubscribe two cores.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile: no pool of compile workers competing for the same two cores.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Undo whatever a test exported into this process (a launcher's RANK, MASTER_PORT, ...), so that
    later tests, and the jobs they submit (sbatch passes the environment on), start clean."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
