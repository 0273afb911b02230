"""A model zoo of compressed CNNs (binary and channel-pruned) loadable through timm, torch.hub and the HF Hub.

Importing ``zoo`` registers every architecture with timm::

    import timm, zoo
    model = timm.create_model("resnet20.fmnist", pretrained=True)
    model = zoo.from_pretrained("hf-hub:compressed-cnn-zoo/resnet20.fmnist")
"""

from zoo import models  # noqa: F401  (registers the architectures with timm)
from zoo.api import from_pretrained, list_architectures, list_checkpoints
from zoo.inference import to_inference

__version__ = "0.1.0"
__all__ = ["from_pretrained", "list_architectures", "list_checkpoints", "to_inference", "__version__"]
