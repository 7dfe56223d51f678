"""Fixtures shared by the miniature's tests."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core machine two threads that wait for each other run
    many times slower than one (tens of seconds instead of a fraction of one per sampling run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
