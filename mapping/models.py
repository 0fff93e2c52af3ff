"""Turn a model name into a ready model: the one place that knows about weights and caches.

Like open_clip's factory, :func:`load_model` returns the model together with its own
eval preprocessing (and tokenizer for CLIP), whatever the source of its weights.

Name forms:
- a timm name, optionally with a pretrained tag: ``deit_tiny_patch16_224``,
  ``vit_base_patch16_224.dino``, ``vit_small_patch14_dinov2.lvd142m``;
- an open_clip ``NAME:PRETRAINED`` (``ViT-B-16:laion2b_s34b_b88k``), or a bare open_clip
  ``NAME`` with ``weights=`` a local checkpoint;
- ``local-dir:/path``: a folder with ``open_clip_config.json`` and its weights (open_clip's
  own scheme).
A name known to both libraries (``swin_base_patch4_window7_224``) means the timm model.

Weights are resolved in this order: ``weights`` (a file, or a folder to search), the folder
in ``$COMPSEARCH_WEIGHTS_DIR``, then the libraries' hub caches. A folder is searched for
``<name>.<tag>.<ext>`` or ``<name>.<ext>`` with ext one of :data:`WEIGHT_SUFFIXES`.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import pickle
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import open_clip
import PIL.Image
import timm
import torch
from safetensors import SafetensorError
from timm.data import create_transform, resolve_data_config
from timm.models._hub import download_cached_file  # timm's torch-hub cache for URL weights
from torch import nn

from compsearch.mapping.decompose import model_output
from compsearch.mapping.errors import CompsearchError, ModelLoadError
from compsearch.mapping.identity import RANDOM_INIT

WEIGHTS_DIR_ENV = "COMPSEARCH_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")
LOCAL_DIR_PREFIX = "local-dir:"
_LOAD_FAILURES = (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError)
_WEIGHTS_HINT = f"pass --weights PATH (a file or a folder) or set {WEIGHTS_DIR_ENV} to a folder holding it"
_RANDOM_HINT = "pass --random-init (Python: pretrained=False) to run with random weights"
_DEVICE_HINT = "use --device auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; any other name is checked to be
    a device this machine has, so a typo or a missing GPU is one clear error before any model
    loads rather than a traceback from ``model.to``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise CompsearchError(f"unknown device {device!r}", _DEVICE_HINT) from None
    seen = torch.cuda.device_count() if parsed.type == "cuda" else 0
    if parsed.type == "cuda" and (parsed.index or 0) >= seen:
        raise CompsearchError(f"--device {device}, but torch sees {seen or 'no'} GPU{'s' if seen > 1 else ''}",
                              _DEVICE_HINT)
    try:
        torch.empty(0, device=parsed)  # reaches the device: no driver, a CPU-only build, a backend missing
    except (RuntimeError, AssertionError):  # AssertionError: a torch built without CUDA
        raise CompsearchError(f"--device {device}, but this machine's torch cannot use it", _DEVICE_HINT) from None
    return device


@dataclass
class LoadedModel:
    """A model in eval mode with its own preprocessing, as every later stage needs it."""

    name: str
    model: nn.Module
    preprocess: Callable[[PIL.Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor] | None
    weights_id: str
    is_clip: bool
    # The one file the weights were read from (None: random init, or a local-dir folder, whose
    # name already says where its weights are): an index records it, so queries find it again.
    weights_file: Path | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """The representation z that RepDecompose splits, as the model's adapter defines it
        (:func:`mapping.decompose.model_output`: the one definition)."""
        return model_output(self.model, batch.to(self.device), self.name)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Normalised CLIP text embeddings of ``texts``."""
        if not self.is_clip or self.tokenizer is None:
            raise ModelLoadError(
                f"{self.name} is an image-only model and has no text encoder",
                "use a CLIP model (e.g. ViT-B-16:laion2b_s34b_b88k) for text",
            )
        return self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name. ``architecture`` is what the library is asked to build."""

    name: str
    is_clip: bool
    architecture: str
    tag: str = ""

    @property
    def local_dir(self) -> Path | None:
        if self.architecture.startswith(LOCAL_DIR_PREFIX):
            return Path(self.architecture[len(LOCAL_DIR_PREFIX):])
        return None

    def file_stems(self) -> list[str]:
        """File names (without suffix) a weights folder may hold for this model."""
        stem = self.architecture.replace("/", "-")
        return [f"{stem}.{self.tag}"] if self.tag else [stem]


def load_model(
    name: str,
    weights: str | Path | None = None,
    device: str = "cpu",
    pretrained: bool = True,
) -> LoadedModel:
    """Build ``name`` with its weights (see the module docstring for the name forms and the
    resolution order); ``pretrained=False`` gives random initialisation."""
    device = resolve_device(device)  # a bad device fails before the (slow) model build
    spec = parse_model_name(name)
    loaded = _load_open_clip(spec, weights, pretrained) if spec.is_clip else _load_timm(spec, weights, pretrained)
    loaded.model.to(device).eval()
    loaded.model.compsearch_name = name  # decompose() reports models by this name
    return loaded


def parse_model_name(name: str) -> ModelSpec:
    """Which library builds ``name``; raises ModelLoadError with close matches if none does."""
    if name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(name[len(LOCAL_DIR_PREFIX):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(
                f"{folder} is not an open_clip model folder (no open_clip_config.json)",
                "local-dir: needs a folder written by open_clip (config + weights)",
            )
        return ModelSpec(name, True, f"{LOCAL_DIR_PREFIX}{folder}")  # open_clip does not expand ~
    if ":" in name:
        architecture, tag = name.split(":", 1)
        if architecture not in open_clip.list_models():
            raise _unknown_model(name)
        tags = open_clip.list_pretrained_tags_by_model(architecture)
        if tag not in tags:
            raise ModelLoadError(
                f"open_clip has no pretrained tag {tag!r} for {architecture}",
                f"known tags: {', '.join(tags) or 'none'}",
            )
        return ModelSpec(name, True, architecture, tag)
    architecture, tag = timm.models.split_model_name_tag(name)
    if timm.is_model(architecture):
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{architecture}.*")]
            raise ModelLoadError(
                f"timm has no pretrained tag {tag!r} for {architecture}",
                f"known tags: {', '.join(tags) or 'none'}",
            ) from None
        return ModelSpec(name, False, architecture, tag)
    if name in open_clip.list_models():
        return ModelSpec(name, True, name)
    raise _unknown_model(name)


def _unknown_model(name: str) -> ModelLoadError:
    known = timm.list_models() + timm.list_pretrained() + open_clip.list_models()
    known += [f"{model}:{tag}" for model, tag in open_clip.list_pretrained()]
    matches = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    local = ("an open_clip model saved in a folder loads as local-dir:/folder (the offline fixture CLIP's "
             "name: `compsearch world fixture-clip`)")
    return ModelLoadError(
        f"unknown model {name!r} (neither a timm nor an open_clip name)",
        f"did you mean {', '.join(matches)}? Or: {local}" if matches
        else f"see timm.list_models() and open_clip.list_pretrained() for known names; {local}",
    )


def find_local_weights(spec: ModelSpec, weights: str | Path | None) -> Path | None:
    """The weights file from ``weights`` or ``$COMPSEARCH_WEIGHTS_DIR``; None to try hub caches."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise ModelLoadError(f"weights path {path} does not exist", _WEIGHTS_HINT)
        found = _search_folder(spec, path)
        if found is None:
            raise ModelLoadError(
                f"no weights for {spec.name} in {path}",
                f"expected a file named {_expected_files(spec)}",
            )
        return found
    env_folder = os.environ.get(WEIGHTS_DIR_ENV)
    if env_folder and Path(env_folder).expanduser().is_dir():
        return _search_folder(spec, Path(env_folder).expanduser())
    return None


def _search_folder(spec: ModelSpec, folder: Path) -> Path | None:
    for stem in spec.file_stems():
        for suffix in WEIGHT_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    if spec.tag:
        return None
    # An untagged name accepts any tagged file of the architecture, if that choice is unique.
    tagged = sorted(p for p in folder.glob(f"{spec.file_stems()[0]}.*") if p.suffix in WEIGHT_SUFFIXES)
    if len(tagged) > 1:
        raise ModelLoadError(
            f"several weights files for {spec.name} in {folder}: {', '.join(p.name for p in tagged)}",
            "name the one to use with a tag (e.g. MODEL.TAG) or pass --weights FILE",
        )
    return tagged[0] if tagged else None


def _expected_files(spec: ModelSpec) -> str:
    return " or ".join(f"{stem}{WEIGHT_SUFFIXES[0]}" for stem in spec.file_stems())


def weights_id(*files: Path) -> str:
    """sha256[:16] over the bytes of ``files`` in order: names the exact weights used."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextmanager
def _hub_cache_only_when_offline() -> Iterator[None]:
    """Without a network, make huggingface_hub answer from its cache at once instead of
    retrying for about a minute per file."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = saved or not _hub_reachable()
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def _missing_weights(spec: ModelSpec, cause: Exception | None = None) -> ModelLoadError:
    error = ModelLoadError(
        f"no weights found for {spec.name}: not given, not in ${WEIGHTS_DIR_ENV}, "
        f"and not in the hub cache{f' ({type(cause).__name__})' if cause else ''}",
        f"get {_expected_files(spec)} and {_WEIGHTS_HINT}; or {_RANDOM_HINT}",
    )
    error.__cause__ = cause
    return error


def _timm_hub_file(spec: ModelSpec) -> Path:
    """The timm checkpoint for ``spec`` from the hub cache (downloaded if online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config = timm.models.get_pretrained_cfg(spec.name)
    if config is None or not (config.hf_hub_id or config.url):
        raise ModelLoadError(
            f"timm publishes no pretrained weights for {spec.name}",
            f"{_WEIGHTS_HINT}, or {_RANDOM_HINT}",
        )
    with _hub_cache_only_when_offline():
        try:
            if not config.hf_hub_id:
                return Path(download_cached_file(config.url))
            if config.hf_hub_filename:
                return Path(hf_hub_download(config.hf_hub_id, config.hf_hub_filename))
            try:  # timm's own preference: safetensors, then the pickle
                return Path(hf_hub_download(config.hf_hub_id, "model.safetensors"))
            except EntryNotFoundError:
                return Path(hf_hub_download(config.hf_hub_id, "pytorch_model.bin"))
        except Exception as error:  # any download/cache failure means: no weights here
            raise _missing_weights(spec, error) from error


def _load_timm(spec: ModelSpec, weights: str | Path | None, pretrained: bool) -> LoadedModel:
    weights_file = None
    if pretrained:
        weights_file = find_local_weights(spec, weights) or _timm_hub_file(spec)
    model = _build_without_init(spec, weights_file) if weights_file else None
    try:
        model = model or timm.create_model(
            spec.name,
            pretrained=weights_file is not None,
            # timm's own file path: applies the model's checkpoint filter, loads strictly
            pretrained_cfg_overlay={"file": str(weights_file)} if weights_file else None,
        )
    except _LOAD_FAILURES as error:
        raise _bad_weights(spec, weights_file, error) from error
    config = resolve_data_config(model=model)
    return LoadedModel(
        name=spec.name,
        model=model,
        preprocess=create_transform(**config),
        tokenizer=None,
        weights_id=weights_id(weights_file) if weights_file else RANDOM_INIT,
        is_clip=False,
        weights_file=weights_file,
    )


def _build_without_init(spec: ModelSpec, weights_file: Path) -> nn.Module | None:
    """The timm model holding ``weights_file``'s tensors, built without running the random
    initialisation that the weights overwrite: built on the meta device, the checkpoint's tensors
    (through the family's checkpoint filter) assigned to it. None where that is not known to be
    exact: the filter reshaped a tensor (timm may bind per-model resampling options to it), the
    model keeps state outside its state dict (non-persistent buffers, tensors computed at
    construction), or anything failed; the caller then builds and initialises as before."""
    family = sys.modules[timm.models.model_entrypoint(spec.architecture).__module__]
    checkpoint_filter = getattr(family, "checkpoint_filter_fn", None)
    try:
        with torch.device("meta"):
            model = timm.create_model(spec.name)
        stored = timm.models.load_state_dict(str(weights_file))
        state = checkpoint_filter(dict(stored), model) if checkpoint_filter is not None else stored
        if any(name in stored and stored[name].shape != value.shape for name, value in state.items()):
            return None
        model.load_state_dict(state, strict=True, assign=True)
    except Exception:  # noqa: BLE001 - the usual path loads the file, or says what is wrong with it
        return None
    return None if _holds_meta(model) else model


def _holds_meta(model: nn.Module) -> bool:
    """Whether any tensor of ``model`` (parameter, buffer or plain attribute) is still on the
    meta device, i.e. was computed at construction and not loaded."""
    return any(isinstance(value, torch.Tensor) and value.is_meta
               for module in model.modules()
               for value in (*module.parameters(recurse=False), *module.buffers(recurse=False), *vars(module).values()))


def _bad_weights(spec: ModelSpec, weights_file: Path | None, error: Exception) -> ModelLoadError:
    detail = " ".join(str(error).split())
    detail = detail if len(detail) <= 300 else detail[:300] + " …"
    return ModelLoadError(
        f"could not load {weights_file} into {spec.name}: {detail}",
        "check that the file holds weights for exactly this model (and tag)",
    )


def _load_open_clip(spec: ModelSpec, weights: str | Path | None, pretrained: bool) -> LoadedModel:
    options: dict = {"load_weights": pretrained}
    local_dir = spec.local_dir
    if local_dir is not None:
        if weights is not None:
            raise ModelLoadError(
                f"{spec.name} takes its weights from its folder, not from --weights",
                "drop --weights, or replace the weights file inside the folder",
            )
        weights_files = sorted(p for p in local_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if pretrained and not weights_files:
            raise ModelLoadError(f"no weights files in {local_dir}", "save the model there with its weights")
        id_files = [local_dir / "open_clip_config.json", *weights_files]
    else:
        weights_file = find_local_weights(spec, weights) if pretrained else None
        tag_config = open_clip.get_pretrained_cfg(spec.architecture, spec.tag) if spec.tag else {}
        if pretrained and weights_file is None:
            weights_file = _open_clip_hub_file(spec, tag_config)
        # A file passed as `pretrained` loses the tag's preprocessing: give it explicitly.
        options.update(
            pretrained=str(weights_file) if weights_file else None,
            image_mean=tag_config.get("mean"),
            image_std=tag_config.get("std"),
            image_interpolation=tag_config.get("interpolation"),
            image_resize_mode=tag_config.get("resize_mode"),
        )
        id_files = [weights_file] if weights_file else []
    try:
        with _hub_cache_only_when_offline():
            model, _, preprocess = open_clip.create_model_and_transforms(spec.architecture, **options)
            tokenizer = open_clip.get_tokenizer(spec.architecture)
    except _LOAD_FAILURES as error:
        raise _bad_weights(spec, id_files[-1] if id_files else None, error) from error
    return LoadedModel(
        name=spec.name,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        weights_id=weights_id(*id_files) if pretrained and id_files else RANDOM_INIT,
        is_clip=True,
        weights_file=None if local_dir is not None else weights_file,
    )


def _open_clip_hub_file(spec: ModelSpec, tag_config: dict) -> Path:
    if not tag_config:
        raise ModelLoadError(
            f"{spec.name} names no pretrained weights",
            f"use NAME:TAG (tags: {', '.join(open_clip.list_pretrained_tags_by_model(spec.architecture))}), "
            f"{_WEIGHTS_HINT}",
        )
    with _hub_cache_only_when_offline():
        try:
            return Path(open_clip.download_pretrained(tag_config))
        except Exception as error:  # any download/cache failure means: no weights here
            raise _missing_weights(spec, error) from error
