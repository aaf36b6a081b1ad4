/*
 * Fused bilinear upsample + threshold + count, for the final IoU tally.
 *
 * For each (unit, image) pair: upsample the native map to the segmentation size with the
 * arithmetic of torch.nn.functional.interpolate(mode='bilinear', align_corners=False) on the
 * CPU (source index scale * (i + 0.5) - 0.5 fused, weights clamped, the 2-D blend as nested
 * fused multiply-adds), compare with the unit's threshold, and count the active pixels per
 * label combination of the image. Output rows whose two source rows lie below the threshold
 * are skipped: a bilinear value never exceeds its sources.
 *
 * Python checks at run time that upsample_bilinear() equals F.interpolate bit for bit on the
 * shapes in use, and falls back to torch when it does not. Loaded with ctypes (which releases
 * the GIL, so slices of pairs run in parallel threads).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static void source_indices(int64_t in, int64_t out, int64_t *i0, int64_t *i1, float *l0, float *l1)
{
    float scale = (float)in / (float)out;
    for (int64_t i = 0; i < out; i++) {
        float real = fmaf(scale, (float)i + 0.5f, -0.5f);
        if (real < 0.0f)
            real = 0.0f;
        int64_t lo = (int64_t)real;
        i0[i] = lo;
        i1[i] = lo + (lo < in - 1 ? 1 : 0);
        float lam = real - (float)lo;
        lam = lam < 0.0f ? 0.0f : (lam > 1.0f ? 1.0f : lam);
        l1[i] = lam;
        l0[i] = 1.0f - lam;
    }
}

static inline float blend(const float *m, int64_t w, int64_t ya, int64_t yb, float wy0, float wy1,
                          int64_t xa, int64_t xb, float wx0, float wx1)
{
    float top = fmaf(wx0, m[ya * w + xa], wx1 * m[ya * w + xb]);
    float bottom = fmaf(wx0, m[yb * w + xa], wx1 * m[yb * w + xb]);
    return fmaf(wy0, top, wy1 * bottom);
}

typedef struct {
    int64_t *y0, *y1, *x0, *x1;
    float *ly0, *ly1, *lx0, *lx1;
} grid_t;

static int make_grid(grid_t *g, int64_t h, int64_t w, int64_t sh, int64_t sw)
{
    g->y0 = malloc(sizeof(int64_t) * sh * 2);
    g->x0 = malloc(sizeof(int64_t) * sw * 2);
    g->ly0 = malloc(sizeof(float) * sh * 2);
    g->lx0 = malloc(sizeof(float) * sw * 2);
    if (!g->y0 || !g->x0 || !g->ly0 || !g->lx0)
        return -1;
    g->y1 = g->y0 + sh;
    g->x1 = g->x0 + sw;
    g->ly1 = g->ly0 + sh;
    g->lx1 = g->lx0 + sw;
    source_indices(h, sh, g->y0, g->y1, g->ly0, g->ly1);
    source_indices(w, sw, g->x0, g->x1, g->lx0, g->lx1);
    return 0;
}

static void free_grid(grid_t *g)
{
    free(g->y0);
    free(g->x0);
    free(g->ly0);
    free(g->lx0);
}

/* out: (p, sh, sw) upsampled maps; for checking against F.interpolate. */
int upsample_bilinear(const float *maps, int64_t p, int64_t h, int64_t w, int64_t sh, int64_t sw,
                      float *out)
{
    grid_t g;
    if (make_grid(&g, h, w, sh, sw))
        return -1;
    for (int64_t k = 0; k < p; k++) {
        const float *m = maps + k * h * w;
        for (int64_t i = 0; i < sh; i++)
            for (int64_t j = 0; j < sw; j++)
                out[(k * sh + i) * sw + j] = blend(m, w, g.y0[i], g.y1[i], g.ly0[i], g.ly1[i],
                                                   g.x0[j], g.x1[j], g.lx0[j], g.lx1[j]);
    }
    free_grid(&g);
    return 0;
}

/*
 * Pairs [start, stop): per_combo[k * max_combos + combo] += active pixels of pair k with that
 * combination id; act[k] = active pixels of pair k. combo_ids: (n_images, sh * sw) int32,
 * image[k] indexes its rows.
 */
int tally_bilinear(const float *maps, int64_t h, int64_t w, const float *thr, const int64_t *image,
                   const int32_t *combo_ids, int64_t sh, int64_t sw, int64_t max_combos,
                   int64_t *per_combo, int64_t *act, int64_t start, int64_t stop)
{
    grid_t g;
    if (make_grid(&g, h, w, sh, sw))
        return -1;
    float *rowmax = malloc(sizeof(float) * h);
    if (!rowmax) {
        free_grid(&g);
        return -1;
    }
    for (int64_t k = start; k < stop; k++) {
        const float *m = maps + k * h * w;
        const float t = thr[k];
        const int32_t *ids = combo_ids + image[k] * sh * sw;
        int64_t *counts = per_combo + k * max_combos;
        int64_t active = 0;
        for (int64_t r = 0; r < h; r++) {
            float mx = m[r * w];
            for (int64_t c = 1; c < w; c++)
                if (m[r * w + c] > mx)
                    mx = m[r * w + c];
            rowmax[r] = mx;
        }
        for (int64_t i = 0; i < sh; i++) {
            int64_t ya = g.y0[i], yb = g.y1[i];
            if (!(rowmax[ya] > t) && !(rowmax[yb] > t))
                continue;
            for (int64_t j = 0; j < sw; j++) {
                float v = blend(m, w, ya, yb, g.ly0[i], g.ly1[i], g.x0[j], g.x1[j], g.lx0[j], g.lx1[j]);
                if (v > t) {
                    counts[ids[i * sw + j]]++;
                    active++;
                }
            }
        }
        act[k] = active;
    }
    free(rowmax);
    free_grid(&g);
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tallykernel",
                                    "Fused upsample-threshold-count kernel (used through ctypes).",
                                    -1, NULL};

PyMODINIT_FUNC PyInit__tallykernel(void) { return PyModule_Create(&module); }
