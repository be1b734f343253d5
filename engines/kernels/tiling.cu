// Tiling kernel: decoded RGB region + tile rectangles -> normalized NCHW batch
// and per-tile tissue counts, in one pass (DESIGN.md, "CUDA tiling kernels").
//
// Same contract as engines/kernels/reference.py:
//   * each tile (x, y, w, h) inside the uint8 HWC region is resized to S x S
//     with Pillow's BILINEAR filter: a triangle filter whose support is
//     max(scale, 1) source pixels, pixel centres at +0.5, window clipped to
//     the tile, weights normalized to sum 1, separable (rows, then columns);
//   * the value v (0..255) becomes (v - 255 mean[c]) / (255 std[c]), written
//     as out[n][c][i][j] in float32 or float16;
//   * a resized pixel counts as tissue when max(RGB) - min(RGB) exceeds
//     tissue_threshold; tissue_count[n] accumulates them (the launcher
//     divides by S * S).
// The arithmetic follows the reference operation for operation (weights in
// double, then float; the vertical pass, then the horizontal one; products
// and sums rounded separately, never fused), so the host build below gives
// the reference's bits and the device build gives the same.
//
// Layout of the work: one block per (band of `band_rows` output rows, tile).
// The block first computes the filter taps of its tile's S columns and of its
// band's rows once, into shared memory; then it copies the band's source rows
// (the tile's columns only) from the region into shared memory, consecutive
// threads reading consecutive bytes; then each thread produces output pixels
// (consecutive threads -> consecutive j, so the stores are coalesced) from the
// shared copy. A band whose source rows exceed `stage_bytes` (a very wide or
// very down-scaled tile) reads the region in global memory instead; the result
// is the same. Bytes moved and the expected share of HBM bandwidth:
// docs/tiling_kernel.md.
//
// The per-pixel work (`tile_pixel`), the taps (`axis_taps`) and the staging
// (`stage_rows`) are __host__ __device__ functions; the __global__ kernels are
// thin wrappers (indices, vote, store). Built with -DTILING_HOST_LIBRARY the
// file instead exports `tiling_host_run`, a C loop that plays every block on
// the CPU with the same functions (engines/kernels/host.py loads it).
//
// Launch (engines/kernels/plan.py): grid (ceil(S / band_rows), N), 256
// threads (a multiple of 32, at most the __launch_bounds__), dynamic shared
// memory layout(size, taps, band_rows, stage_bytes).total bytes.
#include <cuda_fp16.h>
#include <stddef.h>
#include <stdint.h>

namespace {

// One output index's window along one axis: source pixels [lo, lo + n).
struct Taps {
    int lo;
    int n;
};

// Products and sums rounded separately on both sides (no fused multiply-add),
// as NumPy computes them.
__host__ __device__ inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

__host__ __device__ inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

__host__ __device__ inline double dmul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);  // never fused into the subtractions that use the centre
#else
    return a * b;
#endif
}

__host__ __device__ inline double triangle(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Window and normalized weights of output index `o` (of out_len) over in_len
// source pixels: Pillow's BILINEAR, computed in double as the reference does.
// Writes at most `max_taps` weights; returns the window.
__host__ __device__ inline Taps axis_taps(int o, int in_len, int out_len, int max_taps, float* w) {
    const double scale = (double)in_len / out_len;
    const double support = scale > 1.0 ? scale : 1.0;
    const double centre = dmul_rn(o + 0.5, scale);
    int lo = (int)floor(centre - support + 0.5);
    int hi = (int)floor(centre + support + 0.5);
    lo = lo < 0 ? 0 : lo;
    hi = hi > in_len ? in_len : hi;
    if (hi - lo > max_taps) hi = lo + max_taps;  // the launcher sizes max_taps so this never cuts
    double sum = 0.0;
    for (int x = lo; x < hi; ++x) sum += triangle((x + 0.5 - centre) / support);
    for (int x = lo; x < hi; ++x) w[x - lo] = (float)(triangle((x + 0.5 - centre) / support) / sum);
    const int n = hi - lo;
    return Taps{lo, n};
}

// Bytes of a tile as the pixel function reads them: `rows` points at source
// row `first_row` of the tile (its column 0), rows `pitch` bytes apart.
struct Source {
    const uint8_t* rows;
    size_t pitch;
    int first_row;
    __host__ __device__ inline float at(int y, int x, int c) const {
        return (float)rows[(size_t)(y - first_row) * pitch + 3 * x + c];
    }
};

struct Normalize {
    float mean255[3];  // 255 * mean, in float32
    float inv[3];      // 1 / (255 * std), in float32
    float tissue_threshold;
};

__host__ __device__ inline Normalize make_normalize(const float* mean, const float* std_, float threshold) {
    Normalize z;
    for (int c = 0; c < 3; ++c) {
        z.mean255[c] = mul_rn(mean[c], 255.0f);
        z.inv[c] = 1.0f / mul_rn(std_[c], 255.0f);
    }
    z.tissue_threshold = threshold;
    return z;
}

// One output pixel: accumulate its window (vertical pass, then horizontal),
// test tissue on the 0..255 values, normalize into v. Returns 1 for tissue.
__host__ __device__ inline int tile_pixel(const Source& src, Taps ty, const float* wy, Taps tx,
                                          const float* wx, const Normalize& z, float v[3]) {
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (int kx = 0; kx < tx.n; ++kx) {
        const int x = tx.lo + kx;
        float col[3];
        for (int c = 0; c < 3; ++c) col[c] = mul_rn(src.at(ty.lo, x, c), wy[0]);
        for (int ky = 1; ky < ty.n; ++ky)
            for (int c = 0; c < 3; ++c) col[c] = add_rn(col[c], mul_rn(src.at(ty.lo + ky, x, c), wy[ky]));
        for (int c = 0; c < 3; ++c) acc[c] = kx == 0 ? mul_rn(col[c], wx[0]) : add_rn(acc[c], mul_rn(col[c], wx[kx]));
    }
    const float hi = fmaxf(fmaxf(acc[0], acc[1]), acc[2]);
    const float lo = fminf(fminf(acc[0], acc[1]), acc[2]);
    for (int c = 0; c < 3; ++c) v[c] = mul_rn(acc[c] - z.mean255[c], z.inv[c]);
    return (hi - lo) > z.tissue_threshold;
}

// Shared-memory layout of one block, in bytes from the start.
struct Layout {
    size_t wx, tx, wy, ty, stage, total;
};

__host__ __device__ inline Layout layout(int size, int taps, int band_rows, int stage_bytes) {
    Layout l;
    l.wx = 0;
    l.tx = l.wx + sizeof(float) * (size_t)size * taps;
    l.wy = l.tx + sizeof(Taps) * (size_t)size;
    l.ty = l.wy + sizeof(float) * (size_t)band_rows * taps;
    l.stage = l.ty + sizeof(Taps) * (size_t)band_rows;
    l.total = l.stage + (size_t)stage_bytes;
    return l;
}

// Taps of every column of the tile and of the band's rows, threads [t, t + nt).
__host__ __device__ inline void band_taps(int t, int nt, int tw, int th, int size, int taps, int row0,
                                          int band_rows, float* wx, Taps* tx, float* wy, Taps* ty) {
    for (int j = t; j < size; j += nt) tx[j] = axis_taps(j, tw, size, taps, wx + (size_t)j * taps);
    for (int r = t; r < band_rows; r += nt)
        if (row0 + r < size) ty[r] = axis_taps(row0 + r, th, size, taps, wy + (size_t)r * taps);
}

// Source rows [first, last) the band reads, from its rows' windows.
__host__ __device__ inline void band_rows_span(const Taps* ty, int rows, int* first, int* last) {
    *first = ty[0].lo;
    *last = ty[rows - 1].lo + ty[rows - 1].n;
}

// Copy source rows [first, last) of the tile, its 3 * tw bytes each, into
// `stage`: consecutive threads take consecutive bytes (coalesced reads).
__host__ __device__ inline void stage_rows(int t, int nt, const uint8_t* tile, size_t pitch, int tw,
                                           int first, int last, uint8_t* stage) {
    const int row_bytes = 3 * tw;
    const int total = (last - first) * row_bytes;  // <= stage_bytes: the caller checked
    for (int b = t; b < total; b += nt) {
        const int r = b / row_bytes;
        stage[b] = tile[(size_t)(first + r) * pitch + (b - r * row_bytes)];
    }
}

__host__ __device__ inline void store(float* out, size_t i, float v) { out[i] = v; }
__host__ __device__ inline void store(__half* out, size_t i, float v) { out[i] = __float2half_rn(v); }

#ifndef TILING_HOST_LIBRARY

template <typename T>
__device__ void tile_band(const uint8_t* __restrict__ region, int region_width,
                          const int* __restrict__ rects, int n_tiles, int size, const float* __restrict__ mean,
                          const float* __restrict__ std_, float tissue_threshold, int taps, int band_rows,
                          int stage_bytes, T* __restrict__ out, int* __restrict__ tissue_count) {
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ int block_tissue;
    const int n = blockIdx.y, row0 = blockIdx.x * band_rows;
    if (n >= n_tiles || row0 >= size) return;  // uniform per block
    const int tx0 = rects[4 * n], ty0 = rects[4 * n + 1], tw = rects[4 * n + 2], th = rects[4 * n + 3];
    const int rows = min(band_rows, size - row0);
    const Layout l = layout(size, taps, band_rows, stage_bytes);
    float* wx = (float*)(smem + l.wx);
    Taps* tx = (Taps*)(smem + l.tx);
    float* wy = (float*)(smem + l.wy);
    Taps* ty = (Taps*)(smem + l.ty);
    if (threadIdx.x == 0) block_tissue = 0;
    band_taps(threadIdx.x, blockDim.x, tw, th, size, taps, row0, band_rows, wx, tx, wy, ty);
    __syncthreads();
    int first, last;
    band_rows_span(ty, rows, &first, &last);
    const size_t pitch = (size_t)region_width * 3;
    const uint8_t* tile = region + (size_t)ty0 * pitch + (size_t)tx0 * 3;
    Source src{tile, pitch, 0};
    if ((size_t)(last - first) * 3 * tw <= (size_t)stage_bytes) {
        stage_rows(threadIdx.x, blockDim.x, tile, pitch, tw, first, last, smem + l.stage);
        src = Source{smem + l.stage, (size_t)3 * tw, first};
        __syncthreads();
    }
    const Normalize z = make_normalize(mean, std_, tissue_threshold);
    const size_t plane = (size_t)size * size;
    int warp_tissue = 0;
    for (int base = 0; base < rows * size; base += blockDim.x) {  // same trip count for the whole block
        const int p = base + threadIdx.x;
        int is_tissue = 0;
        if (p < rows * size) {
            const int r = p / size, j = p % size;
            float v[3];
            is_tissue = tile_pixel(src, ty[r], wy + (size_t)r * taps, tx[j], wx + (size_t)j * taps, z, v);
            const size_t at = (size_t)n * 3 * plane + (size_t)(row0 + r) * size + j;
            for (int c = 0; c < 3; ++c) store(out, at + c * plane, v[c]);
        }
        warp_tissue += __popc(__ballot_sync(0xffffffffu, is_tissue));
    }
    if ((threadIdx.x & 31) == 0 && warp_tissue) atomicAdd(&block_tissue, warp_tissue);
    __syncthreads();
    if (threadIdx.x == 0 && block_tissue) atomicAdd(&tissue_count[n], block_tissue);
}

#endif  // TILING_HOST_LIBRARY

}  // namespace

#ifndef TILING_HOST_LIBRARY

extern "C" __global__ void __launch_bounds__(256, 4) tile_batch_f32(const uint8_t* region, int region_width, const int* rects, int n_tiles,
                                          int size, const float* mean, const float* std_, float tissue_threshold,
                                          int taps, int band_rows, int stage_bytes, float* out,
                                          int* tissue_count) {
    tile_band<float>(region, region_width, rects, n_tiles, size, mean, std_, tissue_threshold, taps, band_rows,
                     stage_bytes, out, tissue_count);
}

extern "C" __global__ void __launch_bounds__(256, 4) tile_batch_f16(const uint8_t* region, int region_width, const int* rects, int n_tiles,
                                          int size, const float* mean, const float* std_, float tissue_threshold,
                                          int taps, int band_rows, int stage_bytes, __half* out,
                                          int* tissue_count) {
    tile_band<__half>(region, region_width, rects, n_tiles, size, mean, std_, tissue_threshold, taps, band_rows,
                      stage_bytes, out, tissue_count);
}

#else  // TILING_HOST_LIBRARY: the same blocks, played one after another on the CPU

#include <stdlib.h>

// Plays every block of the launch (tile, band) on the CPU with the kernel's
// functions: taps, staging (when the band fits `stage_bytes`), every pixel.
// `half_out` selects __half output; `bands` receives how many bands there were
// and how many of them were staged in shared memory. Returns 0, or -1 if
// memory ran out.
extern "C" int tiling_host_run(const uint8_t* region, int region_width, const int* rects, int n_tiles, int size,
                               const float* mean, const float* std_, float tissue_threshold, int taps,
                               int band_rows, int stage_bytes, int half_out, void* out, int* tissue_count,
                               int bands[2]) {
    const Layout l = layout(size, taps, band_rows, stage_bytes);
    uint8_t* smem = (uint8_t*)malloc(l.total);
    if (smem == NULL) return -1;
    float* wx = (float*)(smem + l.wx);
    Taps* tx = (Taps*)(smem + l.tx);
    float* wy = (float*)(smem + l.wy);
    Taps* ty = (Taps*)(smem + l.ty);
    const Normalize z = make_normalize(mean, std_, tissue_threshold);
    const size_t pitch = (size_t)region_width * 3, plane = (size_t)size * size;
    bands[0] = bands[1] = 0;
    for (int n = 0; n < n_tiles; ++n) {
        const int tw = rects[4 * n + 2], th = rects[4 * n + 3];
        const uint8_t* tile = region + (size_t)rects[4 * n + 1] * pitch + (size_t)rects[4 * n] * 3;
        tissue_count[n] = 0;
        for (int row0 = 0; row0 < size; row0 += band_rows) {
            const int rows = band_rows < size - row0 ? band_rows : size - row0;
            band_taps(0, 1, tw, th, size, taps, row0, band_rows, wx, tx, wy, ty);
            int first, last;
            band_rows_span(ty, rows, &first, &last);
            Source src{tile, pitch, 0};
            ++bands[0];
            if ((size_t)(last - first) * 3 * tw <= (size_t)stage_bytes) {
                stage_rows(0, 1, tile, pitch, tw, first, last, smem + l.stage);
                src = Source{smem + l.stage, (size_t)3 * tw, first};
                ++bands[1];
            }
            for (int p = 0; p < rows * size; ++p) {
                const int r = p / size, j = p % size;
                float v[3];
                tissue_count[n] += tile_pixel(src, ty[r], wy + (size_t)r * taps, tx[j], wx + (size_t)j * taps, z, v);
                const size_t at = (size_t)n * 3 * plane + (size_t)(row0 + r) * size + j;
                for (int c = 0; c < 3; ++c) {
                    if (half_out) store((__half*)out, at + c * plane, v[c]);
                    else store((float*)out, at + c * plane, v[c]);
                }
            }
        }
    }
    free(smem);
    return 0;
}

#endif  // TILING_HOST_LIBRARY
