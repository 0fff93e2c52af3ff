"""One module per architecture family; importing this package registers them all."""
from compsearch.mapping.decompose.families import vit  # noqa: F401
from compsearch.mapping.decompose.families import openclip_vit  # noqa: F401
from compsearch.mapping.decompose.families import maxvit  # noqa: F401
from compsearch.mapping.decompose.families import swin  # noqa: F401
