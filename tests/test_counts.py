"""encode_segmentation (tally/counts.py) against a pixel-by-pixel reference."""
from __future__ import annotations

import numpy as np
import pytest

from netdissect.tally.counts import NO_CONCEPT, encode_segmentation


def reference(planes, image_labels, concept_of_label, n_concepts):
    """Each pixel's tuple of concepts + 1 across the planes; combinations numbered in the
    tuples' lexicographic order; a concept twice at a pixel counted once."""
    m, h, w = planes.shape
    tuples = [tuple(int(concept_of_label[planes[q].flat[p]]) + 1 for q in range(m)) for p in range(h * w)]
    distinct = sorted(set(tuples))
    ids = np.array([distinct.index(t) for t in tuples])
    table = np.array(distinct, dtype=np.int32).reshape(len(distinct), m) - 1
    if m > 1:  # sorted across the planes, a repeated concept's later copies blanked in place
        table = np.sort(table, axis=1)
        for row in table:
            for q in range(m - 1, 0, -1):
                if row[q] >= 0 and row[q] in row[:q]:
                    row[q] = NO_CONCEPT
    image_concepts = sorted({int(concept_of_label[n]) for n in image_labels} - {-1})
    concept_pixels = np.zeros(n_concepts, dtype=np.int64)
    concept_pixels[image_concepts] += h * w
    for c, row in enumerate(table):
        concept_pixels[row[row >= 0]] += int((ids == c).sum())
    return ids, table, np.array(image_concepts, dtype=np.int32), concept_pixels


@pytest.mark.parametrize("planes, labels, concepts", [(1, 120, 90), (3, 120, 90), (4, 12, 5), (9, 120, 90)])
def test_encoded_labels_equal_the_pixel_by_pixel_reference(planes, labels, concepts):
    # 9 planes of 7 bits: too many to pack into one key, ranked plane by plane instead
    rng = np.random.default_rng(planes)
    concept_of_label = np.full(labels, -1, np.int64)
    concept_of_label[rng.choice(labels, concepts, replace=False)] = np.arange(concepts)
    pixel = rng.integers(0, labels, (planes, 16, 12)).astype(np.int32)
    pixel[:, :4] = pixel[0, :4]                      # the same label in several planes at a pixel
    pixel[:, 10:, :6] = 0                            # many pixels of one combination
    image_labels = np.array([3, 5, 7], np.int32)
    got = encode_segmentation(pixel, image_labels, concept_of_label, concepts)
    ids, table, image_concepts, concept_pixels = reference(pixel, image_labels, concept_of_label, concepts)
    np.testing.assert_array_equal(got.combo_ids, ids)
    np.testing.assert_array_equal(got.table, table)
    np.testing.assert_array_equal(got.image_concepts, image_concepts)
    np.testing.assert_array_equal(got.concept_pixels, concept_pixels)
    np.testing.assert_array_equal(got.combo_pixels, np.bincount(ids, minlength=len(table)))
    assert got.combo_ids.dtype == np.uint16 and got.table.dtype == np.int32 and got.table.flags.c_contiguous
