"""One module per architecture family; importing this package registers them all."""
from mapping.decompose.families import vit, openclip_vit, swin, maxvit  # noqa: F401
