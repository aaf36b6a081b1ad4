"""Per-layer streaming state of one dissection pass.

For each layer, every batch updates three small statistics and one buffer:
- the exact top quantile of each unit (``ExactTopQuantile``),
- the running top-k images of each unit by maximum activation, with their maps (for the report),
- the buffer of (unit, image) native maps whose maximum reaches the quantile's current lower
  bound. Only those pairs can have active pixels once the threshold is known, so the IoU is
  tallied from them after the pass, without a second forward pass. The buffer is pruned as the
  bound rises and spilled to disk beyond a memory budget, so memory does not grow with the
  number of images. Where the tally is the fused kernel's, a map is kept packed: only its pixels
  near values above the bound, the only ones the kernel reads at any threshold above it
  (tally.kernel.pack_maps; a tenth of an early layer's maps, whose candidates are most pairs).
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from netdissect.atomic import atomic_path
from netdissect.runs import safe_name
from netdissect.stats.memory import release_free_memory
from netdissect.stats.quantile import ExactTopQuantile, RadixQuantile, _topvalues, compiled_available
from netdissect.tally.kernel import pack_maps, threads_for, unpack_maps

_VALUES_PER_SLICE = 256 * 49   # fewer map values than this per thread (units x h x w): the thread costs
                               # more than it saves (the entering maps are copied by the same threads)


class TopKImages:
    """For each unit, the k images with the largest maximum activation, and their maps.

    Ties go to the lower image index, so the kept images are a function of the dataset alone,
    not of the order of the batches: shards merged give what one process keeps. The k entries
    of a unit sit in fixed slots in no particular order (a new image takes the slot of the one
    it evicts, so a batch writes only the maps that enter); ``ranked()`` orders them.
    """

    def __init__(self, units: int, k: int, map_shape: Tuple[int, int], device="cpu"):
        self.k = k
        self.score = torch.full((units, k), -float("inf"), device=device)
        self.index = torch.full((units, k), -1, dtype=torch.int64, device=device)
        self.maps = torch.zeros((units, k) + tuple(map_shape), device=device)

    def add(self, maxima: torch.Tensor, acts: torch.Tensor, images: torch.Tensor) -> None:
        """maxima: (B, K); acts: (B, K, h, w); images: (B,) global image indices."""
        if self.score.device.type == "cpu" and compiled_available():   # the same kept set (see top_images)
            entered = np.empty(tuple(self.index.shape), np.int64)   # each slot's source, there to copy its map
            threads = threads_for(self.maps[:, 0].numel(), _VALUES_PER_SLICE)
            _topvalues.top_images(self.score.numpy(), self.index.numpy(), maxima.detach().float().numpy(),
                                  np.ascontiguousarray(images.numpy(), dtype=np.int64), entered, threads,
                                  acts=acts.detach().float().numpy(), maps=self.maps.numpy())
            return
        k = self.k
        # only the units where an image of the batch beats the worst kept one change
        worst = rank_keys(self.score, self.index).min(dim=1, keepdim=True).values        # (K, 1)
        beats = rank_keys(maxima.t(), images[None, :].expand(maxima.shape[1], -1)) > worst
        changed = torch.nonzero(beats.any(dim=1)).flatten()
        if changed.numel() == 0:
            return
        scores = torch.cat([self.score[changed], maxima.t()[changed]], dim=1)   # (K', k + B)
        index = torch.cat([self.index[changed], images[None, :].expand(changed.numel(), -1)], dim=1)
        slots = best_slots(scores, index, k)                                  # (K', k)
        stays = torch.zeros((changed.numel(), k + 1), dtype=torch.bool, device=slots.device)
        stays.scatter_(1, slots.clamp(max=k), True)                           # column k: "from the batch"
        # row by row, the evicted slots and the entering images come out of nonzero() in the
        # same row order and in equal numbers: pair them
        rows, free = torch.nonzero(~stays[:, :k], as_tuple=True)
        entering = slots[slots >= k] - k                                      # batch positions, row-major
        units = changed[rows]
        self.score[units, free] = maxima[entering, units]
        self.index[units, free] = images[entering]
        self.maps[units, free] = acts[entering, units]

    def ranked(self):
        """(score, index, maps) of every unit, best first: score descending, then index ascending."""
        slots = best_slots(self.score, self.index, self.k)
        units = torch.arange(self.score.shape[0], device=slots.device)[:, None].expand_as(slots)
        return self.score.gather(1, slots), self.index.gather(1, slots), self.maps[units, slots]

    def merge_ranks(self, group) -> None:
        """The top k over every rank's images (a sharded run)."""
        score, index = group.gather(self.score, dim=1), group.gather(self.index, dim=1)
        maps = group.gather(self.maps, dim=1)
        slots = best_slots(score, index, self.k)
        units = torch.arange(score.shape[0])[:, None].expand_as(slots)
        device = self.score.device
        self.score, self.index = score.gather(1, slots).to(device), index.gather(1, slots).to(device)
        self.maps = maps[units, slots].to(device)

    def state_dict(self) -> dict:
        return {"score": self.score.cpu(), "index": self.index.cpu(), "maps": self.maps.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.score.device
        self.score, self.index, self.maps = (state["score"].to(device), state["index"].to(device),
                                             state["maps"].to(device))


def best_slots(score: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """(K, k) positions of the k best entries per row: score descending, then index ascending."""
    keys = rank_keys(score, index)     # distinct but for empty slots, which are alike
    return torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=True).indices


def rank_keys(score: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order of the entries: a higher score first, then a lower image index
    (-1 for an empty slot). One sort of them is the two stable sorts (by index, then by score)
    it replaced. The score's bits as an int32 that orders like the float (-0.0 taken as 0.0),
    above the index counted down from 2**31 - 1: image indices up to 2**31 - 2."""
    bits = (score.float() + 0.0).view(torch.int32)
    order = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    return (order << 32) + (2 ** 31 - 1 - index)


class PairBuffer:
    """Native maps of (unit, image) pairs that may still exceed the final threshold.

    A chunk holds "unit", "image", "max" (one per pair) and either "maps" (p, h, w) or the maps
    packed by tally.kernel.pack_maps ("fill", "count", "need", "values": PACKED_KEYS);
    final_pairs gives maps either way."""

    def __init__(self, spill_dir: Optional[Path], budget_bytes: int, name: str,
                 map_shape: Tuple[int, int] = (0, 0)):
        self.spill_dir = spill_dir
        self.budget = budget_bytes
        self.name = name
        self.map_shape = tuple(map_shape)
        self.chunks: List[dict] = []
        self.spilled: List[Path] = []
        self.bytes = 0

    def add(self, units: torch.Tensor, images: torch.Tensor, maxima: torch.Tensor,
            maps: Optional[torch.Tensor] = None, packed: Optional[dict] = None) -> None:
        """The pairs' maps, as ``maps`` or ``packed`` (tally.kernel.pack_maps)."""
        if units.numel() == 0:
            return
        chunk = {"unit": units.cpu(), "image": images.cpu(), "max": maxima.cpu()}
        chunk.update({"maps": maps.cpu()} if packed is None else packed)
        self.chunks.append(chunk)
        self.bytes += _chunk_bytes(chunk)

    def over_budget(self) -> bool:
        return self.bytes > self.budget

    def prune(self, bound: torch.Tensor) -> None:
        """Drop pairs whose maximum cannot exceed the final threshold any more. A chunk that
        would keep three quarters of its pairs or more stays whole (the copy would cost more
        than it frees; the tally skips those pairs anyway)."""
        bound = bound.cpu()
        kept = []
        self.bytes = 0
        for chunk in self.chunks:
            keep = chunk["max"] > bound[chunk["unit"]]
            if 4 * int(keep.sum()) < 3 * keep.numel():
                chunk = _select(chunk, keep)
            if chunk["unit"].numel():
                kept.append(chunk)
                self.bytes += _chunk_bytes(chunk)
        self.chunks = kept

    def spill(self) -> None:
        """Move the in-memory pairs to one file in the spill directory."""
        if not self.chunks or self.spill_dir is None:
            return
        # plain arrays (no pickle): a checkpoint names these files, so they are read on resume;
        # .npy arrays back to back, not a zip: no CRC to compute on the way out and back in
        # the layer name's digest keeps layers apart whose safe names collide ("a b", "a_b")
        digest = hashlib.sha1(self.name.encode("utf-8")).hexdigest()[:8]
        stem = f"{safe_name(self.name)}-{digest}"
        for packed in (False, True):    # one file per kind of chunk (a resumed run may hold both)
            chunks = [c for c in self.chunks if ("values" in c) == packed]
            if chunks:
                path = self.spill_dir / f"{stem}.{'packed' if packed else 'pairs'}{len(self.spilled):05d}.npys"
                self._write(path, chunks, PACKED_SPILL_KEYS if packed else SPILL_KEYS)
                self.spilled.append(path)
        self.chunks = []
        self.bytes = 0

    @staticmethod
    def _write(path: Path, chunks: List[dict], keys: Tuple[str, ...]) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for key in keys:   # each array's header, then its chunks' bytes: no joined copy
                parts = [np.ascontiguousarray(c[key].numpy()) for c in chunks]
                shape = (sum(p.shape[0] for p in parts),) + parts[0].shape[1:]
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(parts[0].dtype),
                                                         "fortran_order": False, "shape": shape})
                for part in parts:
                    f.write(part.data)

    def final_pairs(self, thresholds: torch.Tensor, max_pairs: Optional[int] = None) -> Iterator[dict]:
        """Chunks of the pairs whose maximum exceeds the final threshold, in image order, with
        their maps. A packed chunk's kept pairs are unpacked ``max_pairs`` at a time, straight
        from its values (no gathered copy of them, no dense maps of the whole chunk)."""
        thresholds = thresholds.cpu()
        for source in list(self.spilled) + [None]:
            chunks = [_load_spill(source)] if source is not None else self.chunks
            for chunk in chunks:
                keep = chunk["max"] > thresholds[chunk["unit"]]
                if "values" in chunk:
                    pairs = torch.nonzero(keep).flatten()
                    step = max_pairs or max(pairs.numel(), 1)
                    for s in range(0, pairs.numel(), step):
                        part = pairs[s:s + step]
                        yield {"unit": chunk["unit"][part], "image": chunk["image"][part], "max": chunk["max"][part],
                               "maps": unpack_maps(chunk, self.map_shape, part)}
                    continue
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        continue
                    chunk = _select(chunk, keep)
                yield chunk  # a plain chunk kept whole: no copy of the maps

    def state_dict(self) -> dict:
        # file names only: a run directory that was moved still resumes
        return {"chunks": self.chunks, "spilled": [p.name for p in self.spilled]}

    def load_state_dict(self, state: dict) -> None:
        self.chunks = state["chunks"]
        self.spilled = [self.spill_dir / name for name in state["spilled"]]
        self.bytes = sum(_chunk_bytes(c) for c in self.chunks)


SPILL_KEYS = ("unit", "image", "max", "maps")    # a spill file's arrays, in this order
PACKED_KEYS = ("fill", "count", "need", "values")  # a packed chunk's maps (tally.kernel.pack_maps)
PACKED_SPILL_KEYS = ("unit", "image", "max") + PACKED_KEYS


def _select(chunk: dict, keep: torch.Tensor) -> dict:
    """The pairs ``keep`` (bool, one per pair) of a chunk, plain or packed."""
    out = {key: value[keep] for key, value in chunk.items() if key != "values"}
    if "values" in chunk:   # each pair's run of values: count[k] of them, pair after pair
        out["values"] = chunk["values"][torch.repeat_interleave(keep, chunk["count"])]
    return out


def _load_spill(path: Path) -> dict:
    try:
        if path.suffix == ".npz":    # spilled by an earlier version (a checkpoint resumed)
            with np.load(path, allow_pickle=False) as z:
                return {key: torch.from_numpy(z[key]) for key in z.files}
        keys = PACKED_SPILL_KEYS if re.search(r"\.packed\d+\.npys$", path.name) else SPILL_KEYS
        return {key: torch.from_numpy(array) for key, array in zip(keys, _map_arrays(path, len(keys)))}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        from netdissect.errors import RunError
        raise RunError(f"{path}: scratch file cannot be read ({exc.__class__.__name__}); rerun with "
                       "--force to recompute") from None


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _map_arrays(path: Path, n: int) -> List[np.ndarray]:
    """The .npy arrays of a spill file, memory-mapped copy-on-write: the tally reads the maps
    straight from the page cache instead of copying them into fresh memory first."""
    arrays, offset = [], 0
    with open(path, "rb") as f:
        for _ in range(n):
            f.seek(offset)
            read_header = _NPY_HEADERS.get(np.lib.format.read_magic(f))
            if read_header is None:
                raise ValueError("not a spill file")
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                raise ValueError("not a spill file")
            start = f.tell()
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if start + size > os.fstat(f.fileno()).st_size:
                raise EOFError("truncated")
            arrays.append(np.memmap(f, dtype=dtype, mode="c", shape=shape, offset=start) if size
                          else np.zeros(shape, dtype))
            offset = start + size
    return arrays


def _chunk_bytes(chunk: dict) -> int:
    return sum(v.numel() * v.element_size() for v in chunk.values())


class LayerStream:
    """Everything one layer accumulates during the pass."""

    def __init__(self, name: str, units: int, map_shape: Tuple[int, int], expected_n_images: int,
                 level: float, top_k: int, spill_dir: Optional[Path], budget_bytes: int, device,
                 sketch: bool = False, pack_candidates: bool = False):
        self.name = name
        self.units = units
        self.map_shape = map_shape
        self.sketch = sketch
        h, w = map_shape
        if sketch:
            self.quantile = RadixQuantile(units, expected_n_images * h * w, level, device=device)
        else:
            self.quantile = ExactTopQuantile(units, expected_n_images * h * w, level, device=device)
        self.topk = TopKImages(units, top_k, map_shape, device=device)
        self.pairs = PairBuffer(spill_dir, budget_bytes, name, map_shape)
        self.pack_candidates = pack_candidates  # the fused kernel will tally this layer (tally.kernel)

    @property
    def checks_finite(self) -> bool:
        """Whether ``add`` raises FloatingPointError on NaN or inf itself: the compiled threshold
        state reads every value anyway, so the pass need not check them first (a batch it refuses
        leaves the layer's state unusable: the pass stops)."""
        return not self.sketch and self.quantile.compiled

    def add(self, acts: torch.Tensor, images: torch.Tensor) -> None:
        """acts: (B, K, h, w) float32, finite unless ``checks_finite``; images: (B,) global image indices."""
        if self.sketch:  # no lower bound to filter with: the maps are kept in the second pass
            self.quantile.add(acts.transpose(0, 1).reshape(self.units, -1))
            self.topk.add(acts.amax(dim=(2, 3)), acts, images.to(acts.device))
            return
        maxima = self.quantile.add_maps(acts)                            # (B, K)
        self.topk.add(maxima, acts, images.to(acts.device))
        self._keep_candidates(acts, maxima, images)

    def refine(self, acts: torch.Tensor, images: torch.Tensor) -> None:
        """The second pass of a sketched layer: resolve the thresholds, keep the candidates."""
        self.quantile.refine(acts.transpose(0, 1).reshape(self.units, -1))
        self._keep_candidates(acts, acts.amax(dim=(2, 3)), images)

    def _keep_candidates(self, acts: torch.Tensor, maxima: torch.Tensor, images: torch.Tensor) -> None:
        bound = self.quantile.lower_bound()
        b, u = torch.nonzero(maxima > bound[None, :], as_tuple=True)
        if self.pack_candidates and u.numel():
            self.pairs.add(u, images.to(acts.device)[b], maxima[b, u], packed=pack_maps(acts, bound[u], b, u))
        else:
            self.pairs.add(u, images.to(acts.device)[b], maxima[b, u], acts[b, u])
        if self.pairs.over_budget():
            self.pairs.prune(bound)
            if self.pairs.bytes > self.pairs.budget // 2:
                self.pairs.spill()
                release_free_memory()

    def merge_ranks(self, group) -> None:
        """Fold the other ranks' thresholds state and top images into this one's (the candidate
        maps stay on their rank: each tallies its own)."""
        self.quantile.merge_ranks(group)
        self.topk.merge_ranks(group)

    def state_dict(self) -> dict:
        return {"quantile": self.quantile.state_dict(), "topk": self.topk.state_dict(),
                "pairs": self.pairs.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.quantile.load_state_dict(state["quantile"])
        self.topk.load_state_dict(state["topk"])
        self.pairs.load_state_dict(state["pairs"])
