/*
 * netdissect.tally._kernel: fused bilinear upsample + threshold + count, for the final IoU tally
 * (and add_pair_counts, which adds those counts to the unit x concept tally; distinct_keys, which
 * numbers an image's label combinations).
 *
 * For each (unit, image) pair: upsample the native map to the segmentation size with the
 * arithmetic of torch.nn.functional.interpolate(mode='bilinear', align_corners=False) on the
 * CPU (source index scale * (i + 0.5) - 0.5 fused, weights clamped, the 2-D blend as nested
 * fused multiply-adds), compare with the unit's threshold, and count the active pixels per
 * label combination of the image, without materializing the upsampled map.
 *
 * Most output pixels lie far below the threshold (a unit is active on about 0.5% of them), so
 * a block of output pixels is computed only when one of its four source values exceeds the
 * threshold lowered by a small margin: below it, the rounded blend provably stays at or under
 * the threshold (each rounded step is monotone in its operands and within a few float32 ulps of
 * the exact convex combination; see skip_threshold). Skipping changes no count. Output rows
 * that read the same two source rows share those rows interpolated along x, so each output
 * pixel costs one multiply and one fused multiply-add, in loops that vectorize.
 *
 * netdissect.kernel checks at run time that upsample_bilinear() equals the torch upsampler bit
 * for bit on the shapes in use and falls back to torch when it does not. Both functions take
 * buffer-protocol objects (numpy arrays), check their format, shape, contiguity and
 * writability, and release the GIL around the arithmetic, so that threads tallying separate
 * slices of pairs run in parallel.
 *
 * Built with OpenMP (setup.py, where the compiler has it), tally_bilinear(threads=n) runs its
 * slices of pairs itself, on the OpenMP threads that torch's CPU operations use (the same
 * libgomp, loaded once per process): they take the work at once, where a thread of our own
 * would share a core with an OpenMP thread still spinning after the last torch operation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- argument checking ------------------------------------------------------------------ */

enum kind { FLOAT32, INT32, INT64, UINT8, LABEL_IDS };   /* LABEL_IDS: int32 or uint16 */

static const char *kind_name(enum kind k)
{
    return k == FLOAT32 ? "float32" : k == INT32 ? "int32" : k == INT64 ? "int64" :
           k == UINT8 ? "uint8" : "int32 or uint16";
}

/* Whether a struct-module format string names a native-order scalar of this kind. */
static int format_is(const char *format, Py_ssize_t itemsize, enum kind k)
{
    if (format == NULL)
        format = "B";
    char order = format[0];
    if (order == '@' || order == '=' || order == '<' || order == '>' || order == '!') {
#if PY_LITTLE_ENDIAN
        if (order == '>' || order == '!')
            return 0;
#else
        if (order == '<')
            return 0;
#endif
        format++;
    }
    if (format[0] == '\0' || format[1] != '\0')
        return 0;
    switch (k) {
    case FLOAT32:
        return format[0] == 'f' && itemsize == 4;
    case INT32:
        return strchr("il", format[0]) != NULL && itemsize == 4;
    case INT64:
        return strchr("lqn", format[0]) != NULL && itemsize == 8;
    case UINT8:
        return format[0] == 'B' && itemsize == 1;
    case LABEL_IDS:
        return (strchr("il", format[0]) != NULL && itemsize == 4) || (format[0] == 'H' && itemsize == 2);
    }
    return 0;
}

/*
 * Fill view from obj: a buffer of the given kind and dimensions (writable when asked;
 * C-contiguous when asked, else any strides that are whole items). On failure set a Python
 * exception naming the function and argument, and return -1 with view released.
 */
static int get_buffer(const char *fn, const char *arg, PyObject *obj, enum kind k, int ndim,
                      int writable, int contiguous, Py_buffer *view)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): argument '%s' must be a %s numpy array (a torch tensor: pass "
                     "tensor.numpy()), not %.100s", fn, arg, kind_name(k), Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0)
        return -1;
    if (!format_is(view->format, view->itemsize, k)) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): argument '%s' must hold %s, got buffer format '%s' with %zd-byte items",
                     fn, arg, kind_name(k), view->format ? view->format : "B", view->itemsize);
        goto fail;
    }
    if (view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must have %d dimension(s), got %d",
                     fn, arg, ndim, view->ndim);
        goto fail;
    }
    if (contiguous && !PyBuffer_IsContiguous(view, 'C')) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): argument '%s' must be C-contiguous (numpy.ascontiguousarray, or "
                     "tensor.contiguous())", fn, arg);
        goto fail;
    }
    for (int i = 0; !contiguous && i < ndim; i++) {
        if (view->strides[i] % view->itemsize != 0) {
            PyErr_Format(PyExc_ValueError, "%s(): argument '%s' has a stride that is not a multiple "
                         "of its item size", fn, arg);
            goto fail;
        }
    }
    if (writable && view->readonly) {
        PyErr_Format(PyExc_ValueError, "%s(): output argument '%s' is read-only", fn, arg);
        goto fail;
    }
    return 0;
fail:
    PyBuffer_Release(view);
    return -1;
}

/* A C-contiguous buffer (see get_buffer). */
static int get_array(const char *fn, const char *arg, PyObject *obj, enum kind k, int ndim,
                     int writable, Py_buffer *view)
{
    return get_buffer(fn, arg, obj, k, ndim, writable, 1, view);
}

static int check_dim(const char *fn, const char *arg, const Py_buffer *view, int axis,
                     Py_ssize_t expected, const char *because)
{
    if (view->shape[axis] == expected)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s(): argument '%s' has %zd along axis %d, expected %zd (%s)",
                 fn, arg, view->shape[axis], axis, expected, because);
    return -1;
}

/* ---- the interpolation grid ------------------------------------------------------------- */

/* Output index i reads source indices i0[i], i1[i] with weights l0[i], l1[i]. */
static void source_indices(Py_ssize_t in, Py_ssize_t out, Py_ssize_t *i0, Py_ssize_t *i1,
                           float *l0, float *l1)
{
    float scale = (float)in / (float)out;
    for (Py_ssize_t i = 0; i < out; i++) {
        float real = fmaf(scale, (float)i + 0.5f, -0.5f);
        if (real < 0.0f)
            real = 0.0f;
        Py_ssize_t lo = (Py_ssize_t)real;
        i0[i] = lo;
        i1[i] = lo + (lo < in - 1 ? 1 : 0);
        float lam = real - (float)lo;
        lam = lam < 0.0f ? 0.0f : (lam > 1.0f ? 1.0f : lam);
        l1[i] = lam;
        l0[i] = 1.0f - lam;
    }
}

/*
 * Output indices along one axis grouped into runs that read the same two source indices:
 * run r covers [start[r], start[r + 1]) and reads src0[r], src1[r].
 */
typedef struct {
    Py_ssize_t *i0, *i1;
    float *l0, *l1;
    Py_ssize_t runs, *start, *src0, *src1;
} axis_t;

/* Everything a call needs besides its arguments, allocated once per call. */
typedef struct {
    axis_t y, x;
    float *top, *bottom, *values; /* (sw,) rows being interpolated */
    unsigned char *rowhot;        /* (h,): some value of the source row above the skip threshold */
    Py_ssize_t *ranges;           /* (2 * x.runs,): output column ranges to compute */
} workspace_t;

static void fill_axis(axis_t *a, Py_ssize_t in, Py_ssize_t out)
{
    source_indices(in, out, a->i0, a->i1, a->l0, a->l1);
    a->runs = 0;
    for (Py_ssize_t i = 0; i < out; i++) {
        if (i == 0 || a->i0[i] != a->i0[i - 1] || a->i1[i] != a->i1[i - 1]) {
            a->start[a->runs] = i;
            a->src0[a->runs] = a->i0[i];
            a->src1[a->runs] = a->i1[i];
            a->runs++;
        }
    }
    a->start[a->runs] = out;
}

/* The index arrays of an axis of `out` outputs, carved from ints (5 * out + 1 entries). */
static void carve_axis(axis_t *a, Py_ssize_t out, Py_ssize_t *ints, float *floats)
{
    a->i0 = ints;
    a->i1 = a->i0 + out;
    a->start = a->i1 + out; /* out + 1 entries */
    a->src0 = a->start + out + 1;
    a->src1 = a->src0 + out;
    a->l0 = floats;
    a->l1 = floats + out;
}

static void free_workspace(workspace_t *ws)
{
    PyMem_RawFree(ws->y.i0);
    PyMem_RawFree(ws->y.l0);
    PyMem_RawFree(ws->rowhot);
}

/* Returns -1 (nothing left allocated) when memory runs out. */
static int make_workspace(workspace_t *ws, Py_ssize_t h, Py_ssize_t w, Py_ssize_t sh,
                          Py_ssize_t sw)
{
    memset(ws, 0, sizeof(*ws));
    Py_ssize_t *ints = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(5 * (sh + sw) + 2 + 2 * sw));
    float *floats = PyMem_RawMalloc(sizeof(float) * (size_t)(2 * sh + 5 * sw));
    ws->rowhot = PyMem_RawMalloc((size_t)h);
    ws->y.i0 = ints;
    ws->y.l0 = floats;
    if (!ints || !floats || !ws->rowhot) {
        free_workspace(ws);
        return -1;
    }
    carve_axis(&ws->y, sh, ints, floats);
    carve_axis(&ws->x, sw, ints + 5 * sh + 1, floats + 2 * sh);
    ws->ranges = ints + 5 * (sh + sw) + 2;
    ws->top = floats + 2 * (sh + sw);
    ws->bottom = ws->top + sw;
    ws->values = ws->bottom + sw;
    fill_axis(&ws->y, h, sh);
    fill_axis(&ws->x, w, sw);
    return 0;
}

/*
 * The blend, in torch's order: along x within the two source rows (top and bottom), then
 * along y between them; each step one fused multiply-add on a product. A row run shares its
 * top and bottom rows, so they are computed once per run and reused by its output rows.
 * MULTIVERSIONED functions get a clone for processors with FMA instructions (chosen at load
 * time), where these loops vectorize; fmaf is correctly rounded either way, so both clones give
 * the same bits.
 */
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 8))
#define MULTIVERSIONED __attribute__((target_clones("fma", "default")))
#else
#define MULTIVERSIONED
#endif

/* out[j] = source row interpolated at output columns [j0, j1), one run of source columns xa, xb */
static inline void lerp_x(const float *row, Py_ssize_t xa, Py_ssize_t xb, const float *restrict l0,
                          const float *restrict l1, Py_ssize_t j0, Py_ssize_t j1,
                          float *restrict out)
{
    const float a = row[xa], b = row[xb];
    for (Py_ssize_t j = j0; j < j1; j++)
        out[j] = fmaf(l0[j], a, l1[j] * b);
}

/* out[j] = the output row between the interpolated rows top and bottom, for j in [j0, j1) */
static inline void lerp_y(const float *restrict top, const float *restrict bottom, float wy0,
                          float wy1, Py_ssize_t j0, Py_ssize_t j1, float *restrict out)
{
    for (Py_ssize_t j = j0; j < j1; j++)
        out[j] = fmaf(wy0, top[j], wy1 * bottom[j]);
}

/*
 * A value s such that blending sources that are all <= s (or NaN) never gives more than t.
 * The weights lie in [0, 1] and sum to 1 within 2^-25, each rounded step is monotone in its
 * operands and adds at most 2^-24 relative error, so the blend of sources <= M stays at or
 * under M (1 + 2^-21) for normal M > 0 and under M (1 - 2^-21) for M < 0 (rounding is
 * sign-symmetric); a relative margin of 2^-18 covers that with room to spare. Near zero, where
 * subnormal rounding is absolute, s = 0 for t > 0 (sources <= 0 blend to <= 0) and nothing is
 * skipped for t < 0. Pixels between s and t are computed, never guessed.
 */
static float skip_threshold(float t)
{
    if (t >= 0x1p-100f)
        return t * (1.0f - 0x1p-18f);
    if (t <= -0x1p-100f)
        return t * (1.0f + 0x1p-18f);
    if (t > 0.0f)
        return 0.0f;
    if (t < 0.0f)
        return -INFINITY;
    return t; /* 0, or NaN: nothing is ever above a NaN threshold */
}

/* Whether some value of row (n,) exceeds s; NaN does not. */
static inline int any_above(const float *restrict row, Py_ssize_t n, float s)
{
    int above = 0;
    for (Py_ssize_t q = 0; q < n; q++)
        above |= row[q] > s;
    return above;
}

/* ---- upsample_bilinear ------------------------------------------------------------------ */

MULTIVERSIONED
static void upsample(const float *maps, Py_ssize_t p, Py_ssize_t h, Py_ssize_t w,
                     const workspace_t *ws, float *out)
{
    const axis_t *ay = &ws->y, *ax = &ws->x;
    const Py_ssize_t sh = ay->start[ay->runs], sw = ax->start[ax->runs];
    for (Py_ssize_t k = 0; k < p; k++) {
        const float *m = maps + k * h * w;
        for (Py_ssize_t ry = 0; ry < ay->runs; ry++) {
            const float *ra = m + ay->src0[ry] * w, *rb = m + ay->src1[ry] * w;
            for (Py_ssize_t rx = 0; rx < ax->runs; rx++) {
                lerp_x(ra, ax->src0[rx], ax->src1[rx], ax->l0, ax->l1, ax->start[rx],
                       ax->start[rx + 1], ws->top);
                lerp_x(rb, ax->src0[rx], ax->src1[rx], ax->l0, ax->l1, ax->start[rx],
                       ax->start[rx + 1], ws->bottom);
            }
            for (Py_ssize_t i = ay->start[ry]; i < ay->start[ry + 1]; i++)
                lerp_y(ws->top, ws->bottom, ay->l0[i], ay->l1[i], 0, sw, out + (k * sh + i) * sw);
        }
    }
}

PyDoc_STRVAR(upsample_bilinear_doc,
"upsample_bilinear(maps, out)\n--\n\n"
"Write into out (p, sh, sw) float32 the bilinear upsampling of maps (p, h, w) float32, with the\n"
"arithmetic of torch's F.interpolate(mode='bilinear', align_corners=False) and the code that\n"
"tally_bilinear uses. It exists to check that arithmetic against torch on the shapes in use.");

static PyObject *upsample_bilinear(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "upsample_bilinear";
    static char *names[] = {"maps", "out", NULL};
    PyObject *maps_obj, *out_obj, *result = NULL;
    Py_buffer maps, out;
    workspace_t ws;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:upsample_bilinear", names, &maps_obj,
                                     &out_obj))
        return NULL;
    if (get_array(fn, "maps", maps_obj, FLOAT32, 3, 0, &maps) < 0)
        return NULL;
    if (get_array(fn, "out", out_obj, FLOAT32, 3, 1, &out) < 0) {
        PyBuffer_Release(&maps);
        return NULL;
    }
    const Py_ssize_t p = maps.shape[0], h = maps.shape[1], w = maps.shape[2];
    const Py_ssize_t sh = out.shape[1], sw = out.shape[2];
    if (check_dim(fn, "out", &out, 0, p, "one upsampled map per map"))
        goto done;
    if (p > 0 && sh > 0 && sw > 0) {
        if (h == 0 || w == 0) {
            PyErr_Format(PyExc_ValueError, "%s(): argument 'maps' holds empty (%zd, %zd) maps",
                         fn, h, w);
            goto done;
        }
        if (make_workspace(&ws, h, w, sh, sw) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        upsample(maps.buf, p, h, w, &ws, out.buf);
        Py_END_ALLOW_THREADS
        free_workspace(&ws);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&maps);
    return result;
}

/* ---- tally_bilinear --------------------------------------------------------------------- */

typedef struct {
    const float *maps, *thr;
    const int64_t *image;
    const void *ids;        /* int32, or uint16 where ids16 (the label store's own rows, uncopied) */
    int64_t *per_combo, *act;
    Py_ssize_t h, w, max_combos;
    int ids16;
} tally_args_t;

/*
 * Count the pairs [start, stop). Returns the first pair holding a combination id outside
 * [0, max_combos) at an active pixel (its id in *bad_id), or -1 when there was none.
 */
MULTIVERSIONED
static Py_ssize_t tally_pairs(const tally_args_t *c, workspace_t *ws, Py_ssize_t start,
                              Py_ssize_t stop, int32_t *bad_id)
{
    const axis_t *ay = &ws->y, *ax = &ws->x;
    const Py_ssize_t h = c->h, w = c->w, sw = ax->start[ax->runs];
    const Py_ssize_t pixels = ay->start[ay->runs] * sw;
    const uint32_t limit = (uint32_t)c->max_combos;
    for (Py_ssize_t k = start; k < stop; k++) {
        const float *m = c->maps + k * h * w;
        const float t = c->thr[k], s = skip_threshold(t);
        const int32_t *ids = (const int32_t *)c->ids + c->image[k] * pixels;
        const uint16_t *ids16 = (const uint16_t *)c->ids + c->image[k] * pixels;
        int64_t *counts = c->per_combo + k * c->max_combos;
        int64_t active = 0;
        int any = 0;
        memset(counts, 0, sizeof(int64_t) * (size_t)c->max_combos);
        for (Py_ssize_t r = 0; r < h; r++)
            any |= ws->rowhot[r] = any_above(m + r * w, w, s);
        for (Py_ssize_t ry = 0; any && ry < ay->runs; ry++) {
            const Py_ssize_t ya = ay->src0[ry], yb = ay->src1[ry];
            if (!ws->rowhot[ya] && !ws->rowhot[yb])
                continue;
            /* the column runs with a hot source among their four, merged into ranges, and the
               interpolated top and bottom rows over them */
            const float *ra = m + ya * w, *rb = m + yb * w;
            Py_ssize_t nranges = 0;
            for (Py_ssize_t rx = 0; rx < ax->runs; rx++) {
                const Py_ssize_t xa = ax->src0[rx], xb = ax->src1[rx];
                if (!((ra[xa] > s) | (ra[xb] > s) | (rb[xa] > s) | (rb[xb] > s)))
                    continue;
                const Py_ssize_t j0 = ax->start[rx], j1 = ax->start[rx + 1];
                lerp_x(ra, xa, xb, ax->l0, ax->l1, j0, j1, ws->top);
                lerp_x(rb, xa, xb, ax->l0, ax->l1, j0, j1, ws->bottom);
                if (nranges > 0 && ws->ranges[2 * nranges - 1] == j0) {
                    ws->ranges[2 * nranges - 1] = j1;
                } else {
                    ws->ranges[2 * nranges] = j0;
                    ws->ranges[2 * nranges + 1] = j1;
                    nranges++;
                }
            }
            for (Py_ssize_t i = ay->start[ry]; i < ay->start[ry + 1]; i++) {
                const int32_t *row_ids = ids + i * sw;
                const uint16_t *row_ids16 = ids16 + i * sw;
                for (Py_ssize_t n = 0; n < nranges; n++) {
                    const Py_ssize_t j0 = ws->ranges[2 * n], j1 = ws->ranges[2 * n + 1];
                    lerp_y(ws->top, ws->bottom, ay->l0[i], ay->l1[i], j0, j1, ws->values);
                    const float *values = ws->values;
                    int64_t above = 0;
                    for (Py_ssize_t j = j0; j < j1; j++)
                        above += values[j] > t;
                    if (!above)
                        continue;
                    active += above;
                    for (Py_ssize_t j = j0; j < j1; j++) {
                        if (values[j] > t) {
                            const int32_t id = c->ids16 ? (int32_t)row_ids16[j] : row_ids[j];
                            if ((uint32_t)id >= limit) {
                                *bad_id = id;
                                return k;
                            }
                            counts[id]++;
                        }
                    }
                }
            }
        }
        c->act[k] = active;
    }
    return -1;
}

PyDoc_STRVAR(tally_bilinear_doc,
"tally_bilinear(maps, thresholds, images, combo_ids, per_combo, active, start=0, stop=None,\n"
"               threads=1)\n--\n\n"
"For the pairs k in [start, stop): upsample maps[k] (h, w) to the (sh, sw) of combo_ids as\n"
"upsample_bilinear does, and count the pixels above thresholds[k]: per combination id of image\n"
"images[k] into the row per_combo[k] (overwritten), and in all into active[k].\n\n"
"maps (p, h, w) float32; thresholds (p,) float32; images (p,) int64 in [0, n);\n"
"combo_ids (n, sh, sw) int32 or uint16 in [0, max_combos); per_combo (p, max_combos) int64 and\n"
"active (p,) int64, writable. All C-contiguous. Releases the GIL while it counts; with OpenMP\n"
"(see openmp()), in `threads` slices of the pairs on OpenMP threads.");

PyDoc_STRVAR(openmp_doc,
"openmp() -> bool\n--\n\n"
"Whether this module was built with OpenMP: tally_bilinear's `threads` then run in parallel.");

static PyObject *openmp(PyObject *self, PyObject *unused)
{
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *tally_bilinear(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "tally_bilinear";
    static char *names[] = {"maps", "thresholds", "images", "combo_ids", "per_combo", "active",
                            "start", "stop", "threads", NULL};
    enum { MAPS, THR, IMAGES, IDS, PER_COMBO, ACT, NARGS };
    static const enum kind kinds[NARGS] = {FLOAT32, FLOAT32, INT64, LABEL_IDS, INT64, INT64};
    static const int ndims[NARGS] = {3, 1, 1, 3, 2, 1};
    PyObject *objs[NARGS], *stop_obj = Py_None, *result = NULL;
    Py_ssize_t start = 0, stop;
    Py_buffer v[NARGS];
    int got = 0, threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|nOi:tally_bilinear", names, &objs[0],
                                     &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &start,
                                     &stop_obj, &threads))
        return NULL;
    for (; got < NARGS; got++)
        if (get_array(fn, names[got], objs[got], kinds[got], ndims[got], got >= PER_COMBO,
                      &v[got]) < 0)
            goto done;

    const Py_ssize_t p = v[MAPS].shape[0], h = v[MAPS].shape[1], w = v[MAPS].shape[2];
    const Py_ssize_t n = v[IDS].shape[0], sh = v[IDS].shape[1], sw = v[IDS].shape[2];
    const Py_ssize_t max_combos = v[PER_COMBO].shape[1];
    const int64_t *image = v[IMAGES].buf;
    if (check_dim(fn, "thresholds", &v[THR], 0, p, "one per map") ||
        check_dim(fn, "images", &v[IMAGES], 0, p, "one per map") ||
        check_dim(fn, "per_combo", &v[PER_COMBO], 0, p, "one row per map") ||
        check_dim(fn, "active", &v[ACT], 0, p, "one per map"))
        goto done;
    if (stop_obj == Py_None) {
        stop = p;
    } else {
        stop = PyNumber_AsSsize_t(stop_obj, PyExc_OverflowError);
        if (stop == -1 && PyErr_Occurred())
            goto done;
    }
    if (start < 0 || start > stop || stop > p) {
        PyErr_Format(PyExc_ValueError, "%s(): pairs [start=%zd, stop=%zd) are not within [0, %zd)",
                     fn, start, stop, p);
        goto done;
    }
    if (start < stop && (h == 0 || w == 0 || sh == 0 || sw == 0)) {
        PyErr_Format(PyExc_ValueError, "%s(): empty maps (%zd, %zd) or combo_ids (%zd, %zd)",
                     fn, h, w, sh, sw);
        goto done;
    }
    if (max_combos > (Py_ssize_t)INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s(): per_combo has %zd columns, more than int32 ids reach",
                     fn, max_combos);
        goto done;
    }
    for (Py_ssize_t k = start; k < stop; k++)
        if (image[k] < 0 || image[k] >= n) {
            PyErr_Format(PyExc_ValueError,
                         "%s(): images[%zd] = %lld is not a row of combo_ids (%zd images)", fn, k,
                         (long long)image[k], n);
            goto done;
        }
    if (start < stop) {
        const tally_args_t c = {v[MAPS].buf, v[THR].buf, image, v[IDS].buf, v[PER_COMBO].buf,
                                v[ACT].buf, h, w, max_combos, v[IDS].itemsize == 2};
        const Py_ssize_t pairs = stop - start;
        const int slices = threads < 1 ? 1 : (threads > pairs ? (int)pairs : threads);
        int32_t bad_id = 0;
        Py_ssize_t bad_pair = -1;
        int no_memory = 0;
        Py_BEGIN_ALLOW_THREADS
        /* slices of pairs on the OpenMP threads torch's operations use (see the header) */
#ifdef _OPENMP
#pragma omp parallel for num_threads(slices) schedule(static, 1)
#endif
        for (int t = 0; t < slices; t++) {
            workspace_t ws;
            int32_t id = 0;
            Py_ssize_t bad;
            if (make_workspace(&ws, h, w, sh, sw) < 0) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                no_memory = 1;
                continue;
            }
            bad = tally_pairs(&c, &ws, start + pairs * t / slices, start + pairs * (t + 1) / slices, &id);
            free_workspace(&ws);
            if (bad >= 0) {
#ifdef _OPENMP
#pragma omp critical
#endif
                {
                    if (bad_pair < 0 || bad < bad_pair) {
                        bad_pair = bad;
                        bad_id = id;
                    }
                }
            }
        }
        Py_END_ALLOW_THREADS
        if (no_memory) {
            PyErr_NoMemory();
            goto done;
        }
        if (bad_pair >= 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s(): combo_ids of image %lld (pair %zd) holds id %ld, outside [0, %zd) "
                         "(the columns of per_combo)", fn, (long long)image[bad_pair], bad_pair,
                         (long)bad_id, max_combos);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
}

/* ---- pack_maps -------------------------------------------------------------------------- */

/* The pixels of one map above s, a bit each: h rows of `words` 64-bit words. */
static void above_bits(const float *m, Py_ssize_t sy, Py_ssize_t sx, Py_ssize_t h, Py_ssize_t w, float s,
                       uint64_t *above, Py_ssize_t words)
{
    for (Py_ssize_t y = 0; y < h; y++) {
        const float *row = m + y * sy;
        uint64_t *a = above + y * words;
        for (Py_ssize_t j = 0; j < words; j++) {
            const Py_ssize_t x0 = 64 * j, x1 = x0 + 64 < w ? x0 + 64 : w;
            uint64_t bits = 0;
            for (Py_ssize_t x = x0; x < x1; x++)
                bits |= (uint64_t)(row[x * sx] > s) << (x - x0);
            a[j] = bits;
        }
    }
}

/* above_bits for n maps of one image whose units lie closer together than its pixels (a
 * channels-last batch): position by position, each position's values of the n units read
 * together (they share cache lines). Units of stride 1 in ascending order that span at most twice
 * their number (an early layer's candidates: most units, a few gaps) are read as a vector over
 * their whole span, a unit between them compared with +inf (no bits); others one by one.
 * base: the image's first value; unit r's map starts at base + units[r] * su. acc: (2n,) words,
 * span_s: (2n,) floats of scratch. */
static void above_bits_across(const float *base, const int64_t *units, Py_ssize_t su, Py_ssize_t sy,
                              Py_ssize_t sx, Py_ssize_t h, Py_ssize_t w, const float *s, Py_ssize_t n,
                              uint64_t *above, Py_ssize_t words, uint64_t *acc, float *span_s)
{
    const Py_ssize_t span = n > 0 ? units[n - 1] - units[0] + 1 : 0;
    int spanned = su == 1 && span <= 2 * n;
    for (Py_ssize_t r = 1; spanned && r < n; r++)
        spanned = units[r] > units[r - 1];
    if (spanned) {
        for (Py_ssize_t r = 0; r < span; r++)
            span_s[r] = INFINITY;
        for (Py_ssize_t r = 0; r < n; r++)
            span_s[units[r] - units[0]] = s[r];
    }
    const Py_ssize_t m = spanned ? span : n;
    for (Py_ssize_t y = 0; y < h; y++)
        for (Py_ssize_t j = 0; j < words; j++) {
            const Py_ssize_t x0 = 64 * j, x1 = x0 + 64 < w ? x0 + 64 : w;
            for (Py_ssize_t r = 0; r < m; r++)
                acc[r] = 0;
            for (Py_ssize_t x = x0; x < x1; x++) {
                const float *px = base + y * sy + x * sx;
                const int shift = (int)(x - x0);
                if (spanned) {
                    const float *v = px + units[0];
                    for (Py_ssize_t r = 0; r < span; r++)
                        acc[r] |= (uint64_t)(v[r] > span_s[r]) << shift;
                } else {
                    for (Py_ssize_t r = 0; r < n; r++)
                        acc[r] |= (uint64_t)(px[units[r] * su] > s[r]) << shift;
                }
            }
            for (Py_ssize_t r = 0; r < n; r++)
                above[(r * h + y) * words + j] = acc[spanned ? units[r] - units[0] : r];
        }
}

/* One map's packing (see pack_maps) from its bits above s: pixel (y, x) at m[y * sy + x * sx];
 * `near` holds h rows of `words` words; need (ceil(h*w / 8),) is written whole. Returns the
 * number of values written to out. */
static Py_ssize_t pack_from_bits(const float *m, Py_ssize_t sy, Py_ssize_t sx, Py_ssize_t h, Py_ssize_t w,
                                 const uint64_t *above, uint64_t *near, Py_ssize_t words, uint8_t *need,
                                 float *out)
{
    /* their neighbourhoods: each row's bits spread one column either way, then one row */
    const uint64_t last = w % 64 ? ((uint64_t)1 << (w % 64)) - 1 : ~(uint64_t)0;
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint64_t *a = above + y * words;
        uint64_t *d = near + y * words;
        for (Py_ssize_t j = 0; j < words; j++) {
            uint64_t bits = a[j] | (a[j] << 1) | (a[j] >> 1);
            if (j > 0)
                bits |= a[j - 1] >> 63;
            if (j + 1 < words)
                bits |= a[j + 1] << 63;
            d[j] = j + 1 < words ? bits : bits & last;
        }
    }
    memset(need, 0, (size_t)((h * w + 7) / 8));
    Py_ssize_t n = 0;
    for (Py_ssize_t y = 0; y < h; y++) {
        const float *row = m + y * sy;
        for (Py_ssize_t j = 0; j < words; j++) {
            uint64_t bits = near[y * words + j];
            if (y > 0)
                bits |= near[(y - 1) * words + j];
            if (y + 1 < h)
                bits |= near[(y + 1) * words + j];
            for (; bits; bits &= bits - 1) {       /* the kept pixels, in order */
                const Py_ssize_t x = 64 * j + __builtin_ctzll(bits), q = y * w + x;
                need[q >> 3] |= (uint8_t)(1u << (q & 7));
                out[n++] = row[x * sx];
            }
        }
    }
    return n;
}

#define PACK_RUN 256   /* maps of one image whose bits are found together, at most */

PyDoc_STRVAR(pack_maps_doc,
"pack_maps(acts, images, units, bounds, need, counts, fill, values, threads=1) -> total\n--\n\n"
"The pass's candidate maps, compactly. tally_bilinear reads a source pixel only in a 2 x 2 window\n"
"of sources one of which exceeds s = skip_threshold(final threshold). For a map kept while the\n"
"threshold's lower bound is bounds[k] >= 2**-100 (where skip_threshold only rises), s is at least\n"
"s_k = skip_threshold(bounds[k]), so only its pixels within one row and column of a pixel above\n"
"s_k are read. Those are kept, row-major, in values (from the start, pair after pair; counts[k] of\n"
"them), marked in need[k] (bit q % 8 of byte q / 8 for pixel q), and every other pixel, at most\n"
"s_k, may be read as fill[k] = s_k: the same windows are skipped, the same pixels counted. A\n"
"smaller bound (-inf before the threshold state fills) keeps the whole map (fill[k] = -inf).\n\n"
"Map k is acts[images[k], units[k]]: acts (B, K, h, w) float32 with any strides (the batch as\n"
"the layer gave it, channels-last or not: no gathered copy of the maps; channels-last, the maps\n"
"of one image that follow each other are compared position by position, together); images, units (p,)\n"
"int64; bounds (p,) float32; need (p, ceil(h*w / 8)) uint8, counts (p,) int64, fill (p,) float32\n"
"and values (p*h*w,) float32, writable and C-contiguous. threads: slices of the maps on OpenMP\n"
"threads (one without OpenMP). Returns the number of values written.");

static PyObject *pack_maps(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "pack_maps";
    static char *names[] = {"acts", "images", "units", "bounds", "need", "counts", "fill", "values",
                            "threads", NULL};
    enum { ACTS, IMAGES, UNITS, BOUNDS, NEED, COUNTS, FILL, VALUES, NARGS };
    static const enum kind kinds[NARGS] = {FLOAT32, INT64, INT64, FLOAT32, UINT8, INT64, FLOAT32, FLOAT32};
    static const int ndims[NARGS] = {4, 1, 1, 1, 2, 1, 1, 1};
    PyObject *objs[NARGS], *result = NULL;
    Py_buffer v[NARGS];
    int got = 0, threads = 1;
    Py_ssize_t *done = NULL;
    uint64_t *bitrows = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO|i:pack_maps", names, &objs[0], &objs[1],
                                     &objs[2], &objs[3], &objs[4], &objs[5], &objs[6], &objs[7],
                                     &threads))
        return NULL;
    for (; got < NARGS; got++)
        if (get_buffer(fn, names[got], objs[got], kinds[got], ndims[got], got >= NEED, got != ACTS,
                       &v[got]) < 0)
            goto done;
    const Py_ssize_t B = v[ACTS].shape[0], K = v[ACTS].shape[1], h = v[ACTS].shape[2], w = v[ACTS].shape[3];
    const Py_ssize_t p = v[IMAGES].shape[0], hw = h * w, nb = (hw + 7) / 8, words = (w + 63) / 64;
    if (check_dim(fn, "units", &v[UNITS], 0, p, "one per map") ||
        check_dim(fn, "bounds", &v[BOUNDS], 0, p, "one per map") ||
        check_dim(fn, "need", &v[NEED], 0, p, "one row per map") ||
        check_dim(fn, "need", &v[NEED], 1, nb, "one bit per pixel") ||
        check_dim(fn, "counts", &v[COUNTS], 0, p, "one per map") ||
        check_dim(fn, "fill", &v[FILL], 0, p, "one per map") ||
        check_dim(fn, "values", &v[VALUES], 0, p * hw, "room for every pixel"))
        goto done;
    const int64_t *images = v[IMAGES].buf, *units = v[UNITS].buf;
    for (Py_ssize_t k = 0; k < p; k++) {
        if (images[k] < 0 || images[k] >= B || units[k] < 0 || units[k] >= K) {
            PyErr_Format(PyExc_IndexError, "%s(): map %zd is (%lld, %lld), outside the batch's (%zd, %zd)",
                         fn, k, (long long)images[k], (long long)units[k], B, K);
            goto done;
        }
    }
    const int slices = threads < 1 ? 1 : (threads > p ? (int)(p > 0 ? p : 1) : threads);
    const Py_ssize_t *st = v[ACTS].strides;
    /* a channels-last batch: the maps of one image are read together (above_bits_across) */
    const int across = labs(st[1]) < labs(st[3]);
    /* a slice's scratch, in words: the bits above of `run` maps, one map's spread bits, the
     * accumulators of up to twice the run's units, then floats: the run's skip values and those
     * of the up to twice as many units they span (room for a word each) */
    const Py_ssize_t run = across ? PACK_RUN : 1, per_slice = (run + 1) * h * words + 2 * run + run + 2 * run;
    done = malloc(sizeof(Py_ssize_t) * (size_t)slices);
    bitrows = malloc(sizeof(uint64_t) * (size_t)per_slice * (size_t)slices);
    if (done == NULL || bitrows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const char *acts = v[ACTS].buf;
    const float *bounds = v[BOUNDS].buf;
    uint8_t *need = v[NEED].buf;
    int64_t *counts = v[COUNTS].buf;
    float *fill = v[FILL].buf, *values = v[VALUES].buf;
    Py_ssize_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    /* slice t packs maps [a, e) into values from a * hw on (room for all of them); the slices'
     * values then close up, in order */
#ifdef _OPENMP
#pragma omp parallel for num_threads(slices) schedule(static, 1)
#endif
    for (int t = 0; t < slices; t++) {
        const Py_ssize_t a = p * t / slices, e = p * (t + 1) / slices;
        uint64_t *above = bitrows + (size_t)t * per_slice, *near = above + run * h * words;
        uint64_t *acc = near + h * words;
        float *skip = (float *)(acc + 2 * run), *span_s = (float *)(acc + 3 * run);
        Py_ssize_t n = 0;
        for (Py_ssize_t k = a; k < e;) {
            Py_ssize_t k1 = k + 1;      /* maps [k, k1): one image's, their bits found together */
            while (across && k1 < e && k1 - k < run && images[k1] == images[k])
                k1++;
            for (Py_ssize_t kk = k; kk < k1; kk++)
                skip[kk - k] = fill[kk] = bounds[kk] >= 0x1p-100f ? skip_threshold(bounds[kk]) : -INFINITY;
            if (across)
                above_bits_across((const float *)(acts + images[k] * st[0]), units + k, st[1] / 4, st[2] / 4,
                                  st[3] / 4, h, w, skip, k1 - k, above, words, acc, span_s);
            else
                above_bits((const float *)(acts + images[k] * st[0] + units[k] * st[1]), st[2] / 4, st[3] / 4,
                           h, w, skip[0], above, words);
            for (Py_ssize_t kk = k; kk < k1; kk++) {
                const float *m = (const float *)(acts + images[kk] * st[0] + units[kk] * st[1]);
                counts[kk] = pack_from_bits(m, st[2] / 4, st[3] / 4, h, w, above + (kk - k) * h * words, near,
                                            words, need + kk * nb, values + a * hw + n);
                n += counts[kk];
            }
            k = k1;
        }
        done[t] = n;
    }
    for (int t = 0; t < slices; t++) {
        const Py_ssize_t a = p * t / slices;
        if (total != a * hw)
            memmove(values + total, values + a * hw, sizeof(float) * (size_t)done[t]);
        total += done[t];
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(total);
done:
    free(done);
    free(bitrows);
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
}

/* The bits set in a map's `need` row of nb bytes (bits past its hw pixels do not count). */
static Py_ssize_t set_bits(const uint8_t *bits, Py_ssize_t nb, Py_ssize_t hw)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t b = 0; b < nb; b++)
        n += __builtin_popcount(bits[b] & (8 * b + 8 <= hw ? 0xffu : (1u << (hw - 8 * b)) - 1));
    return n;
}

PyDoc_STRVAR(unpack_maps_doc,
"unpack_maps(fill, counts, need, values, maps, pairs=None, threads=1)\n--\n\n"
"The maps pack_maps packed, into maps (n, h, w) float32 (writable): pixel q of map k is the next\n"
"of map k's values where bit q of need[k] is set, else fill[k]. fill (p,) float32, counts (p,)\n"
"int64, need (p, ceil(h*w / 8)) uint8, values (sum of counts,) float32; all C-contiguous.\n"
"pairs (n,) int64: unpack only those maps, in that order (maps[i] is map pairs[i]; the tally's\n"
"chunk of the pairs above their final threshold, without gathering their values first); None:\n"
"all p of them. threads: the maps on that many OpenMP threads (one without OpenMP).");

static PyObject *unpack_maps(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "unpack_maps";
    static char *names[] = {"fill", "counts", "need", "values", "maps", "pairs", "threads", NULL};
    enum { FILL, COUNTS, NEED, VALUES, MAPS, PAIRS, NARGS };
    static const enum kind kinds[NARGS] = {FLOAT32, INT64, UINT8, FLOAT32, FLOAT32, INT64};
    static const int ndims[NARGS] = {1, 1, 2, 1, 3, 1};
    PyObject *objs[NARGS] = {NULL}, *result = NULL;
    Py_buffer v[NARGS];
    int got = 0, nargs, threads = 1;
    Py_ssize_t *start = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|Oi:unpack_maps", names, &objs[0], &objs[1],
                                     &objs[2], &objs[3], &objs[4], &objs[5], &threads))
        return NULL;
    nargs = objs[PAIRS] == NULL || objs[PAIRS] == Py_None ? PAIRS : NARGS;
    for (; got < nargs; got++)
        if (get_array(fn, names[got], objs[got], kinds[got], ndims[got], got == MAPS, &v[got]) < 0)
            goto done;
    const Py_ssize_t p = v[FILL].shape[0], hw = v[MAPS].shape[1] * v[MAPS].shape[2];
    const Py_ssize_t nb = (hw + 7) / 8, n = nargs == NARGS ? v[PAIRS].shape[0] : p;
    if (check_dim(fn, "counts", &v[COUNTS], 0, p, "one per map") ||
        check_dim(fn, "need", &v[NEED], 0, p, "one row per map") ||
        check_dim(fn, "need", &v[NEED], 1, nb, "one bit per pixel") ||
        check_dim(fn, "maps", &v[MAPS], 0, n, nargs == NARGS ? "one per pair" : "one per packed map"))
        goto done;
    const float *fill = v[FILL].buf, *values = v[VALUES].buf;
    const int64_t *counts = v[COUNTS].buf, *pairs = nargs == NARGS ? v[PAIRS].buf : NULL;
    const uint8_t *need = v[NEED].buf;
    float *maps = v[MAPS].buf;
    /* where each map's values start; the counts add up to the values */
    start = malloc((size_t)(p > 0 ? p : 1) * sizeof(Py_ssize_t));
    if (start == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < p; k++) {
        if (counts[k] < 0 || counts[k] > hw) {
            PyErr_Format(PyExc_ValueError, "%s(): map %zd has a count of %lld, outside 0..%zd", fn, k,
                         (long long)counts[k], hw);
            goto done;
        }
        start[k] = total;
        total += counts[k];
    }
    if (total != v[VALUES].shape[0]) {
        PyErr_Format(PyExc_ValueError, "%s(): the counts add up to %zd values, values holds %zd", fn, total,
                     v[VALUES].shape[0]);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const Py_ssize_t k = pairs ? pairs[i] : i;
        if (k < 0 || k >= p) {
            PyErr_Format(PyExc_IndexError, "%s(): pairs[%zd] = %zd is not one of the %zd maps", fn, i, k, p);
            goto done;
        }
    }
    Py_ssize_t bad = n;    /* the first map whose bits and count disagree */
    Py_BEGIN_ALLOW_THREADS
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
#endif
    for (Py_ssize_t i = 0; i < n; i++) {
        const Py_ssize_t k = pairs ? pairs[i] : i;
        float *m = maps + i * hw;
        const uint8_t *bits = need + k * nb;
        /* a map unpacked has as many bits set as its count (its values are its own), checked here,
           by the thread that unpacks it */
        if (set_bits(bits, nb, hw) != counts[k]) {
#ifdef _OPENMP
#pragma omp critical
#endif
            bad = i < bad ? i : bad;
            continue;
        }
        const float f = fill[k], *src = values + start[k];
        for (Py_ssize_t q = 0; q < hw; q++)
            m[q] = f;
        for (Py_ssize_t b = 0; b < nb; b++)
            for (unsigned rest = bits[b]; rest; rest &= rest - 1) {
                const Py_ssize_t q = 8 * b + __builtin_ctz(rest);
                if (q < hw)
                    m[q] = *src++;
            }
    }
    Py_END_ALLOW_THREADS
    if (bad < n) {
        const Py_ssize_t k = pairs ? pairs[bad] : bad;
        PyErr_Format(PyExc_ValueError, "%s(): map %zd has %zd bits set but a count of %lld", fn, k,
                     set_bits(need + k * nb, nb, hw), (long long)counts[k]);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    free(start);
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
}

/* ---- add_pair_counts -------------------------------------------------------------------- */

PyDoc_STRVAR(add_pair_counts_doc,
"add_pair_counts(per_combo, active_pixels, units, images, tables, image_concepts, labeled, inter,\n"
"                active)\n--\n\n"
"What IoUTally.add_counts adds, in one loop over the pairs' nonzero combination counts instead of\n"
"a dozen torch operations on index arrays (they cost a third as much as the fused tally itself).\n"
"For pair k of unit u = units[k] and image i = images[k]: active[u, g] += active_pixels[k] where\n"
"labeled[i, g]; inter[u, c] += active_pixels[k] for each image-level concept c in\n"
"image_concepts[i]; inter[u, c] += per_combo[k, j] for each concept c in tables[i, j].\n\n"
"per_combo (p, W), active_pixels, units, images (p,); tables (n, W, M), image_concepts (n, I)\n"
"and labeled (n, G) 0 or 1; inter (K, C) and active (K, G), writable. All int64, C-contiguous;\n"
"a concept index below 0 is none. Integer sums: the order of the pairs changes nothing.");

static PyObject *add_pair_counts(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "add_pair_counts";
    static char *names[] = {"per_combo", "active_pixels", "units", "images", "tables",
                            "image_concepts", "labeled", "inter", "active", NULL};
    enum { PER_COMBO, ACT, UNITS, IMAGES, TABLES, IMAGE_CONCEPTS, LABELED, INTER, ACTIVE, NARGS };
    static const int ndims[NARGS] = {2, 1, 1, 1, 3, 2, 2, 2, 2};
    PyObject *objs[NARGS], *result = NULL;
    Py_buffer v[NARGS];
    int got = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOO:add_pair_counts", names, &objs[0],
                                     &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6],
                                     &objs[7], &objs[8]))
        return NULL;
    for (; got < NARGS; got++)
        if (get_array(fn, names[got], objs[got], INT64, ndims[got], got >= INTER, &v[got]) < 0)
            goto done;

    const Py_ssize_t p = v[PER_COMBO].shape[0], width = v[PER_COMBO].shape[1];
    const Py_ssize_t n = v[TABLES].shape[0], planes = v[TABLES].shape[2];
    const Py_ssize_t n_image = v[IMAGE_CONCEPTS].shape[1], groups = v[LABELED].shape[1];
    const Py_ssize_t units = v[INTER].shape[0], concepts = v[INTER].shape[1];
    if (check_dim(fn, "active_pixels", &v[ACT], 0, p, "one per pair") ||
        check_dim(fn, "units", &v[UNITS], 0, p, "one per pair") ||
        check_dim(fn, "images", &v[IMAGES], 0, p, "one per pair") ||
        check_dim(fn, "tables", &v[TABLES], 1, width, "the columns of per_combo") ||
        check_dim(fn, "image_concepts", &v[IMAGE_CONCEPTS], 0, n, "one row per image") ||
        check_dim(fn, "labeled", &v[LABELED], 0, n, "one row per image") ||
        check_dim(fn, "active", &v[ACTIVE], 0, units, "one row per unit") ||
        check_dim(fn, "active", &v[ACTIVE], 1, groups, "the columns of labeled"))
        goto done;
    const int64_t *per_combo = v[PER_COMBO].buf, *act = v[ACT].buf, *unit = v[UNITS].buf;
    const int64_t *image = v[IMAGES].buf, *tables = v[TABLES].buf;
    const int64_t *image_concepts = v[IMAGE_CONCEPTS].buf, *labeled = v[LABELED].buf;
    int64_t *inter = v[INTER].buf, *active = v[ACTIVE].buf;
    /* every index is checked before anything is added: an error leaves the counts as they were */
    for (Py_ssize_t k = 0; k < p; k++) {
        if (unit[k] < 0 || unit[k] >= units || image[k] < 0 || image[k] >= n) {
            PyErr_Format(PyExc_ValueError, "%s(): pair %zd has unit %lld of %zd, image %lld of %zd",
                         fn, k, (long long)unit[k], units, (long long)image[k], n);
            goto done;
        }
    }
    const Py_ssize_t n_table = n * width * planes, n_ic = n * n_image;
    for (Py_ssize_t q = 0; q < n_table + n_ic; q++) {
        const int64_t c = q < n_table ? tables[q] : image_concepts[q - n_table];
        if (c >= concepts) {
            PyErr_Format(PyExc_ValueError, "%s(): concept index %lld in %s, but inter has %zd columns",
                         fn, (long long)c, q < n_table ? "tables" : "image_concepts", concepts);
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < p; k++) {
        int64_t *row = inter + unit[k] * concepts, *act_row = active + unit[k] * groups;
        const int64_t a = act[k];
        const int64_t *lab = labeled + image[k] * groups, *ic = image_concepts + image[k] * n_image;
        for (Py_ssize_t g = 0; g < groups; g++)
            act_row[g] += a * lab[g];
        for (Py_ssize_t q = 0; q < n_image; q++)
            if (ic[q] >= 0)
                row[ic[q]] += a;
        const int64_t *counts = per_combo + k * width, *table = tables + image[k] * width * planes;
        for (Py_ssize_t j = 0; j < width; j++) {
            if (counts[j] == 0)
                continue;
            for (Py_ssize_t q = 0; q < planes; q++)
                if (table[j * planes + q] >= 0)
                    row[table[j * planes + q]] += counts[j];
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
}

/* ---- combination_counts ----------------------------------------------------------------- */

PyDoc_STRVAR(combination_counts_doc,
"combination_counts(per_combo, units, rows, lut, size, dense=None, keys=None, counts=None) -> n\n--\n\n"
"UnitCombinationCounts.add's step in one loop over the pairs' nonzero counts (instead of torch's\n"
"nonzero, gathers and index_add): pair k's count per_combo[k, j] of unit units[k] in global\n"
"combination g = lut[rows[k], j] is added to dense[units[k] * size + g] (dense (K * size,)), or\n"
"written as keys[i] = units[k] * size + g, counts[i] = the count (keys, counts (p * W,)), i from 0\n"
"up, pair by pair; n is how many counts were nonzero. per_combo (p, W), units, rows (p,), lut\n"
"(n, W), every entry in [0, size) (0 where an image has fewer combinations); all int64,\n"
"C-contiguous. Every index is checked before anything is added.");

static PyObject *combination_counts(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "combination_counts";
    static char *names[] = {"per_combo", "units", "rows", "lut", "size", "dense", "keys", "counts", NULL};
    enum { PER_COMBO, UNITS, ROWS, LUT, DENSE, KEYS, COUNTS, NARGS };
    static const int ndims[NARGS] = {2, 1, 1, 2, 1, 1, 1};
    PyObject *objs[NARGS] = {NULL, NULL, NULL, NULL, Py_None, Py_None, Py_None}, *result = NULL;
    Py_buffer v[NARGS];
    int taken[NARGS] = {0};
    Py_ssize_t size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOn|OOO:combination_counts", names, &objs[PER_COMBO],
                                     &objs[UNITS], &objs[ROWS], &objs[LUT], &size, &objs[DENSE], &objs[KEYS],
                                     &objs[COUNTS]))
        return NULL;
    const int sparse = objs[DENSE] == Py_None;
    if (sparse == (objs[KEYS] == Py_None) || (objs[KEYS] == Py_None) != (objs[COUNTS] == Py_None)) {
        PyErr_Format(PyExc_TypeError, "%s(): give dense, or keys and counts", fn);
        return NULL;
    }
    for (int a = 0; a < NARGS; a++) {
        if (objs[a] == Py_None)
            continue;
        if (get_array(fn, names[a], objs[a], INT64, ndims[a], a >= DENSE, &v[a]) < 0)
            goto done;
        taken[a] = 1;
    }
    const Py_ssize_t p = v[PER_COMBO].shape[0], width = v[PER_COMBO].shape[1], n = v[LUT].shape[0];
    if (check_dim(fn, "units", &v[UNITS], 0, p, "one per pair") ||
        check_dim(fn, "rows", &v[ROWS], 0, p, "one per pair") ||
        check_dim(fn, "lut", &v[LUT], 1, width, "the columns of per_combo") ||
        (sparse && (check_dim(fn, "keys", &v[KEYS], 0, p * width, "room for every count") ||
                    check_dim(fn, "counts", &v[COUNTS], 0, p * width, "room for every count"))))
        goto done;
    if (size < 1 || (!sparse && v[DENSE].shape[0] % size != 0)) {
        PyErr_Format(PyExc_ValueError, "%s(): size must be at least 1 and divide dense's length, got %zd", fn,
                     size);
        goto done;
    }
    const Py_ssize_t K = sparse ? PY_SSIZE_T_MAX / size : v[DENSE].shape[0] / size;
    const int64_t *per_combo = v[PER_COMBO].buf, *unit = v[UNITS].buf, *row = v[ROWS].buf, *lut = v[LUT].buf;
    for (Py_ssize_t k = 0; k < p; k++) {
        if (unit[k] < 0 || unit[k] >= K || row[k] < 0 || row[k] >= n) {
            PyErr_Format(PyExc_ValueError, "%s(): pair %zd has unit %lld and lut row %lld (of %zd)", fn, k,
                         (long long)unit[k], (long long)row[k], n);
            goto done;
        }
    }
    for (Py_ssize_t q = 0; q < n * width; q++) {   /* the few images' ids, not every pair's counts */
        if (lut[q] < 0 || lut[q] >= size) {
            PyErr_Format(PyExc_ValueError, "%s(): lut row %zd holds combination %lld, outside [0, %zd)", fn,
                         q / width, (long long)lut[q], size);
            goto done;
        }
    }
    Py_ssize_t found = 0;
    int64_t *dense = sparse ? NULL : v[DENSE].buf, *keys = sparse ? v[KEYS].buf : NULL;
    int64_t *counts = sparse ? v[COUNTS].buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < p; k++) {
        const int64_t *c = per_combo + k * width, *g = lut + row[k] * width, base = unit[k] * size;
        for (Py_ssize_t j = 0; j < width; j++) {
            if (c[j] == 0)
                continue;
            if (sparse) {
                keys[found] = base + g[j];
                counts[found] = c[j];
            } else {
                dense[base + g[j]] += c[j];
            }
            found++;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(found);
done:
    for (int a = NARGS - 1; a >= 0; a--)
        if (taken[a])
            PyBuffer_Release(&v[a]);
    return result;
}

/* ---- the label combinations of one image ------------------------------------------------ */

static const int64_t *sort_keys;   /* qsort has no context argument; used under the GIL only */

static int compare_ids(const void *a, const void *b)
{
    int64_t x = sort_keys[*(const int32_t *)a], y = sort_keys[*(const int32_t *)b];
    return (x > y) - (x < y);
}

PyDoc_STRVAR(distinct_keys_doc,
"distinct_keys(keys, inverse, distinct, first) -> n\n\n"
"keys (P,) int64; inverse (P,) int32, distinct (P,) int64 and first (P,) int64, writable; all\n"
"C-contiguous. What numpy.unique(keys, return_index=True, return_inverse=True) gives, in one\n"
"hashing pass and a sort of the distinct keys only: distinct[:n] ascending, first[:n] the index\n"
"of each one's first occurrence, inverse the rank of each pixel's key among them.");

static PyObject *distinct_keys(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static const char *fn = "distinct_keys";
    static char *names[] = {"keys", "inverse", "distinct", "first", NULL};
    PyObject *objs[4];
    Py_buffer v[4];
    const enum kind kinds[4] = {INT64, INT32, INT64, INT64};
    const char *args_names[4] = {"keys", "inverse", "distinct", "first"};
    int got = 0;
    PyObject *result = NULL;
    int64_t *slot_key = NULL, *prov_key = NULL, *prov_first = NULL;
    int32_t *slot_id = NULL, *order = NULL, *rank = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:distinct_keys", names, &objs[0], &objs[1],
                                     &objs[2], &objs[3]))
        return NULL;
    for (; got < 4; got++)
        if (get_array(fn, args_names[got], objs[got], kinds[got], 1, got > 0, &v[got]) < 0)
            goto done;
    Py_ssize_t P = v[0].shape[0];
    for (int i = 1; i < 4; i++)
        if (check_dim(fn, args_names[i], &v[i], 0, P, "one entry per key") < 0)
            goto done;
    if (P > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s(): more than 2**31 keys", fn);
        goto done;
    }
    size_t cap = 16;
    while (cap < 2 * (size_t)P)
        cap <<= 1;
    slot_key = (int64_t *)malloc(cap * sizeof(int64_t));
    slot_id = (int32_t *)malloc(cap * sizeof(int32_t));
    prov_key = (int64_t *)malloc(((size_t)P + 1) * sizeof(int64_t));
    prov_first = (int64_t *)malloc(((size_t)P + 1) * sizeof(int64_t));
    order = (int32_t *)malloc(((size_t)P + 1) * sizeof(int32_t));
    rank = (int32_t *)malloc(((size_t)P + 1) * sizeof(int32_t));
    if (!slot_key || !slot_id || !prov_key || !prov_first || !order || !rank) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *keys = (const int64_t *)v[0].buf;
    int32_t *inverse = (int32_t *)v[1].buf;
    int64_t *distinct = (int64_t *)v[2].buf, *first = (int64_t *)v[3].buf;
    int32_t n = 0;
    const size_t mask = cap - 1;
    for (size_t i = 0; i < cap; i++)
        slot_id[i] = -1;
    for (Py_ssize_t i = 0; i < P; i++) {   /* provisional ids in order of first occurrence */
        int64_t k = keys[i];
        size_t h = (size_t)(((uint64_t)k * 0x9E3779B97F4A7C15ull) >> 17) & mask;
        while (slot_id[h] >= 0 && slot_key[h] != k)
            h = (h + 1) & mask;
        if (slot_id[h] < 0) {
            slot_id[h] = n;
            slot_key[h] = k;
            prov_key[n] = k;
            prov_first[n] = i;
            n++;
        }
        inverse[i] = slot_id[h];
    }
    for (int32_t j = 0; j < n; j++)
        order[j] = j;
    sort_keys = prov_key;
    qsort(order, (size_t)n, sizeof(int32_t), compare_ids);
    for (int32_t r = 0; r < n; r++) {
        rank[order[r]] = r;
        distinct[r] = prov_key[order[r]];
        first[r] = prov_first[order[r]];
    }
    for (Py_ssize_t i = 0; i < P; i++)
        inverse[i] = rank[inverse[i]];
    result = PyLong_FromLong(n);
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&v[i]);
    free(slot_key);
    free(slot_id);
    free(prov_key);
    free(prov_first);
    free(order);
    free(rank);
    return result;
}

/* ---- the module ------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"upsample_bilinear", (PyCFunction)(void (*)(void))upsample_bilinear,
     METH_VARARGS | METH_KEYWORDS, upsample_bilinear_doc},
    {"tally_bilinear", (PyCFunction)(void (*)(void))tally_bilinear, METH_VARARGS | METH_KEYWORDS,
     tally_bilinear_doc},
    {"distinct_keys", (PyCFunction)(void (*)(void))distinct_keys, METH_VARARGS | METH_KEYWORDS,
     distinct_keys_doc},
    {"add_pair_counts", (PyCFunction)(void (*)(void))add_pair_counts, METH_VARARGS | METH_KEYWORDS,
     add_pair_counts_doc},
    {"pack_maps", (PyCFunction)(void (*)(void))pack_maps, METH_VARARGS | METH_KEYWORDS,
     pack_maps_doc},
    {"unpack_maps", (PyCFunction)(void (*)(void))unpack_maps, METH_VARARGS | METH_KEYWORDS,
     unpack_maps_doc},
    {"combination_counts", (PyCFunction)(void (*)(void))combination_counts, METH_VARARGS | METH_KEYWORDS,
     combination_counts_doc},
    {"openmp", openmp, METH_NOARGS, openmp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel",
    "Fused bilinear upsample + threshold + count for the final IoU tally (see netdissect.kernel).",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModuleDef_Init(&module); }
