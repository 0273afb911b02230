"""torch.hub entrypoints of the compressed-CNN zoo: one per architecture.

    model = torch.hub.load("path/to/zoo", "resnet20", source="local", pretrained=True)

``pretrained=True`` loads the architecture's default released checkpoint (sha256-checked, strict);
``num_classes`` / ``in_chans`` and any other constructor arguments pass through to timm.
"""

import zoo as _zoo
from zoo.hubconf_entrypoints import make_entrypoints as _make_entrypoints

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

globals().update(_make_entrypoints(_zoo.list_architectures()))
