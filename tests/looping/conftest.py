import pytest
import torch


@pytest.fixture
def tiny():
    """tiny(model_type, **overrides) -> a small random fp32 model in eval mode (seeded)."""
    from tests.looping.families import tiny_model

    def make(model_type, **overrides):
        torch.manual_seed(0)
        return tiny_model(model_type, **overrides)
    return make
