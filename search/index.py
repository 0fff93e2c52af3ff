"""An index directory opened for queries: ``search.open_index(DIR)`` → :class:`SearchIndex`.

Text terms are embedded by the CLIP the index's aligner maps into, with the property's
prompt templates (only that CLIP, not the image model); image terms are
decomposed by the encoder rebuilt from the manifest, around the weights file it records
(same model, weights, first block, aligner and components — anything else is refused);
both run as ONNX towers beside the index (``text-tower.onnx``, ``image-tower.onnx``;
:mod:`mapping.onnx`: no torch), which the first query of each kind writes after answering
with torch (a few seconds, once; models handed to the index are used as given);
id terms take the indexed image's stored vector. One term is answered by its property's
FAISS index directly; several are combined exactly (:mod:`search.combine`).

Opening checks the files against the manifest's record (:mod:`indexer.integrity`: sizes and
counts, no checksums), so damage is one error naming the file and its repair, not a wrong
answer mid-query. Opened read-only (the towers apart): FAISS files memory-mapped where the index type allows, the models and
the rows table loaded on first use, once, under a lock, so one SearchIndex can serve
queries from several threads.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import faiss
import numpy as np

from compsearch.indexer.exact_vectors import ExactVectors, open_segment
from compsearch.indexer.faiss_choice import keeps_exact_vectors
from compsearch.indexer.faiss_ondisk import read_faiss
from compsearch.indexer.faiss_tuning import RESCORING, RESCORING_KEY, set_search_parameters
from compsearch.indexer.integrity import Damage, DamagedIndexError, cheap_check, check_count
from compsearch.indexer.store import IndexStore
from compsearch.mapping.chunk_store import read_file
from compsearch.mapping.identity import RANDOM_INIT
from compsearch.mapping.names import FULL
from compsearch.search.combine import Ranked, SearchFunction, WeightedVector, combined_top_k
from compsearch.search.errors import NoTextEncoderError, QueryError, UnknownPropertyError
from compsearch.search.filtered import Selection, search_selected
from compsearch.search.query import Query, Term, check_k, check_offset, check_threshold, term_labels
from compsearch.search.results import Result, SearchResults
from compsearch.search.stored import StoredRows, split_record

if TYPE_CHECKING:  # the model side loads on the first query that needs it: an id query never does
    import PIL.Image

    from compsearch.search.query import ImageInput

    from compsearch.mapping.encoder import PropertyEncoder
    from compsearch.mapping.properties.prompts import TextEncoder
    from compsearch.mapping.models import LoadedModel

IMAGE_BATCH = 32  # reference images decomposed per forward pass
ImageEncoder = Callable[[list["PIL.Image.Image"]], dict[str, np.ndarray]]  # images -> {name: (n, d) normalised}
T = TypeVar("T")


def rescored(queries: np.ndarray, candidates: np.ndarray, exact: ExactVectors,
             depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``depth`` best of each query row's ``candidates`` (ids, -1 for none) by inner product
    with their vectors in ``exact``: (scores, ids) as faiss gives them, padded with -inf, -1."""
    scores = np.full((len(queries), depth), -np.inf, np.float32)
    ids = np.full((len(queries), depth), -1, np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        found = found[found >= 0]
        if not len(found):
            continue
        exact_scores = exact.reconstruct_batch(found) @ query
        best = np.argsort(-exact_scores, kind="stable")[:depth]
        scores[row, :len(best)], ids[row, :len(best)] = exact_scores[best], found[best]
    return scores, ids


def read_faiss_index(path: Path, search_parameters: dict[str, Any]) -> faiss.Index:
    """``path`` opened memory-mapped (an on-disk index's lists from the file beside it, wherever
    the folder now is), with the search parameters the build chose (``nprobe``, ``efSearch``)."""
    repair = Damage(path.name, "").repair(path.parent)
    if not path.is_file():
        raise DamagedIndexError(f"{path} is missing", repair)
    index = read_file(path, read_faiss, repair)  # a truncated file: one error naming it
    set_search_parameters(index, search_parameters)
    return index


def _image(image: ImageInput) -> PIL.Image.Image:
    """A reference image as RGB, read by the indexer's own decoder."""
    import PIL.Image

    from compsearch.mapping.images import decode_image, read_image, to_rgb

    if isinstance(image, PIL.Image.Image):
        return to_rgb(image)  # 16-bit, alpha, palette: converted as the indexer converts files
    if isinstance(image, (bytes, bytearray)):
        return decode_image(bytes(image), "the uploaded image")
    if isinstance(image, (str, Path)):
        return read_image(image)
    raise QueryError(f"a reference image of type {type(image).__name__}", "give a path, a PIL image or the file's bytes")


class SearchIndex:
    """Queries on one index directory (see the module docstring)."""

    oversampling = 10  # combined queries: each term's index is asked for k × this many candidates first
    # a compressed index is asked for k × this many candidates (None: the depth its build chose, else
    # RESCORING), rescored exactly, at most rescoring_extra beyond k (k = 10,000 reads 30k vectors)
    rescoring: int | None = None
    rescoring_extra = 20_000

    def __init__(self, folder: str | Path, device: str = "cpu", weights: str | Path | None = None,
                 clip_weights: str | Path | None = None, model: LoadedModel | None = None,
                 clip: LoadedModel | None = None) -> None:
        self.store = IndexStore(folder)
        self.folder = self.store.folder
        self.manifest = self.store.read_manifest()
        cheap_check(self.store, self.manifest)  # a missing, resized or swapped file: refused now, not mid-query
        self.device = device  # checked by load_model when a query first needs a model
        self._weights, self._clip_weights = weights, clip_weights
        self._given_model, self._given_clip = model, clip
        self._lock = threading.RLock()
        self._indexes: dict[str, faiss.Index] = {}
        self._exact: dict[str, bool] = {}
        self._exact_vectors: dict[str, ExactVectors] = {}  # beside compressed indexes (PQ), by id
        self._rows: StoredRows | None = None
        self._encoder: PropertyEncoder | None = None
        self._text_model: LoadedModel | None = None
        self._text_encoder: TextEncoder | None = None
        self._image_encoder: ImageEncoder | None = None
        self._models: dict[tuple[str, str], LoadedModel] = {}  # loaded by _load; shared by reopened()

    # -- what the index holds ------------------------------------------------------------------
    @property
    def properties(self) -> list[str]:
        names = list(self.manifest.indexes)
        return [FULL, *[name for name in names if name != FULL]] if FULL in names else names

    @property
    def has_text(self) -> bool:
        encoder = self.manifest.encoder
        return encoder.space == "clip" and bool(encoder.clip_name)

    @property
    def count(self) -> int:
        return self.manifest.counts.images

    def info(self) -> dict[str, Any]:
        from compsearch.indexer.info import index_info

        return index_info(self.folder)

    def record(self, image_id: int) -> dict[str, Any]:
        """The stored row of ``image_id`` (id, key, path, sha256, width, height, metadata…)."""
        return self.rows.records([image_id])[0]

    def reopened(self) -> SearchIndex:
        """The directory opened anew (after the indexer changed it: a sync, add-property,
        reindex), as this one was, sharing the models this one loaded: an index's model and
        CLIP never change, only its rows, vectors and properties."""
        fresh = SearchIndex(self.folder, self.device, self._weights, self._clip_weights, self._given_model,
                            self._given_clip)
        fresh._models = self._models
        return fresh

    def warm(self, models: bool = True) -> None:
        """Load now what the first query would: rows, every FAISS index, the text and image
        encoders — towers, or models (unless ``models`` is False: id queries need none)."""
        self.rows  # noqa: B018 - loads
        for name in self.properties:
            self._index(name)
        if models:
            if self.has_text:
                self.text_encoder  # noqa: B018 - loads
            self.image_encoder  # noqa: B018 - loads (the encoder itself when no tower serves)

    # -- lazily loaded parts ---------------------------------------------------------------------
    def _once(self, attribute: str, build: Callable[[], T]) -> T:
        value = getattr(self, attribute)
        if value is None:
            with self._lock:
                value = getattr(self, attribute)
                if value is None:
                    value = build()
                    setattr(self, attribute, value)
        return value

    @property
    def rows(self) -> StoredRows:
        return self._once("_rows", lambda: StoredRows(self.store))

    @property
    def encoder(self) -> PropertyEncoder:
        """The encoder the index was built with, around its model (and CLIP for text)."""
        return self._once("_encoder", self._build_encoder)

    @property
    def text_model(self) -> LoadedModel:
        """The CLIP that text terms are embedded by (the image model itself when it is that CLIP)."""
        return self._once("_text_model", self._load_text_model)

    @property
    def text_encoder(self) -> TextEncoder:
        """What embeds text terms: the ONNX text tower beside the index when it is this index's
        CLIP's, else the CLIP itself (see the module docstring)."""
        return self._once("_text_encoder", self._open_text_encoder)

    @property
    def image_encoder(self) -> ImageEncoder:
        """What maps reference images to every name's normalised vector: the ONNX image tower
        beside the index when it is this index's encoder's, else the encoder itself."""
        return self._once("_image_encoder", self._open_image_encoder)

    def _runs_towers(self, weights_id: str | None) -> bool:
        """Whether queries may run (and write) towers: not with models handed to the index (those
        are used as given), nor for random weights (nothing can make those vectors again)."""
        return self._given_clip is None and self._given_model is None and weights_id != RANDOM_INIT

    def _open_text_encoder(self) -> TextEncoder:
        from compsearch.mapping.onnx.text import open_text_tower

        recorded = self.manifest.encoder
        if not self._runs_towers(recorded.clip_weights_id):
            return self.text_model.encode_text
        tower = open_text_tower(self.folder, recorded.clip_name, recorded.clip_weights_id)
        if tower is not None:
            return tower.encode_text
        from compsearch.mapping.onnx.export import save_text_tower

        save_text_tower(self.text_model, self.folder)
        return self.text_model.encode_text

    def _open_image_encoder(self) -> ImageEncoder:
        from compsearch.mapping.onnx.image import open_image_tower

        recorded = self.manifest.encoder
        if not self._runs_towers(recorded.model_weights_id):
            return self.encoder.encode_images
        tower = open_image_tower(self.folder, recorded)
        if tower is not None:
            return tower.encode_images
        from compsearch.mapping.onnx.export import save_image_tower

        save_image_tower(self.encoder, recorded, self.folder)
        return self.encoder.encode_images

    def _clip_is_the_model(self) -> bool:
        recorded = self.manifest.encoder
        return (recorded.clip_name, recorded.clip_weights_id) == (recorded.model_name, recorded.model_weights_id)

    def _load_text_model(self) -> LoadedModel:
        from compsearch.indexer.artifacts import IndexMismatchError, check_model

        recorded = self.manifest.encoder
        if self._given_clip is None and self._clip_is_the_model():
            model = self._given_model or self._load(recorded.model_name, recorded.model_weights_id, self._weights)
            check_model(recorded, model, self.folder)
            return model
        clip = self._given_clip or self._load(recorded.clip_name, recorded.clip_weights_id, self._clip_weights)
        if (clip.name, clip.weights_id) != (recorded.clip_name, recorded.clip_weights_id):
            raise IndexMismatchError(
                f"{self.folder} embeds text with {recorded.clip_name} weights {recorded.clip_weights_id}, "
                f"the weights loaded are {clip.name} {clip.weights_id}",
                "pass the CLIP weights the index's aligner was trained to (--clip-weights)",
            )
        return clip

    def _build_encoder(self) -> PropertyEncoder:
        from compsearch.indexer.artifacts import encoder_for_manifest

        recorded = self.manifest.encoder
        clip = self.text_model if self.has_text else None
        model = self._given_model or (clip if clip is not None and self._clip_is_the_model() else
                                      self._load(recorded.model_name, recorded.model_weights_id, self._weights))
        return encoder_for_manifest(self.manifest, self.folder, model, clip)

    def _load(self, name: str, recorded_weights: str, weights: str | Path | None) -> LoadedModel:
        from compsearch.indexer.artifacts import IndexMismatchError, find_artifact
        from compsearch.mapping.models import load_model

        if recorded_weights == RANDOM_INIT:
            raise IndexMismatchError(
                f"{self.folder} was built with a randomly initialised {name}: its vectors cannot be made again",
                "query it by id, or rebuild the index with real weights",
            )
        if (name, recorded_weights) in self._models:
            return self._models[name, recorded_weights]
        recorded_file = self.manifest.model_weights
        if weights is None and recorded_file is not None and recorded_file.id == recorded_weights:
            weights = find_artifact(recorded_file, self.folder)  # None: the usual lookup (weights dir, hub cache)
        model = self._models[name, recorded_weights] = load_model(name, weights=weights, device=self.device)
        return model

    def _index(self, name: str) -> faiss.Index:
        self._check_property(name)
        if name not in self._indexes:
            with self._lock:
                if name not in self._indexes:
                    entry = self.manifest.indexes[name]
                    index = read_faiss_index(self.folder / entry.file, entry.search_parameters)
                    check_count(self.store, entry.file, index.ntotal, entry.ntotal)
                    self._exact[name] = keeps_exact_vectors(index)
                    if entry.exact_files:
                        exact = ExactVectors([read_file(self.folder / file, open_segment,
                                                        Damage(file, "").repair(self.folder))
                                              for file in entry.exact_files])
                        check_count(self.store, entry.exact_files[-1], exact.ntotal - entry.exact_dead, entry.ntotal)
                        self._exact_vectors[name] = exact
                    self._indexes[name] = index
        return self._indexes[name]

    def _check_property(self, name: str) -> None:
        if name not in self.manifest.indexes:
            raise UnknownPropertyError(f"no property {name!r} in {self.folder}",
                                       f"this index has {', '.join(self.properties)}")

    def stored_vectors(self, name: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """``(len(ids), dim)`` normalised vectors of ``name`` exactly as indexed."""
        ids = np.asarray(ids, dtype=np.int64)
        index = self._index(name)
        if self._exact[name]:
            return index.reconstruct_batch(ids)
        if name in self._exact_vectors:
            self.rows.positions(ids)  # an id not indexed: the error a lookup in the rows gives
            return self._exact_vectors[name].reconstruct_batch(ids)
        return self.rows.vectors(name, ids)

    # -- queries ---------------------------------------------------------------------------------
    def search(self, text: str | None = None, image: ImageInput | None = None, id: int | None = None,
               property: str | None = None, k: int = 20, threshold: float | None = None,
               terms: list[Term] | None = None, offset: int = 0, where: str | None = None) -> SearchResults:
        """One query: a text, a reference image or an indexed image's id on ``property``
        (None: ``full``), and/or weighted ``terms``; the ``k`` best with score ≥ ``threshold``
        after the first ``offset`` (a page), among the images the filter ``where`` keeps."""
        query = Query(text=text, image=image, id=id, property=property, terms=list(terms or []))
        return self.search_batch([query], k, threshold, offset, where)[0]

    def search_batch(self, queries: list[Query], k: int = 20, threshold: float | None = None, offset: int = 0,
                     where: str | None = None) -> list[SearchResults]:
        """Many queries at once: texts embedded together per property, images decomposed in
        batches, single-term queries searched in one FAISS call per property. Each result's
        ``seconds`` are the whole batch's. Results are in a stable order (score, then id), so
        ``offset`` pages through them; ``where`` (:mod:`search.filters`) restricts every query
        to the images it keeps, exactly (:mod:`search.filtered`)."""
        started = time.perf_counter()
        check_k(k)
        check_offset(offset, k)
        check_threshold(threshold)
        depth = k + offset
        selection = None if where is None else Selection(self._selected_ids(where))
        plans = [query.all_terms() for query in queries]
        flat = [term for terms in plans for term in terms]
        for term in flat:
            self._check_property(term.property_name)
        vectors = self._term_vectors(flat)
        encoded = time.perf_counter()
        weighted, position = [], 0
        for terms in plans:
            weighted.append([WeightedVector(t.property_name, vectors[position + i], float(t.weight))
                             for i, t in enumerate(terms)])
            position += len(terms)
        search = self._faiss_search if selection is None else (
            lambda name, vectors, size: search_selected(
                self._index(name), vectors, size, selection, lambda ids: self.stored_vectors(name, ids),
                lambda queries, depth, parameters: self._faiss_search(name, queries, depth, parameters)))
        count = self.count if selection is None else len(selection)
        ranked = self._search_single({i: terms[0] for i, terms in enumerate(weighted) if len(terms) == 1}, depth,
                                     search, count)
        for i, terms in enumerate(weighted):
            if len(terms) > 1:
                ranked[i] = combined_top_k(terms, search, self.stored_vectors, depth, count, self.oversampling,
                                           threshold)
        searched = time.perf_counter()
        results = [self._results(terms, ranked[i], k, threshold, offset, where) for i, terms in enumerate(plans)]
        seconds = {"encode": encoded - started, "search": searched - encoded, "total": time.perf_counter() - started}
        for result in results:
            result.seconds = dict(seconds)
        return results

    def _selected_ids(self, where: str) -> np.ndarray:
        from compsearch.search.filters import selected_ids  # pyarrow.compute: only filtered queries pay for it

        return selected_ids(self.rows.table, where)

    def _faiss_search(self, name: str, queries: np.ndarray, depth: int,
                      parameters: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` best per query row (``parameters``: a filter's selector); from a
        compressed index, the best of :attr:`rescoring` × as many candidates by their exact
        vectors (its codes rank only roughly)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        index = self._index(name)
        if name not in self._exact_vectors:
            return index.search(queries, depth, params=parameters)
        deeper = self.rescoring or self.manifest.indexes[name].search_parameters.get(RESCORING_KEY, RESCORING)
        wide = depth + min(depth * (deeper - 1), self.rescoring_extra)
        _, candidates = index.search(queries, min(wide, max(index.ntotal, 1)), params=parameters)
        return rescored(queries, candidates, self._exact_vectors[name], depth)

    def _search_single(self, terms: dict[int, WeightedVector], depth: int, search: SearchFunction,
                       count: int) -> dict[int, Ranked]:
        """The single-term queries (query position → term), one ``search`` call per property;
        a negative weight searches for the images farthest along the query vector."""
        by_index: dict[str, list[int]] = {}
        for i, term in terms.items():
            by_index.setdefault(term.index, []).append(i)
        ranked = {}
        for name, members in by_index.items():
            signs = np.sign([terms[i].weight for i in members]).astype(np.float32)
            queries = np.stack([terms[i].vector for i in members]) * signs[:, None]
            scores, ids = search(name, queries, min(depth, max(count, 1))) if count else (
                np.zeros((len(members), 0), np.float32), np.zeros((len(members), 0), np.int64))
            for row, i in enumerate(members):
                valid = ids[row] >= 0
                found_ids, found = ids[row][valid], scores[row][valid]
                order = np.lexsort((found_ids, -found))  # ties by id: pages stay stable
                found_ids, found = found_ids[order], found[order]
                ranked[i] = Ranked(found_ids, abs(terms[i].weight) * found, (signs[row] * found)[:, None],
                                   int(valid.sum()), True)
        return ranked

    def query_vectors(self, terms: list[Term]) -> list[np.ndarray]:
        """Each term's normalised query vector in its property's space (what a search compares)."""
        for term in terms:
            self._check_property(term.property_name)
        return self._term_vectors(terms)

    def _term_vectors(self, terms: list[Term]) -> list[np.ndarray]:
        """One normalised query vector per term, each in its property's space."""
        vectors: list[np.ndarray | None] = [None] * len(terms)
        texts: dict[str, list[int]] = {}
        images: list[int] = []
        for i, term in enumerate(terms):
            if term.kind == "text":
                texts.setdefault(term.property_name, []).append(i)
            elif term.kind == "image":
                images.append(i)
            else:
                self.rows.positions([term.id])  # an unknown id is refused here, clearly
                vectors[i] = self.stored_vectors(term.property_name, [term.id])[0]
        if texts and not self.has_text:
            raise NoTextEncoderError(
                f"{self.folder} holds vectors in {self.manifest.encoder.model_name}'s own space: "
                "there is no text encoder for it",
                "query it by image or id, or rebuild it with an aligner into a CLIP (`compsearch index --aligner`)",
            )
        for name, members in texts.items():
            for i, vector in zip(members, self._text_vectors(name, [terms[i].text for i in members])):
                vectors[i] = vector
        if images:
            for i, vector in self._image_vectors(terms, images).items():
                vectors[i] = vector
        return [np.ascontiguousarray(vector, dtype=np.float32) for vector in vectors]

    def _text_vectors(self, name: str, texts: list[str]) -> np.ndarray:
        from compsearch.mapping.properties.known_words import warn_unknown_words
        from compsearch.mapping.properties.prompts import embed_texts

        warn_unknown_words(self.manifest.encoder.clip_name, texts, "the text query")
        return embed_texts(self.text_encoder, texts, self._templates(name))

    def _image_vectors(self, terms: list[Term], images: list[int]) -> dict[int, np.ndarray]:
        """The query vector of each image term (by position in ``terms``)."""
        vectors = {}
        # One decomposition per distinct image gives every property's vector: terms naming the
        # same image (a path, or the very same object) share it.
        distinct: dict[object, list[int]] = {}
        for i in images:
            image = terms[i].image
            distinct.setdefault(str(image) if isinstance(image, (str, Path)) else id(image), []).append(i)
        groups = list(distinct.values())
        for start in range(0, len(groups), IMAGE_BATCH):
            members = groups[start:start + IMAGE_BATCH]
            pictures = [_image(terms[group[0]].image) for group in members]  # all readable before the model runs
            encoded = self.image_encoder(pictures)
            for row, group in enumerate(members):
                for i in group:
                    vectors[i] = encoded[terms[i].property_name][row]
        return vectors

    def _templates(self, name: str) -> list[str]:
        from compsearch.mapping.properties.vocabulary import templates_for

        entry = self.manifest.properties.get(name)
        return list(entry.templates if entry is not None and entry.templates else templates_for(name))

    def _results(self, terms: list[Term], ranked: Ranked, k: int, threshold: float | None, offset: int,
                 where: str | None) -> SearchResults:
        ids, totals, cosines = ranked.ids, ranked.totals, ranked.cosines
        keep = slice(None) if threshold is None else totals >= threshold
        page = slice(offset, offset + k)
        ids, totals, cosines = ids[keep][page], totals[keep][page], cosines[keep][page]
        labels = term_labels(terms)
        results = []
        for rank, (record, total, row) in enumerate(zip(self.rows.records(ids), totals, cosines), start=offset + 1):
            identity, metadata = split_record(record)
            results.append(Result(rank=rank, id=int(identity["id"]), key=identity["key"], path=identity["path"],
                                  score=float(total), scores={label: float(c) for label, c in zip(labels, row)},
                                  metadata=metadata))
        query = {"terms": [{**term.describe(), "label": label} for term, label in zip(terms, labels)],
                 "k": k, "offset": offset, "where": where, "threshold": threshold, "candidates": ranked.candidates,
                 "certified": ranked.certified}
        return SearchResults(query=query, results=results, seconds={})


def open_index(folder: str | Path, device: str = "cpu", weights: str | Path | None = None,
               clip_weights: str | Path | None = None, model: LoadedModel | None = None,
               clip: LoadedModel | None = None) -> SearchIndex:
    """The index directory ``folder`` opened for queries (models load on the first query
    that needs them; ``model``/``clip``: already loaded ones to use instead)."""
    return SearchIndex(folder, device, weights, clip_weights, model, clip)
