"""The reference CLIP fixture: a tiny open_clip ViT-CLIP trained from scratch on the world.

The architecture is a JSON config registered with ``open_clip.add_model_config`` (an
open_clip ``VisionTransformer`` image tower, so the project's open_clip decomposition applies
to it). Training is contrastive on world renders with full and partial captions. Because a
partial caption ("a star") truly describes many images in a batch, the loss treats every
caption that is true of an image as a positive (soft targets over all of them) instead of
pretending only the diagonal matches: this removes the false negatives that otherwise drown
the weak shape and pattern signal in the few steps a CPU budget allows (docs/architecture.md, Offline measurement).

The fixture lives in open_clip's ``local-dir:`` format (``open_clip_config.json`` +
``open_clip_model.safetensors``) under ``$COMPSEARCH_CACHE/fixtures/<key>``, where the key
hashes the model config, the training config and :data:`CODE_VERSION`; it is reloaded with
``mapping.models.load_model('local-dir:<folder>')`` like any open_clip model.

The default fixture ships with the package, trained: :data:`SHIPPED_WEIGHTS` (under 1 MB) and
its training report :data:`SHIPPED_REPORT`. The file holds every trained tensor in float32 and,
of the frozen 49408×64 token table, only the rows of the tokens the project's texts use (world
captions and zero-shot prompts, the built-in property vocabularies and templates, the default
text bank); the other rows regenerate from a dedicated seeded generator, not from the global
RNG's order of model construction (:mod:`indexer.world.fixture_pack`). :func:`fixture_clip_dir`
writes the folder from it in seconds; it trains only for another config, on ``rebuild``, or
when the shipped file's key is not the current one (the code changed and nobody re-exported).
To ship a retrained fixture: ``compsearch world fixture-clip --rebuild``, then
``python -m indexer.world.fixture_clip --export`` (which reads the cached default folder).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import click
import numpy as np
import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from open_clip.push_to_hf_hub import save_config_for_hf
from tqdm import tqdm

from compsearch.indexer.world.captions import caption_pieces, compose_caption, zero_shot_prompts
from compsearch.indexer.world.factors import FACTORS
from compsearch.indexer.world.fixture_pack import pack, read_metadata, unpack
from compsearch.indexer.world.render import render_image
from compsearch.indexer.world.splits import SPLITS
from compsearch.indexer.world.zero_shot import zero_shot_accuracy
from compsearch.mapping.cache import CACHE_ENV, cache_dir
from compsearch.mapping.errors import CompsearchError, warn
from compsearch.mapping.models import LoadedModel
from compsearch.mapping.properties.known_words import VOCABULARY_FILE, write_vocabulary

MODEL_NAME = "compsearch-world-clip"
MODEL_CONFIG_PATH = Path(__file__).with_name(f"{MODEL_NAME}.json")
# Bump when rendering, captions or training change what a given config produces.
CODE_VERSION = "3"
REPORT_NAME = "training_report.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"
SHIPPED_WEIGHTS = Path(__file__).with_name(f"{MODEL_NAME}.safetensors")
SHIPPED_REPORT = Path(__file__).with_name(f"{MODEL_NAME}.training_report.json")
TRAINED_ON = "renders of the synthetic world and their captions (compsearch world)"
# Report field naming the shipped file a cached folder was written from (absent when trained).
MATERIALISED_FROM = "materialised_from"


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = 4800
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 40
    weight_decay: float = 0.05
    train_images: int = 24000
    render_size: int = 96  # twice the CLIP's side; its preprocess downsizes these as it does 224-px renders
    captions_per_image: int = 4
    full_caption_share: float = 0.2
    # Chance that a partial caption names each factor (FACTORS order: shape, colour, pattern,
    # scene). Colour and scene alone tell most of a batch apart, so captions that name them
    # less often leave shape and pattern as what has to be learnt.
    naming_odds: tuple[float, ...] = (0.8, 0.4, 0.8, 0.4)
    # A batch is made of groups of this many images sharing the ``group_by`` factors, so that
    # within a group only the other factors tell captions apart (hard negatives); 1 = uniform.
    group_size: int = 8
    group_by: tuple[str, ...] = ("colour", "scene")
    eval_images: int = 1000
    seed: int = 0


def cache_root() -> Path:
    return cache_dir("fixtures")


def model_config() -> dict:
    return json.loads(MODEL_CONFIG_PATH.read_text())


def fixture_key(config: TrainingConfig) -> str:
    blob = json.dumps({"model": model_config(), "training": asdict(config), "code": CODE_VERSION}, sort_keys=True)
    return f"{MODEL_NAME}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def build_untrained() -> tuple[torch.nn.Module, object, object]:
    """(model, eval preprocess, tokenizer) of the registered fixture architecture, randomly initialised."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_PATH)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def _training_set(config: TrainingConfig, preprocess, tokenizer) -> tuple[torch.Tensor, ...]:
    """Images (n, 3, s, s) after the model's preprocess, labels (n, factors), and per image
    ``captions_per_image`` pre-tokenised captions with the mask of factors each names."""
    rng = np.random.default_rng([config.seed, 1])
    items = SPLITS["train"].items(config.train_images)
    images = torch.stack([preprocess(render_image(item, config.render_size))
                          for item in tqdm(items, desc="render fixture training set", unit="img")])
    labels = torch.tensor([[values.index(getattr(item, name)) for name, values in FACTORS.items()] for item in items])
    names = list(FACTORS)
    masks = rng.random((len(items), config.captions_per_image, len(names))) < np.array(config.naming_odds)
    masks[rng.random(masks.shape[:2]) < config.full_caption_share] = True
    masks |= np.eye(len(names), dtype=bool)[rng.integers(len(names), size=masks.shape[:2])]  # never empty
    captions = [compose_caption({n: item.factors()[n] for n, keep in zip(names, mask) if keep}, rng)
                for item, item_masks in zip(items, masks) for mask in item_masks]
    tokens = tokenizer(captions).view(len(items), config.captions_per_image, -1)
    return images, labels, tokens, torch.from_numpy(masks)


def positive_pairs(image_labels: torch.Tensor, caption_labels: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """(images, captions) bool: caption j is true of image i (agrees on every factor it names)."""
    agree = image_labels[:, None, :] == caption_labels[None, :, :]  # (images, captions, factors)
    return (agree | ~named[None, :, :]).all(dim=-1)


def multi_positive_loss(logits: torch.Tensor, image_labels: torch.Tensor, caption_labels: torch.Tensor,
                        named: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss over (images, captions) logits where caption j is a positive
    of image i whenever it is true of image i (:func:`positive_pairs`); targets are uniform
    over an image's positives (and over a caption's)."""
    positive = positive_pairs(image_labels, caption_labels, named).float()
    image_to_text = -(positive / positive.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(positive / positive.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _batch_sampler(labels: torch.Tensor, config: TrainingConfig, generator: torch.Generator):
    """Returns a function drawing one batch of image indices, in groups of ``group_size``
    images that share the ``group_by`` factors."""
    names = list(FACTORS)
    keys = torch.zeros(len(labels), dtype=torch.long)
    for factor in config.group_by:
        keys = keys * len(FACTORS[factor]) + labels[:, names.index(factor)]
    members_of = {int(key): torch.nonzero(keys == key).flatten() for key in keys.unique()}
    anchors_per_batch = max(1, config.batch_size // config.group_size)

    def sample() -> torch.Tensor:
        anchors = torch.randint(len(labels), (anchors_per_batch,), generator=generator)
        chosen = []
        for anchor in anchors.tolist():
            members = members_of[int(keys[anchor])]
            chosen.append(members[torch.randint(len(members), (config.group_size,), generator=generator)])
        return torch.cat(chosen)

    return sample


def _learning_rate(step: int, config: TrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def train(config: TrainingConfig, out_dir: Path) -> dict:
    """Train the fixture and save it into ``out_dir`` (local-dir format); returns the training report."""
    torch.manual_seed(config.seed)
    model, preprocess, tokenizer = build_untrained()
    started = time.perf_counter()
    images, labels, tokens, named = _training_set(config, preprocess, tokenizer)
    data_seconds = time.perf_counter() - started

    # The 49k-row token table stays at its random init: the world's captions use a few hundred
    # tokens, and updating (and Adam-stepping) the whole table cost most of each step's time.
    model.token_embedding.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # No decay on gains, biases, positional embeddings.
    decay = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trainable if p.ndim < 2 or "embedding" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    sample_batch = _batch_sampler(labels, config, generator)
    model.train()
    losses = []
    for step in (bar := tqdm(range(config.steps), desc="train fixture CLIP", unit="step")):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        # All of an image's captions join the batch: text is cheap next to the image tower,
        # so this multiplies the contrastive signal per (expensive) image forward.
        batch = sample_batch()
        image_features = F.normalize(model.encode_image(images[batch]), dim=-1)
        text_features = F.normalize(model.encode_text(tokens[batch].flatten(0, 1)), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        caption_labels = labels[batch].repeat_interleave(config.captions_per_image, dim=0)
        loss = multi_positive_loss(logits, labels[batch], caption_labels, named[batch].flatten(0, 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    train_seconds = time.perf_counter() - started - data_seconds
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), out_dir / WEIGHTS_NAME)
    save_config_for_hf(model, out_dir / CONFIG_NAME, model_config=model_config())
    write_training_vocabulary(out_dir)
    loaded = LoadedModel(MODEL_NAME, model, preprocess, tokenizer, "training", is_clip=True)
    report = {
        "config": asdict(config),
        "code_version": CODE_VERSION,
        "steps": config.steps,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "final_loss": float(np.mean(losses[-20:])),
        "test_accuracy": zero_shot_accuracy(loaded, SPLITS["test"].items(config.eval_images)),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


def shipped_key() -> str | None:
    """The cache key the shipped fixture was trained under (None if the package lacks it)."""
    return read_metadata(SHIPPED_WEIGHTS)["fixture_key"] if SHIPPED_WEIGHTS.is_file() else None


def write_training_vocabulary(folder: Path) -> Path:
    """The words the fixture's captions and zero-shot prompts are made of, beside its weights:
    what it knows (:mod:`mapping.properties.known_words` warns about any other word)."""
    prompts = [prompt for factor, values in FACTORS.items() for value in values
               for prompt in zero_shot_prompts(factor, value)]
    return write_vocabulary(folder, TRAINED_ON, [*caption_pieces(), *prompts])


def _materialise(folder: Path) -> None:
    """Write the shipped fixture into ``folder`` as a ``local-dir:`` folder, report last."""
    safetensors.torch.save_file(unpack(SHIPPED_WEIGHTS), folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(read_metadata(SHIPPED_WEIGHTS)["open_clip_config"])
    write_training_vocabulary(folder)
    report = json.loads(SHIPPED_REPORT.read_text()) | {MATERIALISED_FROM: SHIPPED_WEIGHTS.name}
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=2))


def _publish(folder: Path, fill: Callable[[Path], object], replace: bool) -> Path:
    """Fill a private staging folder beside ``folder`` and rename it into place, so a folder
    with a report is always complete. When another process publishes first, its folder stands
    (a directory rename onto a non-empty one fails), unless ``replace``."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", suffix=".partial", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp's private 0700 would outlive the rename
        try:
            fill(staging)
            if replace or not (folder / REPORT_NAME).is_file():
                shutil.rmtree(folder, ignore_errors=True)
            os.rename(staging, folder)
        except OSError:
            if replace or not (folder / REPORT_NAME).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        raise CompsearchError(f"cannot write the fixture CLIP under {folder.parent}: {error}",
                              f"set {CACHE_ENV} to a writable folder") from error
    return folder


def fixture_clip_dir(config: TrainingConfig = TrainingConfig(), rebuild: bool = False) -> Path:
    """The cached fixture's folder. If missing, the default config's is written from the
    shipped file (seconds); any other config's, or any on ``rebuild``, is trained (minutes)."""
    folder = cache_root() / fixture_key(config)
    if not rebuild and (folder / REPORT_NAME).is_file():
        if not (folder / VOCABULARY_FILE).is_file():  # a folder written before the vocabulary was kept
            write_training_vocabulary(folder)
        return folder
    if not rebuild and config == TrainingConfig():
        shipped = shipped_key()
        if shipped == folder.name:
            return _publish(folder, _materialise, replace=False)
        warn(f"the package's fixture CLIP ({shipped or 'missing'}) is not {folder.name}, this code's: training it",
             "then ship it with `python -m compsearch.indexer.world.fixture_clip --export`")
    return _publish(folder, lambda staging: train(config, staging), replace=True)


def export_fixture(folder: Path, weights: Path = SHIPPED_WEIGHTS, report: Path = SHIPPED_REPORT) -> None:
    """Write the shipped form of ``folder``, a fixture of the default config trained by this code."""
    try:
        trained = json.loads((folder / REPORT_NAME).read_text())
        open_clip_config = (folder / CONFIG_NAME).read_text()
    except OSError as error:
        raise CompsearchError(f"{folder} is not a fixture CLIP folder ({error})",
                              "pass the folder `compsearch world fixture-clip --rebuild` prints") from error
    default = json.loads(json.dumps(asdict(TrainingConfig())))
    if (trained.get("config"), trained.get("code_version"), json.loads(open_clip_config).get("model_cfg")) != (
            default, CODE_VERSION, model_config()):
        raise CompsearchError(f"{folder} was not trained with the default config, architecture and code version "
                              f"{CODE_VERSION}", "retrain it with `compsearch world fixture-clip --rebuild`")
    trained.pop(MATERIALISED_FROM, None)
    state = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    pack(state, weights, {"fixture_key": fixture_key(TrainingConfig()), "open_clip_config": open_clip_config})
    report.write_text(json.dumps(trained, indent=2) + "\n")


@dataclass
class FixtureReport:
    """A trained fixture: the name it loads by and its training report (``training_report.json``)."""

    model: str  # local-dir:<folder>
    steps: int
    final_loss: float
    test_accuracy: dict[str, float]  # zero-shot, per factor, on the world's test split
    data_seconds: float
    train_seconds: float
    torch_threads: int
    code_version: str
    config: dict


def training_report(folder: Path) -> FixtureReport:
    """The report of the fixture trained into ``folder``."""
    data = json.loads((folder / REPORT_NAME).read_text())
    known = {field.name for field in fields(FixtureReport)}
    return FixtureReport(model=f"local-dir:{folder}", **{key: value for key, value in data.items() if key in known})


@click.command()
@click.option("--export", is_flag=True, help=f"Write {SHIPPED_WEIGHTS.name} and its report into the package.")
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
def main(export: bool, folder: Path | None) -> None:
    """Ship a trained fixture CLIP: ``--export [FOLDER]`` packs FOLDER (default: the cached
    default fixture, as `compsearch world fixture-clip --rebuild` leaves it) into the package."""
    if not export:
        raise click.UsageError("nothing to do: pass --export [FOLDER]")
    folder = folder or cache_root() / fixture_key(TrainingConfig())
    try:
        export_fixture(folder)
    except CompsearchError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {SHIPPED_WEIGHTS} ({SHIPPED_WEIGHTS.stat().st_size / 1e6:.2f} MB) and {SHIPPED_REPORT.name} from {folder}")


if __name__ == "__main__":
    main()
