/*
 * netdissect.stats._topvalues: the exact threshold state of the pass, in one read of each map.
 *
 * For every unit, a row holds the largest `keep` activations seen so far (the values the top
 * quantile depends on; see stats/quantile.py) and room for as many again. A new value is
 * appended only when it beats the row's entry bar, the keep-th largest value at the row's last
 * compaction (a lower bound of the final threshold); a full row, and every row that values
 * entered at the end of a call, is compacted back to its `keep` largest. After the first few
 * batches almost every value loses that one comparison, so a batch costs about one comparison
 * per activation, against torch.topk over the kept and new values together; the few values
 * that enter displace as many of the smallest kept, found by a select between two pivots taken
 * from a sample of the row (select_largest). The bars stay with the caller between calls
 * (`roots`), so a row nothing entered is not read again.
 * The same read gives each (image, unit) map's maximum, which the top images and the candidate
 * maps need.
 *
 * The maps are read where they lie, with any strides: a channels-last batch is walked position
 * by position across the units, a contiguous one unit by unit, so memory is read in order. The
 * kept set does not depend on the order (it is the multiset of the largest `keep` values; a value
 * equal to the bar may stay out, which changes no kept value). -0.0 is kept as +0.0. The maps
 * must be finite: the same read looks for NaN and inf (a NaN enters every comparison with a bar,
 * an inf too, a -inf lowers the smallest value seen) and push_values raises FloatingPointError, so
 * the pass needs no separate check of every activation; the rows are then not to be used. The GIL is
 * released around the arithmetic.
 *
 * top_images keeps each unit's k best images (by maximum, then image index) the same way: one
 * comparison per (image, unit) with the entry that ranks last, and a scan of the k for the next
 * one when an image enters; given the batch, it copies the entering maps too.
 *
 * Units are independent: push_values(threads=n) splits them into n ranges. Built with OpenMP
 * (setup.py, where the compiler has it), the ranges run on the OpenMP threads that torch's CPU
 * operations use (the same libgomp, loaded once per process), which take the work at once; a
 * thread of our own would share a core with an OpenMP thread still spinning after the forward
 * pass's last operation (measured: 0.35 -> 0.24 s per 1,000 images at three MobileNetV2 layers).
 * Without OpenMP the ranges run one after the other (the caller slices the units itself).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Whether a struct-module format string names a native scalar: float32, or int64 (int64 = 1). */
static int is_scalar(const char *format, Py_ssize_t itemsize, int int64)
{
    if (format == NULL || itemsize != (int64 ? 8 : 4))
        return 0;
    if (format[0] == '@' || format[0] == '=' ||
#if PY_LITTLE_ENDIAN
        format[0] == '<'
#else
        format[0] == '>' || format[0] == '!'
#endif
    )
        format++;
    if (format[0] == '\0' || format[1] != '\0')
        return 0;
    return int64 ? strchr("lqn", format[0]) != NULL : format[0] == 'f';
}

/* A float32 (or, with int64, int64) buffer of ndim dimensions (C-contiguous unless any_strides;
 * writable when asked); on failure a TypeError or ValueError naming the function and argument,
 * and -1 with the view released. */
static int get_buffer(const char *fn, const char *arg, PyObject *obj, int int64, int ndim, int any_strides,
                      int writable, Py_buffer *view)
{
    const char *kind = int64 ? "int64" : "float32";
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be a %s numpy array (a torch tensor: "
                     "pass tensor.numpy()), not %.100s", fn, arg, kind, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) < 0)
        return -1;
    if (!is_scalar(view->format, view->itemsize, int64)) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must hold %s, got format '%s' with %zd-byte "
                     "items", fn, arg, kind, view->format ? view->format : "B", view->itemsize);
        goto fail;
    }
    if (view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must have %d dimensions, got %d", fn, arg,
                     ndim, view->ndim);
        goto fail;
    }
    if (writable && view->readonly) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' is read-only", fn, arg);
        goto fail;
    }
    if (!any_strides && !PyBuffer_IsContiguous(view, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must be C-contiguous", fn, arg);
        goto fail;
    }
    for (int i = 0; any_strides && i < ndim; i++) {
        if (view->strides[i] % view->itemsize != 0) {
            PyErr_Format(PyExc_ValueError, "%s(): argument '%s' has a stride that is not a multiple of "
                         "%zd bytes", fn, arg, view->itemsize);
            goto fail;
        }
    }
    return 0;
fail:
    PyBuffer_Release(view);
    return -1;
}

static int get_float32(const char *arg, PyObject *obj, int ndim, int any_strides, int writable,
                       Py_buffer *view)
{
    return get_buffer("push_values", arg, obj, 0, ndim, any_strides, writable, view);
}

/* Rearrange a[0..n) so that a[0..k) holds its k largest values (0 < k <= n): a quickselect
 * with a three-way partition, so that runs of equal values (the zeros after a ReLU) cost one
 * pass instead of a quadratic worst case. */
static void quickselect_largest(float *a, Py_ssize_t n, Py_ssize_t k)
{
    Py_ssize_t lo = 0, hi = n;
    while (hi - lo > 1) {
        float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
        float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        Py_ssize_t gt = lo, i = lo, lt = hi;     /* [lo,gt) > pivot, [gt,i) == pivot, [lt,hi) < pivot */
        while (i < lt) {
            float v = a[i];
            if (v > pivot) {
                a[i++] = a[gt];
                a[gt++] = v;
            } else if (v < pivot) {
                a[i] = a[--lt];
                a[lt] = v;
            } else {
                i++;
            }
        }
        if (k < gt)
            hi = gt;
        else if (k <= lt)
            return;
        else
            lo = lt;
    }
}

typedef struct {
    float *rows;          /* (K, cap): each row's first len[k] entries are in use */
    Py_ssize_t cap, keep;
    Py_ssize_t *len;
    float *root;          /* (K,) the smallest of a full row's values (its entry bar), or -inf */
    float *mid;           /* (cap,) scratch of the range's thread, for select_largest */
    float low;            /* the smallest value seen (-inf: a -inf was met) */
#if defined(__SSE2__)
    __m128 lows;          /* push_position's four smallest, folded into low at the end */
#endif
    int nonfinite;        /* set when a NaN or an inf was offered */
} state_t;

static float smallest(const float *a, Py_ssize_t n)
{
    float low = a[0];
    for (Py_ssize_t i = 1; i < n; i++)
        low = a[i] < low ? a[i] : low;
    return low;
}

/* Rearrange a[0..n) (n > k) so that a[0..k) holds its k largest values; returns the smallest of
 * them (the value of ascending rank n - k). A select in the manner of Floyd and Rivest: two pivots
 * taken from an evenly spread sample of the row bracket that rank a few standard deviations either
 * side; one branch-free pass counts the values below the lower pivot and copies aside those
 * between the two (a small share of the row); the rank is selected among those; a second
 * branch-free pass closes up the row. Two reads of the row instead of a quickselect's
 * unpredictable comparisons over all of it (the values that enter a full row displace as many of
 * the smallest kept: every batch, every unit). A bracket the sample misjudged falls back to the
 * quickselect. `mid`: room for n values. */
static float select_largest(float *a, Py_ssize_t n, Py_ssize_t k, float *mid)
{
    enum { MIN_SAMPLE = 64, MAX_SAMPLE = 1024 };
    const Py_ssize_t rank = n - k;
    if (n >= 4 * MIN_SAMPLE) {
        float sample[MAX_SAMPLE];
        const Py_ssize_t size = n / 16 < MIN_SAMPLE ? MIN_SAMPLE : (n / 16 > MAX_SAMPLE ? MAX_SAMPLE : n / 16);
        for (Py_ssize_t i = 0; i < size; i++)      /* evenly spread: the row's order is the data's */
            sample[i] = a[i * n / size + (n / size) / 2];
        const double at = (double)rank * size / n, spread = 3.0 * sqrt(at * (1.0 - at / size) + 1.0) + 2.0;
        const Py_ssize_t jl = (Py_ssize_t)floor(at - spread), ju = (Py_ssize_t)ceil(at + spread);
        float lo = -INFINITY, hi = INFINITY;
        Py_ssize_t upper = size;     /* sample[0..upper): the sample's values of rank jl and up */
        if (jl > 0) {
            quickselect_largest(sample, size, size - jl);
            upper = size - jl;
            lo = smallest(sample, upper);
        }
        if (ju < size) {
            const Py_ssize_t above = ju - (jl > 0 ? jl : 0);   /* hi's rank within sample[0..upper) */
            quickselect_largest(sample, upper, upper - above);
            hi = smallest(sample, upper - above);
        }
        Py_ssize_t below = 0, c = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            const float v = a[i];
            mid[c] = v;
            c += (v >= lo) & (v < hi);
            below += v < lo;
        }
        if (below <= rank && rank < below + c) {   /* the rank lies between the pivots */
            quickselect_largest(mid, c, c - (rank - below));
            const float root = smallest(mid, c - (rank - below));
            Py_ssize_t kept = 0;
            for (Py_ssize_t i = 0; i < n; i++) {     /* kept <= i: in place */
                const float v = a[i];
                a[kept] = v;
                kept += v > root;
            }
            for (; kept < k; kept++)   /* values equal to the new bar: as many as it takes */
                a[kept] = root;
            return root;
        }
    }
    quickselect_largest(a, n, k);
    return smallest(a, k);
}

/* Keep only row k's `keep` largest values; the smallest of them becomes the entry bar. A row
 * that holds exactly `keep` values keeps its bar (nothing entered since it was found). */
static void compact(state_t *s, Py_ssize_t k)
{
    float *a = s->rows + k * s->cap;
    if (s->len[k] < s->keep)
        return;
    if (s->len[k] == s->keep) {
        if (s->root[k] == -INFINITY)      /* just filled: values are finite */
            s->root[k] = smallest(a, s->keep);
        return;
    }
    s->root[k] = select_largest(a, s->len[k], s->keep, s->mid);
    s->len[k] = s->keep;
}

/* Append v (which beats row k's entry bar) to row k, compacting the row when it is full. */
static inline void offer(state_t *s, Py_ssize_t k, float v)
{
    if (v != v || v == INFINITY) {
        s->nonfinite = 1;
        return;
    }
    s->rows[k * s->cap + s->len[k]++] = v + 0.0f;
    if (s->len[k] == s->cap)
        compact(s, k);
}

/* One position of a channels-last batch: the values p[a..e) of units [a, e), contiguous; their
 * maps' maxima in mb. Four units at a time where the compiler has SSE2 (every x86-64): one
 * comparison with the four bars gives a bit mask, so only the units whose value enters are visited
 * (a few in a hundred after the first batches) instead of every unit of a position where any
 * enters (nearly every position of a late layer's 1,280 units). _mm_max_ps(v, m) is v > m ? v : m. */
static inline void push_position(state_t *s, const float *p, float *mb, const float *root, Py_ssize_t a,
                                 Py_ssize_t e)
{
    Py_ssize_t k = a;
#if defined(__SSE2__)
    __m128 lows = s->lows;
    for (; k + 4 <= e; k += 4) {
        const __m128 v = _mm_loadu_ps(p + k);
        _mm_storeu_ps(mb + k, _mm_max_ps(v, _mm_loadu_ps(mb + k)));
        lows = _mm_min_ps(v, lows);
        for (int enters = _mm_movemask_ps(_mm_cmpnle_ps(v, _mm_loadu_ps(root + k))); enters;
             enters &= enters - 1) {
            const Py_ssize_t u = k + __builtin_ctz((unsigned)enters);
            offer(s, u, p[u]);
        }
    }
    s->lows = lows;
#endif
    for (; k < e; k++) {
        const float v = p[k];
        mb[k] = v > mb[k] ? v : mb[k];
        s->low = v < s->low ? v : s->low;
        if (!(v <= root[k]))
            offer(s, k, v);
    }
}

/* The units [a, e) of push_values: their rows, their maxima in mx (B, K). Units are independent,
 * so ranges run in parallel. */
static void push_range(state_t *s, const float *m, Py_ssize_t sb, Py_ssize_t sk, Py_ssize_t sy,
                       Py_ssize_t sx, Py_ssize_t B, Py_ssize_t H, Py_ssize_t W, Py_ssize_t K,
                       Py_ssize_t filled, Py_ssize_t a, Py_ssize_t e, float *mx)
{
    float *root = s->root;
    Py_ssize_t *len = s->len;
    for (Py_ssize_t k = a; k < e; k++)
        len[k] = filled;        /* root[k]: the caller's bar of a full row, else -inf */
    if (labs(sk) < labs(sx) && labs(sk) < labs(sy)) {
        /* channels-last: position by position, the units innermost */
        for (Py_ssize_t b = 0; b < B; b++) {
            float *mb = mx + b * K;
            for (Py_ssize_t k = a; k < e; k++)
                mb[k] = -INFINITY;
            for (Py_ssize_t y = 0; y < H; y++)
                for (Py_ssize_t x = 0; x < W; x++) {
                    const float *p = m + b * sb + y * sy + x * sx;
                    if (sk == 1) {
                        push_position(s, p, mb, root, a, e);
                    } else {
                        for (Py_ssize_t k = a; k < e; k++) {
                            float v = p[k * sk];
                            mb[k] = v > mb[k] ? v : mb[k];
                            s->low = v < s->low ? v : s->low;
                            if (!(v <= root[k]))
                                offer(s, k, v);
                        }
                    }
                }
        }
    } else {
        /* unit by unit, each map row by row */
        for (Py_ssize_t k = a; k < e; k++)
            for (Py_ssize_t b = 0; b < B; b++) {
                float best = -INFINITY;
                for (Py_ssize_t y = 0; y < H; y++) {
                    const float *p = m + b * sb + k * sk + y * sy;
                    float top = -INFINITY, low = s->low;
                    int nan = 0;
                    for (Py_ssize_t x = 0; x < W; x++) {
                        const float v = p[x * sx];
                        top = v > top ? v : top;
                        low = v < low ? v : low;
                        nan |= v != v;
                    }
                    s->low = low;
                    s->nonfinite |= nan;
                    best = top > best ? top : best;
                    if (!(top <= root[k]))
                        for (Py_ssize_t x = 0; x < W; x++)
                            if (!(p[x * sx] <= root[k]))
                                offer(s, k, p[x * sx]);
                }
                mx[b * K + k] = best;
            }
    }
    for (Py_ssize_t k = a; k < e; k++)
        compact(s, k);
#if defined(__SSE2__)
    float four[4];
    _mm_storeu_ps(four, s->lows);
    for (int j = 0; j < 4; j++)
        s->low = four[j] < s->low ? four[j] : s->low;
#endif
    s->nonfinite |= s->low == -INFINITY;
}

PyDoc_STRVAR(push_values_doc,
"push_values(rows, keep, filled, maps, maxima, threads=1, roots=None) -> filled\n\n"
"rows: (K, cap) float32 C-contiguous, writable, cap > keep >= 1; each row's first `filled`\n"
"entries are the values kept so far (any order). maps: (B, K, h, w) float32, any strides; NaN or\n"
"inf in them raises FloatingPointError (the rows and roots are then not to be used).\n"
"maxima: (B, K) float32, any strides, writable: receives each map's maximum. Afterwards each row's\n"
"first `filled` entries are the largest `keep` of its kept and new values (all of them while they\n"
"are fewer); returns the new fill, min(keep, filled + B*h*w). threads: ranges of units run on\n"
"OpenMP threads (see openmp()). roots: (K,) float32 C-contiguous, writable: each full row's\n"
"smallest value (-inf while rows are not full), as the last call left them, so that the rows\n"
"need not be read to find them; receives the new ones (the thresholds' lower bounds). None: found\n"
"from the rows.");

PyDoc_STRVAR(openmp_doc,
"openmp() -> bool\n\n"
"Whether this module was built with OpenMP: push_values' `threads` then run in parallel.");

static PyObject *openmp(PyObject *self, PyObject *unused)
{
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *push_values(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"rows", "keep", "filled", "maps", "maxima", "threads", "roots", NULL};
    int threads = 1;
    PyObject *rows_obj, *maps_obj, *max_obj, *roots_obj = Py_None;
    Py_ssize_t keep, filled;
    Py_buffer rows, maps, maxima, roots = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnnOO|iO:push_values", names, &rows_obj, &keep,
                                     &filled, &maps_obj, &max_obj, &threads, &roots_obj))
        return NULL;
    /* rows and roots C-contiguous, maps and maxima any strides; all but maps written */
    static const char *arg[4] = {"rows", "maps", "maxima", "roots"};
    static const int ndims[4] = {2, 4, 2, 1}, strided[4] = {0, 1, 1, 0}, writable[4] = {1, 0, 1, 1};
    PyObject *objs[4] = {rows_obj, maps_obj, max_obj, roots_obj};
    Py_buffer *views[4] = {&rows, &maps, &maxima, &roots};
    PyObject *result = NULL;
    float *root = NULL, *mx = NULL, *mid = NULL;
    Py_ssize_t *len = NULL;
    int got = 0;
    for (const int wanted = roots_obj != Py_None ? 4 : 3; got < wanted; got++)
        if (get_float32(arg[got], objs[got], ndims[got], strided[got], writable[got], views[got]) < 0)
            goto done;
    Py_ssize_t K = rows.shape[0], cap = rows.shape[1];
    Py_ssize_t B = maps.shape[0], H = maps.shape[2], W = maps.shape[3];
    const int slices = threads < 1 ? 1 : (threads > K ? (int)(K > 0 ? K : 1) : threads);
    if (roots.obj != NULL && roots.shape[0] != K) {
        PyErr_Format(PyExc_ValueError, "push_values(): roots must have one entry per row (%zd), got %zd",
                     K, roots.shape[0]);
        goto done;
    }
    if (maps.shape[1] != K) {
        PyErr_Format(PyExc_ValueError, "push_values(): maps have %zd units, rows %zd",
                     maps.shape[1], K);
        goto done;
    }
    if (maxima.shape[0] != B || maxima.shape[1] != K) {
        PyErr_Format(PyExc_ValueError, "push_values(): maxima must be (%zd, %zd), got (%zd, %zd)",
                     B, K, maxima.shape[0], maxima.shape[1]);
        goto done;
    }
    if (keep < 1 || cap <= keep || filled < 0 || filled > keep) {
        PyErr_Format(PyExc_ValueError, "push_values(): need 1 <= keep < rows.shape[1] (%zd) and "
                     "0 <= filled <= keep, got keep=%zd, filled=%zd", cap, keep, filled);
        goto done;
    }
    root = roots.obj != NULL ? NULL : (float *)malloc((size_t)(K > 0 ? K : 1) * sizeof(float));
    len = (Py_ssize_t *)malloc((size_t)(K > 0 ? K : 1) * sizeof(Py_ssize_t));
    mx = (float *)malloc((size_t)(B * K > 0 ? B * K : 1) * sizeof(float));   /* (B, K), copied out */
    mid = (float *)malloc((size_t)slices * (size_t)cap * sizeof(float));
    if ((root == NULL && roots.obj == NULL) || len == NULL || mx == NULL || mid == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; root != NULL && k < K; k++)   /* no bars given: those of the full rows */
        root[k] = filled == keep ? smallest((float *)rows.buf + k * cap, keep) : -INFINITY;
    state_t s = {0};
    s.rows = (float *)rows.buf;
    s.cap = cap;
    s.keep = keep;
    s.len = len;
    s.root = root != NULL ? root : (float *)roots.buf;
    const float *m = (const float *)maps.buf;
    const Py_ssize_t sb = maps.strides[0] / 4, sk = maps.strides[1] / 4, sy = maps.strides[2] / 4,
                     sx = maps.strides[3] / 4;
    Py_BEGIN_ALLOW_THREADS
    {
        int nonfinite = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(slices) schedule(static, 1) reduction(| : nonfinite)
#endif
        for (int t = 0; t < slices; t++) {
            state_t own = s;
            own.nonfinite = 0;
            own.low = INFINITY;
#if defined(__SSE2__)
            own.lows = _mm_set1_ps(INFINITY);
#endif
            own.mid = mid + (size_t)t * (size_t)cap;
            push_range(&own, m, sb, sk, sy, sx, B, H, W, K, filled, K * t / slices,
                       K * (t + 1) / slices, mx);
            nonfinite |= own.nonfinite;
        }
        s.nonfinite = nonfinite;
        const Py_ssize_t ob = maxima.strides[0] / 4, ok = maxima.strides[1] / 4;
        float *out = (float *)maxima.buf;
        for (Py_ssize_t b = 0; b < B; b++)
            for (Py_ssize_t k = 0; k < K; k++)
                out[b * ob + k * ok] = mx[b * K + k];
    }
    Py_END_ALLOW_THREADS
    if (s.nonfinite) {
        PyErr_SetString(PyExc_FloatingPointError, "push_values(): the maps hold NaN or inf values; "
                        "the rows are not to be used");
        goto done;
    }
    {
        Py_ssize_t total = filled + B * H * W;
        result = PyLong_FromSsize_t(total < keep ? total : keep);
    }
done:
    free(root);
    free(len);
    free(mx);
    free(mid);
    while (got-- > 0)
        PyBuffer_Release(views[got]);
    return result;
}

/* ---- top_images ------------------------------------------------------------------------ */

/* Whether (score a, image ia) ranks before (b, ib): the higher score, then the lower index. */
static inline int ranks_before(float a, int64_t ia, float b, int64_t ib)
{
    return a > b || (a == b && ia < ib);
}

/* The slot of unit row (score, index) of k entries that ranks last. */
static Py_ssize_t last_slot(const float *score, const int64_t *index, Py_ssize_t k)
{
    Py_ssize_t w = 0;
    for (Py_ssize_t j = 1; j < k; j++)
        if (ranks_before(score[w], index[w], score[j], index[j]))
            w = j;
    return w;
}

PyDoc_STRVAR(top_images_doc,
"top_images(score, index, maxima, images, entered, threads=1, acts=None, maps=None)\n\n"
"Each unit's k best images so far, updated with a batch in place: score (K, k) float32 and index\n"
"(K, k) int64 (-1: an empty slot, score -inf), C-contiguous and writable; maxima (B, K) float32\n"
"with any strides; images (B,) int64 C-contiguous. An image of the batch takes the slot of the\n"
"entry that ranks last (the lower score, then the higher index) when it ranks before it: the\n"
"kept set is the k best of all images seen, whatever the order they came in (scores -0.0 and 0.0\n"
"tie). entered (K, k) int64, writable: receives the batch position whose map each slot now\n"
"holds, -1 where the slot kept its map. With acts (B, K, h, w) float32 (the batch, any strides) and\n"
"maps (K, k, h, w) float32 (C-contiguous, writable), the entering maps are copied into their\n"
"slots here, each unit's by the thread that chose them (a gather and a scatter by torch's advanced\n"
"indexing cost three times as much). threads: ranges of units on OpenMP threads.");

static PyObject *top_images(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"score", "index", "maxima", "images", "entered", "threads", "acts", "maps", NULL};
    /* score, index, entered, maps: C-contiguous and writable; maxima, acts: any strides; images: int64 */
    static const char *arg[7] = {"score", "index", "maxima", "images", "entered", "acts", "maps"};
    static const int int64s[7] = {0, 1, 0, 1, 1, 0, 0}, ndims[7] = {2, 2, 2, 1, 2, 4, 4};
    static const int strided[7] = {0, 0, 1, 0, 0, 1, 0}, writable[7] = {1, 1, 0, 0, 1, 0, 1};
    PyObject *objs[7] = {NULL, NULL, NULL, NULL, NULL, Py_None, Py_None};
    Py_buffer v[7];
    int n = 0, threads = 1;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|iOO:top_images", names, &objs[0], &objs[1],
                                     &objs[2], &objs[3], &objs[4], &threads, &objs[5], &objs[6]))
        return NULL;
    const int copy = objs[5] != Py_None;   /* the entering maps, from acts into maps */
    if (copy != (objs[6] != Py_None)) {
        PyErr_SetString(PyExc_TypeError, "top_images(): give acts and maps together, or neither");
        return NULL;
    }
    for (const int wanted = copy ? 7 : 5; n < wanted; n++)
        if (get_buffer("top_images", arg[n], objs[n], int64s[n], ndims[n], strided[n], writable[n], &v[n]) < 0)
            goto done;
    const Py_buffer *acts = &v[5], *maps = &v[6];
    const Py_ssize_t K = v[0].shape[0], k = v[0].shape[1], B = v[3].shape[0];
    if (v[1].shape[0] != K || v[1].shape[1] != k || v[4].shape[0] != K || v[4].shape[1] != k ||
        v[2].shape[0] != B || v[2].shape[1] != K) {
        PyErr_Format(PyExc_ValueError, "top_images(): shapes disagree: score (%zd, %zd), index (%zd, %zd), "
                     "maxima (%zd, %zd), images (%zd,), entered (%zd, %zd)", K, k, v[1].shape[0],
                     v[1].shape[1], v[2].shape[0], v[2].shape[1], B, v[4].shape[0], v[4].shape[1]);
        goto done;
    }
    if (copy && (acts->shape[0] != B || acts->shape[1] != K || maps->shape[0] != K || maps->shape[1] != k ||
                 maps->shape[2] != acts->shape[2] || maps->shape[3] != acts->shape[3])) {
        PyErr_Format(PyExc_ValueError, "top_images(): acts (%zd, %zd, %zd, %zd) and maps (%zd, %zd, %zd, %zd) "
                     "must be (B, K, h, w) and (K, k, h, w) of the batch's B = %zd images and K = %zd units",
                     acts->shape[0], acts->shape[1], acts->shape[2], acts->shape[3], maps->shape[0],
                     maps->shape[1], maps->shape[2], maps->shape[3], B, K);
        goto done;
    }
    float *sc = v[0].buf;
    int64_t *ix = v[1].buf, *from = v[4].buf;
    const int64_t *img = v[3].buf;
    const char *mx = v[2].buf;
    const Py_ssize_t *ms = v[2].strides;
    int nan = 0;
    Py_BEGIN_ALLOW_THREADS
    const int slices = threads < 1 ? 1 : (threads > K ? (int)(K > 0 ? K : 1) : threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(slices) schedule(static, 1) reduction(| : nan)
#endif
    for (int t = 0; t < slices; t++) {
        for (Py_ssize_t u = K * t / slices; u < K * (t + 1) / slices && k > 0; u++) {
            float *us = sc + u * k;
            int64_t *ui = ix + u * k, *uf = from + u * k;
            for (Py_ssize_t j = 0; j < k; j++)
                uf[j] = -1;
            Py_ssize_t last = last_slot(us, ui, k);
            for (Py_ssize_t b = 0; b < B; b++) {
                const float value = *(const float *)(mx + b * ms[0] + u * ms[1]) + 0.0f;
                if (value != value) {
                    nan = 1;
                    continue;
                }
                if (!ranks_before(value, img[b], us[last], ui[last]))
                    continue;
                us[last] = value;
                ui[last] = img[b];
                uf[last] = b;
                last = last_slot(us, ui, k);
            }
            if (!copy)
                continue;
            const Py_ssize_t h = acts->shape[2], w = acts->shape[3], *as = acts->strides;
            for (Py_ssize_t j = 0; j < k; j++) {
                if (uf[j] < 0)
                    continue;
                const char *src = (const char *)acts->buf + uf[j] * as[0] + u * as[1];
                float *dst = (float *)maps->buf + (u * k + j) * h * w;
                for (Py_ssize_t y = 0; y < h; y++)
                    for (Py_ssize_t x = 0; x < w; x++)
                        dst[y * w + x] = *(const float *)(src + y * as[2] + x * as[3]);
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (nan) {
        PyErr_SetString(PyExc_ValueError, "top_images(): maxima hold NaN (check the activations first)");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    while (n-- > 0)
        PyBuffer_Release(&v[n]);
    return result;
}

static PyMethodDef methods[] = {
    {"push_values", (PyCFunction)(void (*)(void))push_values, METH_VARARGS | METH_KEYWORDS,
     push_values_doc},
    {"top_images", (PyCFunction)(void (*)(void))top_images, METH_VARARGS | METH_KEYWORDS,
     top_images_doc},
    {"openmp", openmp, METH_NOARGS, openmp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_topvalues",
    "The exact threshold state of the pass: the largest values of every unit (see "
    "netdissect.stats.quantile).",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__topvalues(void) { return PyModuleDef_Init(&module); }
