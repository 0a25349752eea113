from pathlib import Path

import pytest
from jsonl_files import write_jsonl


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in" / "docs.jsonl", [f"document number {i} about {i % 7} things" for i in range(50)])


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny models spend their time in thread hand-offs, and on
    a busy 2-core machine 2 threads run them 20x slower."""
    import torch  # here, not at the top: most tests never load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
