"""Whether an aligner fits the images it is used on: an aligner trained on one kind of image
(renders of the synthetic world, say) maps another kind (real photos) poorly, and every
score computed through it then means little. Measured, not guessed: the cosine of the mapped
sum to the CLIP's own embedding on a sample of the images, against the aligner's held-out
cosine on its training images."""
from __future__ import annotations

import torch.nn.functional as F

from compsearch.mapping.align.aligner import Aligner
from compsearch.mapping.align.features import AlignmentEncoder
from compsearch.mapping.errors import warn
from compsearch.mapping.images import SourceSpec
from compsearch.mapping.images.probe import probe_batches
from compsearch.mapping.models import LoadedModel

FIT_SAMPLE = 32  # images: enough for a mean cosine to ±0.02, cheap next to a probe set
FIT_MARGIN = 0.1  # how far below its held-out cosine an aligner may fall before we warn


def probe_cosine(model: LoadedModel, aligner: Aligner, clip: LoadedModel, images: SourceSpec) -> float:
    """Mean cosine of Σ_i f_i(c_i(x)) to the CLIP embedding of x over the first
    :data:`FIT_SAMPLE` readable images of the probe set ``images``."""
    encode = AlignmentEncoder(model, clip, aligner.meta.first_block)
    batch = next(batch for batch in probe_batches(images, encode.transforms, FIT_SAMPLE) if len(batch))
    _, contributions, targets = encode(batch.pixels)
    return F.cosine_similarity(aligner.map_sum(contributions), targets.to(aligner.bias.dtype), dim=-1).mean().item()


def check_aligner_fit(model: LoadedModel, aligner: Aligner, clip: LoadedModel, images: SourceSpec) -> float | None:
    """Warn when ``aligner`` maps the probe set ``images`` clearly worse than its own held-out
    images; the cosine measured (None for an identity aligner or one without a held-out cosine)."""
    meta = aligner.meta
    if meta.identity or meta.heldout_cosine is None:
        return None
    cosine = probe_cosine(model, aligner, clip, images)
    if cosine < meta.heldout_cosine - FIT_MARGIN:
        trained_on = f" ({meta.trained_on})" if meta.trained_on else ""
        warn(f"the aligner maps these images to cosine {cosine:.2f} with the CLIP, against {meta.heldout_cosine:.2f} "
             f"on the images it was trained on{trained_on}: it was trained on another kind of image",
             "train an aligner on images like these (`compsearch align --images …`)")
    return cosine
