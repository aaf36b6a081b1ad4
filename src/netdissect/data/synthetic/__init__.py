"""A synthetic dataset in the exact Broden on-disk format, drawn procedurally with numpy.

``generate_synthetic(out_dir, images=1000, size=224, seed=0)`` writes a complete Broden
directory (index.csv, category.csv, label.csv, c_<category>.csv for all six categories,
images/) whose every label is known exactly, so that a dissection run on it can be judged.

What an image holds
-------------------
* texture (image level): every image has a background filled with one of
  :data:`TEXTURE_NAMES`, procedural patterns named after DTD classes, in two colours, at a
  random scale and orientation. The texture label is the background's pattern. 8% of the
  images are *texture-only* (the pattern fills the whole image, like a DTD image): those are
  labeled for color and texture only; their object, part, material and scene columns are
  empty (unlabeled), as a DTD image's are in Broden.
* material (pixel level): :data:`MATERIAL_NAMES` are procedural surfaces (wood grain, brick,
  brushed metal, woven fabric, water waves, grass blades, veined marble, paving stone). They
  cover the ground strip below the horizon and some object surfaces (house walls, car
  bodies, boat hulls, boxes, tree trunks, sails, balls). The material mask is exactly where
  a material was drawn and is still visible.
* object (pixel level): :data:`OBJECT_NAMES`, several per image, drawn in painter's order
  (sky objects first, then ground objects from far to near); the later drawn wins, so the
  mask holds only visible pixels. Object colours are drawn uniformly from the 11 colour
  names, independently of the class (a purple tree is fine), avoiding the background's
  colours so that objects stay visible.
* part (pixel level): :data:`PART_NAMES`, parts of car, house, tree, flower, person, boat
  and bird (:data:`PART_OF` says which). A part mask file ``<n>_part_1.png`` is written only
  for images where at least one part pixel is visible; the part column is empty otherwise.
  Pixels of an object that belong to no part are 0 in the part mask.
* scene (image level): :data:`SCENE_NAMES`, decided by :func:`scene_rule`, a deterministic
  rule on what is visible in the final label maps (instances with at least 0.5% of the
  segmentation pixels, material fractions). Images matching no rule have an empty scene
  column. The generator picks a target scene and composes content for it, but the label
  written is always the rule's verdict on the rendered content.
* color (pixel level): computed FROM THE PIXELS of the final JPEG as decoded:
  the image is box-downsampled to the segmentation size and every pixel gets the name of the
  nearest colour prototype in CIE L*a*b* (CIE76 distance): the 11 :data:`COLOR_PROTOTYPES` the
  colours are painted around, and their lighter, darker and greyer :data:`COLOR_VARIANTS`.
  Every pixel is assigned a colour name (none is left 0): see :func:`name_colors`. This is
  the generator's own rule, not Broden's w2color table (see data/synthetic/colors.py).

Files and statistics
--------------------
* ``images/NNNNNN.jpg`` (JPEG quality 90, 4:4:4 chroma), masks ``NNNNNN_color.png``,
  ``NNNNNN_object.png``, ``NNNNNN_part_1.png``, ``NNNNNN_material.png`` at half resolution
  (``sh = sw = size // 2``), label number = R + 256 * G (:mod:`netdissect.data.labelpng`).
  Segmentation pixel (i, j) is the label at the image point ((j + 0.5) / sw, (i + 0.5) / sh)
  in relative coordinates: the label maps are rendered directly at that resolution from the
  same geometry as the image.
* Label numbers are global, dense from 1, in :data:`VOCABULARY` order (color, object, part,
  material, scene, texture); 0 is unlabeled. The full vocabulary is always listed, so
  numbering does not depend on the number of images (a label may have frequency 0 in a tiny
  set). Each label belongs to exactly one category.
* frequency of a label (label.csv, c_*.csv, and the ``(count)`` in label.csv's category
  field) = the number of images in which it occurs (pixel level: at least one pixel).
* coverage of a label = the sum over images of the fraction of the image's segmentation
  pixels it covers (image-level labels count 1.0 per image), i.e. an "images' worth" of
  area; ``coverage / frequency`` is the mean fraction of an image covered where it occurs.
* category.csv: first / last = smallest / largest label number of the category, count =
  number of labels, frequency = number of images in which the category is labeled.
* split: image i is ``val`` when i % 5 == 4, else ``train`` (80/20).

Determinism: image i is drawn from ``numpy.random.default_rng([seed, i])`` alone, so the
files are byte-identical for the same seed whatever the number of workers.
"""
from __future__ import annotations

from netdissect.data.broden import IMAGE_CATEGORIES, PIXEL_CATEGORIES  # noqa: F401  (Broden's lists, as before)
from netdissect.data.synthetic.colors import (
                                              COLOR_PROTOTYPES,
                                              COLOR_VARIANTS,
                                              color_label_map,
                                              name_colors,
                                              srgb_to_lab,
)
from netdissect.data.synthetic.materials import MATERIAL_COLORS
from netdissect.data.synthetic.scenes import (
                                              NO_SCENE_SHARE,
                                              SURFACE_FRACTION,
                                              TEXTURE_ONLY_SHARE,
                                              VISIBLE_FRACTION,
                                              render_image,
                                              scene_rule,
)
from netdissect.data.synthetic.textures import Fill
from netdissect.data.synthetic.vocabulary import (
                                              CATEGORIES,
                                              CATEGORY_LABELS,
                                              COLOR_NAMES,
                                              INDEX_HEADER,
                                              LABELS,
                                              MATERIAL_NAMES,
                                              OBJECT_NAMES,
                                              PART_NAMES,
                                              PART_OF,
                                              SCENE_NAMES,
                                              TEXTURE_NAMES,
                                              VOCABULARY,
)
from netdissect.data.synthetic.writer import (
                                              DATASET_MARKER,
                                              atomic_output_dir,
                                              check_output_dir,
                                              encode_jpeg,
                                              generate_synthetic,
                                              main,
                                              write_tables,
)
