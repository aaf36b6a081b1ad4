/*
 * netdissect.report._overlay: the report's overlay indices (tiles.compose_overlays) in one
 * pass per image.
 *
 * The numpy code (tiles.compose_overlays_numpy, the reference) streams the whole batch of
 * regions through memory once per shifted OR of its square erosions and dilations, about forty
 * times; here each image's masks (a few kilobytes) stay in cache while the same shifted ANDs
 * and ORs run over them, in loops the compiler vectorizes. The rules are the reference's, pixel
 * for pixel (tests/test_report_overlay.py compares the two): square windows, pixels outside the
 * image count as outside the region for both erosion and dilation.
 *
 * compose(regions, labels, out, radius, codes): regions and labels are C-contiguous bool
 * (B, H, W) arrays, out a writable uint8 (B, H, W) array, codes the eight palette indices
 * (DIM, FILL, CONTOUR, SPECK, LABEL, LABEL_ALT, LABEL_IN, LABEL_ALT_IN) as bytes. The GIL is
 * released around the arithmetic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { DIM, FILL, CONTOUR, SPECK, LABEL, LABEL_ALT, LABEL_IN, LABEL_ALT_IN, NCODES };

/* dst = src combined (AND when and, else OR) over the window [x - r, x + r] of each row;
 * outside the row counts as 0 (so AND zeroes the r columns at each side). */
static void window_rows(const uint8_t *restrict src, uint8_t *restrict dst, Py_ssize_t h,
                        Py_ssize_t w, Py_ssize_t r, int and)
{
    memcpy(dst, src, (size_t)(h * w));
    Py_ssize_t reach = r < w - 1 ? r : w - 1;
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint8_t *restrict s = src + y * w;
        uint8_t *restrict d = dst + y * w;
        for (Py_ssize_t k = 1; k <= reach; k++) {
            if (and) {
                for (Py_ssize_t x = 0; x < w - k; x++)
                    d[x] &= s[x + k];
                for (Py_ssize_t x = k; x < w; x++)
                    d[x] &= s[x - k];
            } else {
                for (Py_ssize_t x = 0; x < w - k; x++)
                    d[x] |= s[x + k];
                for (Py_ssize_t x = k; x < w; x++)
                    d[x] |= s[x - k];
            }
        }
        if (and && r > 0) {
            Py_ssize_t edge = r < w ? r : w;
            memset(d, 0, (size_t)edge);
            memset(d + w - edge, 0, (size_t)edge);
        }
    }
}

/* The same over the window [y - r, y + r] of each column. */
static void window_cols(const uint8_t *restrict src, uint8_t *restrict dst, Py_ssize_t h,
                        Py_ssize_t w, Py_ssize_t r, int and)
{
    memcpy(dst, src, (size_t)(h * w));
    Py_ssize_t reach = r < h - 1 ? r : h - 1;
    for (Py_ssize_t k = 1; k <= reach; k++) {
        for (Py_ssize_t y = 0; y + k < h; y++) {
            uint8_t *restrict up = dst + y * w, *restrict down = dst + (y + k) * w;
            const uint8_t *restrict s_up = src + y * w, *restrict s_down = src + (y + k) * w;
            if (and) {
                for (Py_ssize_t x = 0; x < w; x++)
                    up[x] &= s_down[x];
                for (Py_ssize_t x = 0; x < w; x++)
                    down[x] &= s_up[x];
            } else {
                for (Py_ssize_t x = 0; x < w; x++)
                    up[x] |= s_down[x];
                for (Py_ssize_t x = 0; x < w; x++)
                    down[x] |= s_up[x];
            }
        }
    }
    if (and && r > 0) {
        Py_ssize_t edge = r < h ? r : h;
        memset(dst, 0, (size_t)(edge * w));
        memset(dst + (h - edge) * w, 0, (size_t)(edge * w));
    }
}

static void window2d(const uint8_t *src, uint8_t *tmp, uint8_t *dst, Py_ssize_t h, Py_ssize_t w,
                     Py_ssize_t r, int and)
{
    window_rows(src, tmp, h, w, r, and);
    window_cols(tmp, dst, h, w, r, and);
}

/* a where mask is 0xFF, else b (mask: 0x00 or 0xFF), without a branch, so loops vectorize */
static inline uint8_t pick(uint8_t mask, uint8_t a, uint8_t b)
{
    return (uint8_t)((a & mask) | (b & (uint8_t)~mask));
}

static void compose_one(const uint8_t *restrict region, const uint8_t *restrict label,
                        uint8_t *restrict out, Py_ssize_t h, Py_ssize_t w, Py_ssize_t radius,
                        const uint8_t *codes, uint8_t *scratch, const uint8_t *dashes)
{
    Py_ssize_t n = h * w;
    uint8_t *tmp = scratch, *eroded = scratch + n, *restrict large = scratch + 2 * n,
            *restrict near = scratch + 3 * n, *restrict around = scratch + 4 * n,
            *restrict frame = scratch + 5 * n;
    const uint8_t dim = codes[DIM], fill = codes[FILL], contour = codes[CONTOUR],
                  speck = codes[SPECK], lab = codes[LABEL], alt = codes[LABEL_ALT],
                  lab_in = codes[LABEL_IN], alt_in = codes[LABEL_ALT_IN];
    /* near a part that survives an opening of radius r: within r + 1 of the eroded region */
    window2d(region, tmp, eroded, h, w, radius, 1);
    window2d(eroded, tmp, large, h, w, 2 * radius + 1, 0);
    window2d(region, tmp, near, h, w, 1, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t in = (uint8_t)-region[i], big = (uint8_t)-large[i], ring = (uint8_t)-(near[i] & large[i]);
        out[i] = pick(in, pick(big, fill, speck), pick(ring, contour, dim));
    }
    uint8_t any = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        any |= label[i];
    if (!any)
        return;
    /* just outside the label's region; where the region meets the image's edge, on the edge */
    window2d(label, tmp, around, h, w, 1, 0);
    for (Py_ssize_t y = 0; y < h; y++) {
        uint8_t *restrict f = frame;
        memset(f, y == 0 || y == h - 1, (size_t)w);
        f[0] = f[w - 1] = 1;
        const uint8_t *restrict dash = dashes + y;      /* ((y + x) / 3) % 2 == 0 at x */
        const uint8_t *restrict r = region + y * w, *restrict l = label + y * w,
                      *restrict a = around + y * w;
        uint8_t *restrict o = out + y * w;
        for (Py_ssize_t x = 0; x < w; x++) {
            uint8_t in = (uint8_t)-r[x], edge = (uint8_t)-pick((uint8_t)-l[x], f[x], a[x]);
            uint8_t drawn = pick((uint8_t)-dash[x], pick(in, lab_in, lab), pick(in, alt_in, alt));
            o[x] = pick(edge, drawn, o[x]);
        }
    }
}

static int get_cube(PyObject *obj, const char *arg, const char *format, int writable, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (strcmp(f, format) != 0 || view->itemsize != 1 || view->ndim != 3) {
        PyErr_Format(PyExc_ValueError,
                     "compose(): argument '%s' must be a 3-D array of format '%s' (%s), got format "
                     "'%s' with %d dimension(s)", arg, format, format[0] == '?' ? "bool" : "uint8",
                     f, view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    if (!PyBuffer_IsContiguous(view, 'C')) {
        PyErr_Format(PyExc_ValueError, "compose(): argument '%s' must be C-contiguous "
                     "(numpy.ascontiguousarray)", arg);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(compose_doc,
"compose(regions, labels, out, radius, codes)\n\n"
"Overlay palette indices of (B, H, W) bool regions and labels into uint8 out (see\n"
"netdissect.report.tiles.compose_overlays).");

static PyObject *compose(PyObject *self, PyObject *args)
{
    PyObject *reg_obj, *lab_obj, *out_obj;
    Py_ssize_t radius;
    const char *codes;
    Py_ssize_t ncodes;
    if (!PyArg_ParseTuple(args, "OOOny#:compose", &reg_obj, &lab_obj, &out_obj, &radius, &codes,
                          &ncodes))
        return NULL;
    if (radius < 0 || ncodes != NCODES) {
        PyErr_Format(PyExc_ValueError, "compose(): radius must be >= 0 and codes hold %d bytes, "
                     "got radius %zd and %zd bytes", NCODES, radius, ncodes);
        return NULL;
    }
    Py_buffer reg, lab, out;
    if (get_cube(reg_obj, "regions", "?", 0, &reg) < 0)
        return NULL;
    if (get_cube(lab_obj, "labels", "?", 0, &lab) < 0) {
        PyBuffer_Release(&reg);
        return NULL;
    }
    if (get_cube(out_obj, "out", "B", 1, &out) < 0) {
        PyBuffer_Release(&reg);
        PyBuffer_Release(&lab);
        return NULL;
    }
    PyObject *result = NULL;
    for (int a = 0; a < 3; a++) {
        if (lab.shape[a] != reg.shape[a] || out.shape[a] != reg.shape[a]) {
            PyErr_SetString(PyExc_ValueError, "compose(): regions, labels and out differ in shape");
            goto done;
        }
    }
    Py_ssize_t b = reg.shape[0], h = reg.shape[1], w = reg.shape[2], n = h * w;
    /* five planes, a frame row and the dash pattern along y + x */
    uint8_t *scratch = n > 0 ? malloc((size_t)(6 * n + h + w)) : NULL;
    if (n > 0 && scratch == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (n > 0) {
        Py_BEGIN_ALLOW_THREADS
        uint8_t *dashes = scratch + 6 * n;
        for (Py_ssize_t t = 0; t < h + w; t++)
            dashes[t] = (t / 3) % 2 == 0;
        for (Py_ssize_t i = 0; i < b; i++)
            compose_one((const uint8_t *)reg.buf + i * n, (const uint8_t *)lab.buf + i * n,
                        (uint8_t *)out.buf + i * n, h, w, radius, (const uint8_t *)codes, scratch,
                        dashes);
        Py_END_ALLOW_THREADS
    }
    free(scratch);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&reg);
    PyBuffer_Release(&lab);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"compose", compose, METH_VARARGS, compose_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_overlay",
    "The report's overlay indices in one pass per image (see netdissect.report.tiles).",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__overlay(void) { return PyModuleDef_Init(&module); }
