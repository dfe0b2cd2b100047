import pytest
import torch

from unigrpo.shapes.model import ShapesConfig, ShapesModel

PROMPTS = ["a red circle", "two squares the color of grass", "a blue triangle left of a yellow circle"]
PLANS = ["red circle @ 1 1", "green square @ 0 0 ; green square @ 2 2", "blue triangle @ 0 1 ; yellow circle @ 2 1"]


def _tiny(image_expert: bool = True, seed: int = 0, layers: int = 2) -> ShapesModel:
    torch.manual_seed(seed)
    cfg = ShapesConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=48, timestep_embed_dim=16, image_expert=image_expert)
    model = ShapesModel(cfg)
    # the real init zeroes the velocity head; a random one makes v depend on every input
    torch.nn.init.normal_(model.velocity_head.weight, std=0.2)
    torch.nn.init.normal_(model.velocity_head.bias, std=0.2)
    return model.eval()


@pytest.fixture
def make_tiny():
    """Factory: ``make_tiny(image_expert=True, seed=0, layers=2)`` -> a tiny eval-mode model."""
    return _tiny


@pytest.fixture(params=[True, False], ids=["mot", "dense"])
def model(request):
    return _tiny(image_expert=request.param)


@pytest.fixture
def batch():
    """``batch(model)``: left-padded ``<bos> prompt <think> plan </think>`` rows of unequal lengths."""
    def make(model: ShapesModel, n: int = 3):
        return model.encode_texts([f"<bos> {t} <think> {p} </think>" for t, p in zip(PROMPTS[:n], PLANS[:n])])
    return make


@pytest.fixture
def prompts():
    return list(PROMPTS)
