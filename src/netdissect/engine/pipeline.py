"""Network Dissection, as the method's steps.

1. One pass over the dataset: capture the layers' activations, update each unit's exact top
   quantile, its top-k images, and keep the few (unit, image) maps that can still exceed the
   threshold; encode the labels of every image.
2. Thresholds: T_k = the (1 - quantile) quantile of unit k's activations.
3. Tally: upsample the kept maps, threshold them, count intersections and unions with every
   concept over the dataset.
4. Label: each unit's best concept by IoU; detectors are units above the IoU threshold.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from netdissect import runs
from netdissect.atomic import atomic_write_json
from netdissect.config import DissectConfig
from netdissect.data.broden import BrodenDataset, open_dataset
from netdissect.engine import distributed
from netdissect.engine.final_tally import LayerTally
from netdissect.engine.forward import Normalizer, float32_activations, prepare_model, require_finite, resolve_device
from netdissect.engine.loading import ImagesAndLabels, default_workers, make_loader
from netdissect.engine.manifest import manifest
from netdissect.engine.report_images import ReportImages
from netdissect.engine.vocabulary import Vocabulary
from netdissect.errors import DatasetError, DissectionWarning, NetDissectError, RunError
from netdissect.formulas.rundir import add_formulas
from netdissect.models.capture import LayerCapture, check_activation_shape
from netdissect.models.specs import LoadedModel, load_model
from netdissect.progress import progress_bar
from netdissect.report.figures import write_gain_figure
from netdissect.results import DissectionResult, LayerResult
from netdissect.stats.memory import MIB, plan_memory, reuse_freed_memory
from netdissect.stats.streaming import LayerStream
from netdissect.tally import kernel
from netdissect.tally.combinations import CombinationIndex
from netdissect.tally.labelcache import LabelCache, cache_key, resolve_root
from netdissect.tally.labelstore import SegmentationStore
from netdissect.tally.upsample import measure_receptive_field

__all__ = ["dissect", "DissectConfig", "DissectionResult", "LayerResult"]


def dissect(model: Union[nn.Module, str, LoadedModel], layers: Sequence[str],
            dataset: Union[str, Path, BrodenDataset], out: Optional[Union[str, Path]] = None, *,
            weights: Optional[str] = "default", checkpoint: Optional[str] = None,
            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
            progress: bool = True, force: bool = False, checkpoint_every: int = 50,
            seed: int = 0, verify_content: bool = False, formula_length: int = 0, beam: int = 10,
            keep_report_images: bool = False, **params) -> DissectionResult:
    """Dissect ``layers`` of ``model`` on a Broden-format ``dataset``.

    ``params`` are the fields of DissectConfig (quantile, iou_threshold, upsample, categories,
    split, limit, top_k, batch_size, workers, device, ...). With ``out`` the run directory is
    written (see README, "Result files") and an interrupted run resumes from its checkpoint.
    ``seed`` seeds the model's construction (the random init of ``weights='none'``);
    ``verify_content`` hashes every image and mask file instead of trusting size and mtime.
    ``formula_length`` > 0 also searches each unit's best formula of concepts (netdissect.formulas.search)
    with beam width ``beam``, from the same tally (a finished run is searched from its files).
    ``keep_report_images`` keeps the decoded pixels of the images in the units' top k (within a
    quarter of the memory budget) as ``result.report_images``, for ``render_report(...,
    images=result.report_images)`` in this process: the report then need not decode them again.
    """
    if isinstance(layers, str):
        layers = [layers]
    if params.get("categories") is not None:
        params["categories"] = tuple(params["categories"])
    config = DissectConfig(layers=tuple(layers), **params)
    if isinstance(model, LoadedModel):
        loaded = model
        if mean is not None or std is not None:  # an explicit normalization still wins
            loaded = dataclasses.replace(loaded, mean=tuple(mean or loaded.mean), std=tuple(std or loaded.std))
    else:
        loaded = load_model(model, weights=weights, checkpoint=checkpoint, mean=mean, std=std, seed=seed)
    if isinstance(dataset, BrodenDataset):
        ds = dataset
        # the run records the object's selection, so its report (and a rerun) open the same one
        selection = {"split": ds.split if ds.split is None or isinstance(ds.split, str) else tuple(ds.split),
                     "categories": ds.category_selection, "limit": ds.limit}
        config = dataclasses.replace(config, **{k: v for k, v in selection.items()
                                                if v is not None and getattr(config, k) is None})
    else:
        ds = open_dataset(dataset, split=config.split, categories=config.categories, limit=config.limit)
    resolve_device(config.device)  # a bad device fails before the run directory is touched
    if checkpoint_every < 0:
        raise NetDissectError(f"--checkpoint-every must be 0 (never) or more; got {checkpoint_every}")
    with distributed.session(config.device) as group:  # torchrun: one shard per process
        if formula_length and group is not None:
            raise NetDissectError("--formula-length: a sharded (torchrun) run does not collect the label "
                                  "combination counts that formulas need; dissect in one process")
        if out is None:
            result = _run_engine(loaded, ds, config, None, progress, group, keep_report_images)
            if formula_length:
                add_formulas(result, formula_length, beam, progress=progress)
            return result
        files = {"stats": ds.file_stats()}
        if verify_content:
            files["hashes"] = ds.content_hashes()
        manifest_ = manifest(loaded, ds, config, files)
        if group is None:
            run = runs.RunDirectory(out, manifest_, force=force, checkpoint_every=checkpoint_every)
        else:
            run = _sharded_run_directory(group, out, manifest_, force, checkpoint_every)
        run.dataset_files = files
        try:
            if group is None:
                result = None if force else runs.reuse_finished(run, config)
            else:
                result = None if force else group.on_primary(lambda: runs.reuse_finished(run, config))
            if result is None:
                result = _run_engine(loaded, ds, config, run, progress, group, keep_report_images)
                if formula_length:
                    add_formulas(result, formula_length, beam, progress=progress)
                result.manifest = run.manifest

                def write():
                    atomic_write_json(run.path / runs.DATASET_FILES, files)
                    runs.write_results(run.path, result)
                if group is None:
                    write()
                else:  # rank 0 writes; every rank keeps its checkpoint until the results are there
                    group.on_primary(write)
                run.finish()
                result.out = run.path
            elif formula_length and add_formulas(result, formula_length, beam, progress=progress, out=run.path):
                runs.rewrite_finished(run.path, result)
            if formula_length:
                write_gain_figure(run.path, runs.read_json(run.path / "summary.json"))
            return result
        finally:
            run.release()


def _sharded_run_directory(group, out, manifest_: dict, force: bool, checkpoint_every: int):
    """Rank 0 locks (and with --force clears) the run directory; then the others join it (or,
    on a machine that does not share rank 0's --out, claim their own one: its errors reach every rank)."""
    opened = {}

    def open_primary():
        opened["run"] = runs.RunDirectory(out, manifest_, force=force, checkpoint_every=checkpoint_every,
                                          rank=0, world=group.world)

    group.on_primary(open_primary)
    run, error = opened.get("run"), None
    if not group.primary:
        try:
            run = runs.RunDirectory(out, manifest_, force=force, checkpoint_every=checkpoint_every,
                                    rank=group.rank, world=group.world)
        except NetDissectError as exc:
            error = exc
    try:
        group.agree(error)
    except NetDissectError:
        if run is not None:
            run.release()
        raise
    return run


def _run_engine(loaded, ds, config, run, progress, group=None, keep_report_images=False) -> "DissectionResult":
    reuse_freed_memory()
    engine = _Engine(loaded, ds, config, run, progress, group)
    if keep_report_images and group is None:   # a sharded run's rank holds only its own images
        engine.report_images = ReportImages(int(config.memory_budget_mb * MIB) // 4, ds)
    try:
        return engine.run()
    finally:
        engine.close()


class _Engine:
    """One dissection: the pass, the thresholds, the tally, the labels."""

    def __init__(self, loaded: LoadedModel, ds: BrodenDataset, config: DissectConfig, run, progress: bool,
                 group: Optional[distributed.Group] = None):
        self.loaded = loaded
        self.ds = ds
        self.config = config
        self.run_dir = run
        self.group = group  # a sharded run: this process streams self.shard only
        self.shard = range(len(ds)) if group is None else \
            distributed.shard_range(len(ds), config.batch_size, group.rank, group.world)
        self.progress = progress and (group is None or group.primary)
        self.device = distributed.local_device(resolve_device(config.device), group)
        self.warnings: List[str] = []
        self.skipped: List[dict] = []
        self._tempdir = None
        self.dataset_files = run.dataset_files if run is not None else None  # the label cache key, the manifest
        self.label_cache: Optional[LabelCache] = None
        self.cache_damaged = False  # the entry failed to open: this run's labels replace it
        self.layouts: dict = {}  # layer -> layouts.Layout, decided on the first image
        self.memory_plan = None  # memory.MemoryPlan, made once the layers' shapes are known
        self.report_images: Optional[ReportImages] = None   # the top images' pixels, for the report

    def close(self) -> None:
        """Remove the scratch space of a run without a run directory."""
        if self._tempdir is not None:
            self._tempdir.cleanup()

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.group is None or self.group.primary:
            warnings.warn(message, DissectionWarning, stacklevel=3)

    def run(self) -> DissectionResult:
        start = time.time()
        vocab, module, normalize, streams, store, data = self._set_up()
        # 1. one pass: quantiles, top images, candidate maps, encoded labels (and a second pass
        #    for the layers whose exact threshold state does not fit the memory budget)
        self._passes(module, normalize, data, streams, store)
        if self.report_images is not None:   # the top images are final: their atlases, while it tallies
            self.report_images.encode_atlases(_top_images(streams).tolist(), self.sizes[:2])
        # 2. thresholds: the (1 - quantile) quantile of each unit's activations
        thresholds = {name: s.quantile.threshold(s.quantile.count) for name, s in streams.items()}
        # 3. tally intersections and unions at those thresholds (and, for formulas, each unit's
        #    active pixels per dataset-wide label combination)
        tallies = self._tally(module, vocab, streams, store, thresholds)
        # 4. IoU and labels
        return self._label(vocab, streams, store, thresholds, tallies, time.time() - start)

    def _set_up(self):
        ds, config = self.ds, self.config
        self.sizes = self._image_sizes()   # (ih, iw, sh, sw), one for the whole selection
        _, _, sh, sw = self.sizes
        vocab = Vocabulary.of(ds)
        self.category_counts = counts = ds.category_image_counts()
        for cat in vocab.categories:
            if counts.get(cat, 0) < config.min_category_images:
                self._warn(f"category {cat!r} is labeled in only {counts.get(cat, 0)} images "
                           f"(< {config.min_category_images}): its concepts' IoU is inflated by the "
                           "restricted union; read its detectors with care or use a larger dataset")
        module = prepare_model(self.loaded, self.device)
        normalize = Normalizer(self.loaded.mean, self.loaded.std, self.device)
        # a rank's own failure here (its --out, its free space) stops every rank with its message
        streams, store = self._all_ranks(self._open_state, module, normalize, vocab, sh * sw)
        data = ImagesAndLabels(ds, vocab.concept_of_label, len(vocab.concepts), config.on_bad_image == "skip",
                               with_labels=store.cache_key is None)
        return vocab, module, normalize, streams, store, data

    def _passes(self, module, normalize, data, streams, store) -> None:
        """Pass 1 (resumed from its checkpoint), then, for the layers whose thresholds take two
        passes, pass 2; a checkpoint made in pass 2 resumes there, skipping pass 1."""
        checkpoint = self.run_dir.load_checkpoint() if self.run_dir is not None else None
        phase = 1 if checkpoint is None else checkpoint.get("phase", 1)
        if self.group is not None and len(set(self.group.gather_objects(phase))) > 1:
            raise RunError(f"{self.run_dir.path}: the ranks' checkpoints are from different passes (a rank was "
                           "killed while they were being saved); rerun with --force")
        if phase == 1:
            self._all_ranks(self._stream_pass, module, normalize, data, streams, store, checkpoint)
            if self.group is not None:
                self._merge_ranks(streams)
            checkpoint = None
        else:
            self._load_checkpoint(checkpoint, streams, store, data)
        self._check_skipped()
        self._settle_labels(store)
        if any(stream.sketch for stream in streams.values()):
            self._all_ranks(self._second_pass, module, normalize, data, streams, store, checkpoint)

    def _tally(self, module, vocab: Vocabulary, streams, store, thresholds) -> dict:
        """Each layer's LayerTally over its candidate maps; a sharded run sums the counts."""
        ih, iw, sh, sw = self.sizes
        index = CombinationIndex.from_store(store) if self.group is None else None  # not sharded
        tallies = {}
        for name, stream in streams.items():
            field = measure_receptive_field(module, name, (ih, iw)) if self.config.upsample == "rf" else None
            tallies[name] = LayerTally(stream, thresholds[name], len(vocab.concepts), len(vocab.categories),
                                       self.config.upsample, stream.map_shape, (sh, sw), field, (ih, iw), store,
                                       self.memory_plan.tally, combinations=index)
            for chunk in stream.pairs.final_pairs(tallies[name].thr, tallies[name].max_pairs):
                tallies[name].add(chunk)
        if self.group is not None:  # integer counts: their sum over the shards is exact
            for tally in tallies.values():
                self.group.sum_(tally.tally.inter)
                self.group.sum_(tally.tally.active)
            store.concept_pixels = self.group.sum_(torch.from_numpy(store.concept_pixels)).numpy()
        return tallies

    def _label(self, vocab: Vocabulary, streams, store, thresholds, tallies, seconds: float) -> DissectionResult:
        ds, config = self.ds, self.config
        concept_pixels = torch.from_numpy(store.concept_pixels)
        concept_category = torch.from_numpy(vocab.concept_category)
        layers = {}
        for name, stream in streams.items():
            tally = tallies[name]
            top_score, top_index, top_maps = stream.topk.ranked()
            layers[name] = LayerResult(
                name=name, thresholds=thresholds[name],
                iou=tally.tally.iou(concept_pixels, concept_category).numpy().astype(np.float32),
                concepts=vocab.concepts, concept_names=[ds.labels[c].name for c in vocab.concepts],
                concept_categories=[ds.labels[c].category for c in vocab.concepts],
                categories=vocab.categories, iou_threshold=config.iou_threshold, map_shape=stream.map_shape,
                topk_index=top_index.cpu().numpy(), topk_score=top_score.cpu().numpy(),
                topk_maps=top_maps.cpu().numpy(),
                layout=self.layouts[name].to_dict() if name in self.layouts else None,
                receptive_field=tally.field,
                combinations=None if tally.combinations is None else
                tally.combinations.result(vocab.concepts, vocab.categories))
        return DissectionResult(config=config, layers=layers, category_image_counts=self.category_counts,
                                images=len(ds) - len(self.skipped), skipped=self.skipped, warnings=self.warnings,
                                manifest=self.run_dir.manifest if self.run_dir is not None
                                else manifest(self.loaded, ds, config, self.dataset_files),
                                seconds=seconds, dataset_path=str(Path(ds.root).resolve()),
                                report_images=self.report_images)

    def _image_sizes(self) -> Tuple[int, int, int, int]:
        ds = self.ds
        if len(ds) == 0:
            raise DatasetError("the dataset selection is empty (check --split and --limit)", ds.root)
        sizes = {(r.ih, r.iw, r.sh, r.sw) for r in ds.records}
        if len(sizes) != 1:
            raise DatasetError(f"images of several sizes in one run ({sorted(sizes)[:4]}); "
                               "dissect one size at a time with --split", ds.root / "index.csv")
        return sizes.pop()

    def _open_state(self, module, normalize, vocab: Vocabulary, pixels: int):
        """Per-layer streams (exact, or sketch beyond the memory budget) and the label store.

        Everything that can fail is checked before the run directory drops a stale checkpoint
        or sets up scratch files: the layers' shapes (from one real image, so a bad layer fails
        before the pass) and the free space.
        """
        ds, config = self.ds, self.config
        probe = normalize(torch.from_numpy(self._probe_image())[None])
        with torch.no_grad(), LayerCapture(module, config.layers, stop_early=False,
                                           layout=config.layout) as capture:
            shapes = {name: check_activation_shape(name, out) for name, out in capture(probe).items()}
        self.layouts = capture.layouts
        if self.progress:
            for name, found in self.layouts.items():
                print(f"netdissect: layer {name!r}: {found.describe()}, {shapes[name][0]} units, "
                      f"{shapes[name][1]}x{shapes[name][2]} maps ({found.source})", file=sys.stderr)
        for name, calls in capture.calls.items():
            if calls > 1:
                parent = name.rpartition(".")[0]
                self._warn(f"layer {name!r} runs {calls} times per forward pass (a shared module, such as "
                           "the ReLU of a ResNet block); its first call is dissected"
                           + (f": for the block's output dissect {parent!r}" if parent else ""))
        plan = plan_memory(int(config.memory_budget_mb * MIB), shapes, len(ds), config.level, config.top_k)
        self.label_cache = self._label_cache(vocab, pixels)
        cached = self._cached_store(vocab, pixels)
        # disk: the encoded labels (int16 per pixel) and the top-k maps of the results (float16);
        # spilled candidate maps depend on the data, and a full disk is a clear WriteError
        needed = (0 if cached else len(self.shard) * pixels * 2) + \
            sum(k * config.top_k * h * w * 2 for k, h, w in shapes.values())
        if self.run_dir is not None:
            _check_free_space(self.run_dir.path, needed)
            self.run_dir.prepare(two_pass=[name for name, share in plan.layers.items() if share.two_pass])
            scratch = self.run_dir.scratch
        else:
            self._tempdir = tempfile.TemporaryDirectory(prefix="netdissect-")
            scratch = Path(self._tempdir.name)
            _check_free_space(scratch, needed)
        if plan.minimum > plan.budget:
            self._warn(f"--memory-budget {config.memory_budget_mb:g} MiB is below what the statistics of these "
                       f"layers need at least ({plan.minimum / MIB:.1f} MiB: top-k maps and quantile counts); "
                       "the run uses that much")
        self.memory_plan = plan
        if self.progress:
            print(f"netdissect: memory plan of {config.memory_budget_mb:g} MiB: {plan.describe()}", file=sys.stderr)
        streams = {}
        for name in config.layers:
            k, h, w = shapes[name]
            share = plan.layers[name]
            if share.two_pass:
                why = ("NETDISSECT_TWO_PASS=1 asks for it" if share.forced else
                       f"the one-pass exact threshold needs {share.exact_need / MIB:.1f} MiB, more than its "
                       f"share of --memory-budget {config.memory_budget_mb:g} MiB")
                self._warn(f"layer {name!r}: {why}; using the two-pass radix quantile (65,536 counts per unit, "
                           "a second pass over the data; still exact)")
            # where the fused kernel will tally the layer its candidate maps are kept packed, in
            # about a tenth of their bytes (tally.kernel.pack_maps): a smaller share holds as many
            packed = config.upsample == "bilinear" and kernel.exact_for((h, w), self.sizes[2:])
            candidates = share.candidates // PACKED_SHARE_DIVISOR if packed else share.candidates
            streams[name] = LayerStream(name, k, (h, w), len(ds), config.level, config.top_k,
                                        scratch, candidates, self.device, sketch=share.two_pass,
                                        pack_candidates=packed)
        store = cached or SegmentationStore(len(self.shard), pixels, len(vocab.concepts), vocab.labeled, scratch,
                                            offset=self.shard.start)
        return streams, store

    def _probe_image(self) -> np.ndarray:
        """The first readable image; with --on-bad-image skip, unreadable ones before it are
        passed over here (the pass lists them as skipped)."""
        ds = self.ds
        for i in range(len(ds)):
            try:
                return ds.load_image(i)
            except DatasetError:
                if self.config.on_bad_image != "skip":
                    raise
        raise DatasetError("every image was skipped: nothing to dissect", ds.root)

    def _workers(self) -> int:
        return default_workers() if self.config.workers is None else self.config.workers

    def _load_checkpoint(self, checkpoint: dict, streams, store, data) -> int:
        for name, stream in streams.items():
            stream.load_state_dict(checkpoint["layers"][name])
        self.skipped = checkpoint["skipped"]
        saved = checkpoint["store"]
        if store.cache_key is None:
            if "cache" in saved:  # labels the checkpointed pass read from a cache entry now gone
                phase = checkpoint.get("phase", 1)
                self._encode_labels(store, data, range(self.shard.start, checkpoint["done"] if phase == 1
                                                       else self.shard.stop))
            else:
                store.load_state_dict(saved)
        # else: the store is a cache entry of the same selection: the same labels
        return checkpoint["done"]

    def _label_cache(self, vocab: Vocabulary, pixels: int) -> Optional[LabelCache]:
        """The label cache's entry for this selection (None when the cache is off)."""
        root = resolve_root(self.config.label_cache)
        if root is None:
            return None
        if self.dataset_files is None:   # a run without a directory: stat the files once, for both
            self.dataset_files = {"stats": self.ds.file_stats()}
        return LabelCache(root, cache_key(self.ds, vocab.concepts, pixels, self.dataset_files))

    def _cached_store(self, vocab: Vocabulary, pixels: int) -> Optional[SegmentationStore]:
        """This shard's labels from the cache, or None (a miss, or an entry that fails to open:
        then the pass encodes them and the entry is written again)."""
        cache = self.label_cache
        if cache is None or not cache.exists():
            return None
        try:
            store = cache.open(len(self.shard), pixels, len(vocab.concepts), vocab.labeled, self.shard.start)
        except (OSError, ValueError, KeyError) as exc:
            warnings.warn(f"label cache entry {cache.path} could not be read ({exc}); the labels are encoded "
                          "again and replace it", DissectionWarning, stacklevel=2)
            self.cache_damaged = True
            return None
        if self.progress:
            print(f"netdissect: labels from the cache {cache.path} (no mask decoding)", file=sys.stderr)
        return store

    def _settle_labels(self, store: SegmentationStore) -> None:
        """After pass 1: a cached store forgets the images the pass skipped; a store the pass
        encoded becomes the cache entry (every image read: a whole selection)."""
        if store.cache_key is not None and self.skipped:
            line_of = {r.line: i for i, r in enumerate(self.ds.records)}
            rows = [line_of[s["line"]] - self.shard.start for s in self.skipped]
            store.drop([r for r in rows if 0 <= r < store.n_images])
        cache, group = self.label_cache, self.group
        wanted = cache is not None and not self.skipped and (self.cache_damaged or not cache.exists())
        if group is None:
            if wanted and store.cache_key is None:
                self._write_label_cache([store])
            return
        # a sharded run: when every rank encoded its shard (on several machines, some may have
        # read an entry their machine holds), rank 0 decides, gathers the ranks' tables and
        # copies their ids files (one machine, or a filesystem the machines share; else none)
        if not all(group.gather_objects(store.cache_key is None)) or not group.broadcast(wanted):
            return
        store.flush()
        shard = {"path": None if store.path is None else str(store.path), "n": store.n_images,
                 "fingerprint": _rows_fingerprint(store.ids, store.n_images),
                 "offset": store.offset, "tables": store.tables, "image_concepts": store.image_concepts,
                 "combo_pixels": [store.pixels_per_combination(i) for i in range(store.n_images)]}
        shards = group.collect(shard)
        try:
            if group.primary:
                self._write_sharded_label_cache(shards, store)
        except Exception as exc:                      # the cache never stops a run (nor leaves ranks waiting)
            warnings.warn(f"label cache: no entry written ({exc.__class__.__name__}: {exc})", DissectionWarning,
                          stacklevel=2)
        finally:
            group.barrier()                           # the ranks keep their files until copied

    def _write_sharded_label_cache(self, shards: List[dict], store: SegmentationStore) -> None:
        """Rank 0: the entry from every rank's tables and ids file, where it can read them all."""
        parts = []
        for rank, part in enumerate(shards):
            path = Path(part["path"]) if part["path"] else None
            rows = part["n"] * store.pixels * np.dtype(store.id_dtype).itemsize
            try:
                readable = path is not None and path.stat().st_size >= rows
            except OSError:
                readable = False
            if not readable:
                warnings.warn(f"label cache: rank {rank}'s encoded labels ({path}) are not on rank 0's filesystem; "
                              "no entry is written (a run on one machine writes one)", DissectionWarning, stacklevel=3)
                return
            ids = np.memmap(path, dtype=store.id_dtype, mode="r", shape=(max(part["n"], 1), store.pixels))
            if _rows_fingerprint(ids, part["n"]) != part["fingerprint"]:   # another machine's file of that name
                warnings.warn(f"label cache: {path} on rank 0's machine is not rank {rank}'s; no entry is written",
                              DissectionWarning, stacklevel=3)
                return
            other = SegmentationStore(part["n"], store.pixels, len(store.concept_pixels), store.labeled, None,
                                      offset=part["offset"], ids=ids)
            other.tables, other.image_concepts = part["tables"], part["image_concepts"]
            other.combo_pixels = part["combo_pixels"]
            parts.append(other)
        self._write_label_cache(parts)

    def _write_label_cache(self, parts: List[SegmentationStore]) -> None:
        """Write the selection's entry from its stores (a warning, never an error, when it fails)."""
        cache = self.label_cache
        try:
            written = cache.save(parts, self.ds.root, replace=self.cache_damaged)
        except (OSError, ValueError) as exc:          # the cache never stops a run
            warnings.warn(f"could not write the label cache {cache.path} ({exc}); later runs encode the labels "
                          "again (--label-cache DIR elsewhere, or off)", DissectionWarning, stacklevel=3)
            return
        if written is not None and self.progress:
            size = sum(p.n_images for p in parts) * parts[0].pixels * np.dtype(parts[0].id_dtype).itemsize
            print(f"netdissect: labels cached in {written} ({size / 2**20:.0f} MiB) for later runs of this "
                  "dataset (--label-cache off: no cache)", file=sys.stderr)

    def _encode_labels(self, store: SegmentationStore, data, rows: range) -> None:
        """Encode the labels of ``rows`` (global image indices) in this process, without the
        images: the labels a resumed pass had from a cache entry that has since gone."""
        skipped = {s["line"] for s in self.skipped}
        for i in rows:
            if self.ds.records[i].line in skipped:
                continue
            try:
                store.add([i], [data.encode(i)])
            except DatasetError:
                if not data.skip_bad:
                    raise

    def _stream_pass(self, module, normalize, data, streams, store, checkpoint: Optional[dict]) -> None:
        """The forward pass over the dataset, resumed from a checkpoint when there is one."""
        ds, config = self.ds, self.config
        done = self.shard.start
        if checkpoint is not None:
            done = self._load_checkpoint(checkpoint, streams, store, data)
        bar = _progress(len(self.shard), done - self.shard.start, "dissect", self.progress)
        state = {"done": done}

        def save_checkpoint():
            self.run_dir.save_checkpoint(state["done"], streams, store, self.skipped)

        interrupt = runs.InterruptFlag() if self.run_dir is not None else None
        with torch.no_grad(), LayerCapture(module, config.layers, layouts=self.layouts) as capture, \
                interrupt or contextlib.nullcontext():
            for indices, images, encoded, bad in make_loader(data, config.batch_size, self._workers(),
                                                             start=done, stop=self.shard.stop):
                for i, message in bad:
                    self.skipped.append({"image": ds.records[i].image, "line": ds.records[i].line,
                                         "error": message})
                if images is not None:
                    if store.cache_key is None:
                        store.add(indices.tolist(), encoded)
                    outputs = capture(normalize(images))
                    for name, stream in streams.items():
                        acts = float32_activations(name, outputs[name], indices, ds, check=not stream.checks_finite)
                        try:
                            stream.add(acts, indices)
                        except FloatingPointError:   # NaN or inf met by the threshold state: name the image
                            require_finite(name, acts, indices, ds)
                            raise
                    if self.report_images is not None:
                        self.report_images.keep(indices, images, _top_images(streams))
                self._batch_done(state, bar, len(indices) + len(bad), save_checkpoint, interrupt)
        bar.close()
        if self.run_dir is not None and self.run_dir.checkpoint_every and \
                (self.shard.stop - done) >= self.run_dir.checkpoint_every * config.batch_size:
            save_checkpoint()  # a failure in the tally does not cost a long pass
        store.flush()

    def _batch_done(self, state: dict, bar, images: int, save, interrupt) -> None:
        """Count a batch of either pass; save a checkpoint when one is due or a signal asked."""
        state["done"] += images
        bar.update(images)
        if self.run_dir is not None:
            if self.run_dir.checkpoint_due():
                save()
            interrupt.check(save)

    def _all_ranks(self, step, *args):
        """Run one step of the dissection; in a sharded run, an error on any rank stops all."""
        if self.group is None:
            return step(*args)
        value = None
        try:
            value = step(*args)
        except NetDissectError as exc:
            self.group.agree(exc)
        self.group.agree(None)
        return value

    def _merge_ranks(self, streams) -> None:
        """A sharded run after the pass: every rank gets the whole dataset's thresholds state,
        top images and skipped images (in image order, as one process lists them)."""
        for stream in streams.values():
            stream.merge_ranks(self.group)
        self.skipped = [s for part in self.group.gather_objects(self.skipped) for s in part]

    def _check_skipped(self) -> None:
        ds = self.ds
        if self.skipped:
            self._warn(f"{len(self.skipped)} image(s) could not be read and were skipped "
                       f"(first: {self.skipped[0]['image']}); they are listed in summary.json")
        if len(self.skipped) == len(ds):
            raise DatasetError("every image was skipped: nothing to dissect", ds.root)

    def _second_pass(self, module, normalize, data, streams, store, checkpoint: Optional[dict]) -> None:
        """Layers beyond the memory budget: the first pass located each unit's threshold within
        one of 65,536 bins; a second forward pass resolves it exactly and keeps the maps that
        reach that bin for the tally. Checkpointed like pass 1; every rank saves one as the pass
        starts, so a rerun never finds the ranks in different passes."""
        two_pass = {name: stream for name, stream in streams.items() if stream.sketch}
        data.with_labels = False
        state = {"done": self.shard.start}

        def save_checkpoint():
            self.run_dir.save_checkpoint(state["done"], streams, store, self.skipped, phase=2)

        if checkpoint is not None:
            state["done"] = checkpoint["done"]  # the states were loaded with it
        else:
            for stream in two_pass.values():
                stream.quantile.start_second_pass()
            if self.run_dir is not None and self.run_dir.checkpoint_every:
                save_checkpoint()
        bar = _progress(len(self.shard), state["done"] - self.shard.start, "second pass", self.progress)
        interrupt = runs.InterruptFlag() if self.run_dir is not None else None
        with torch.no_grad(), LayerCapture(module, list(two_pass), layouts=self.layouts) as capture, \
                interrupt or contextlib.nullcontext():
            for indices, images, _, bad in make_loader(data, self.config.batch_size, self._workers(),
                                                       start=state["done"], stop=self.shard.stop):
                if images is not None:
                    outputs = capture(normalize(images))
                    for name, stream in two_pass.items():
                        stream.refine(float32_activations(name, outputs[name], indices, self.ds), indices)
                self._batch_done(state, bar, len(indices) + len(bad), save_checkpoint, interrupt)
        bar.close()
        if self.group is not None:
            for stream in two_pass.values():
                stream.quantile.merge_ranks(self.group)


PACKED_SHARE_DIVISOR = 8   # of a layer's candidate share, when its maps are kept packed


def _top_images(streams) -> torch.Tensor:
    """The dataset indices in every layer's units' current top k (-1 for an empty slot)."""
    return torch.cat([s.topk.index.flatten() for s in streams.values()])


def _rows_fingerprint(ids: np.ndarray, n: int) -> str:
    """A digest of a few rows of an ids file: that a file of the same name is the same one."""
    import hashlib
    h = hashlib.sha256(str(n).encode())
    for row in sorted({0, n // 2, n - 1} if n else set()):
        h.update(np.asarray(ids[row]).tobytes())
    return h.hexdigest()


def _check_free_space(directory: Path, needed: int) -> None:
    """Fail before the long work when the scratch and result files cannot fit."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise RunError(f"{directory}: {free / 2**20:.0f} MiB free, but this run needs about "
                       f"{needed / 2**20:.0f} MiB for its scratch and result files; free some space "
                       "or choose another --out")


def _progress(total: int, initial: int, desc: str, enabled: bool):
    return progress_bar(enabled, total, desc, "img", initial=initial)


