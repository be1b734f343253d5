// Tiling kernel: decoded RGB region + tile rectangles -> normalized NCHW batch
// and per-tile tissue counts, in one pass (DESIGN.md, "CUDA tiling kernels").
//
// Same contract as engines/kernels/reference.py:
//   * each tile (x, y, w, h) inside the uint8 HWC region is resized to S x S
//     with Pillow's BILINEAR filter: a triangle filter whose support is
//     max(scale, 1) source pixels, pixel centres at +0.5, window clipped to
//     the tile, weights normalized to sum 1, separable (rows x columns);
//   * the value v (0..255) becomes (v / 255 - mean[c]) / std[c], written as
//     out[n][c][i][j] in float32 or float16;
//   * a resized pixel counts as tissue when max(RGB) - min(RGB) exceeds
//     tissue_threshold; tissue_count[n] accumulates them (the launcher
//     divides by S * S).
//
// Launch: grid (ceil(S*S / blockDim.x), N), blockDim.x a multiple of 32.
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float triangle(float x) {
    x = fabsf(x);
    return x < 1.0f ? 1.0f - x : 0.0f;
}

__device__ __forceinline__ void store(float* out, size_t i, float v) { out[i] = v; }
__device__ __forceinline__ void store(__half* out, size_t i, float v) { out[i] = __float2half_rn(v); }

// Window [lo, hi) of source pixels feeding output pixel `o` along one axis.
__device__ __forceinline__ void window(int o, int in_len, float scale, float support,
                                       float* centre, int* lo, int* hi) {
    float c = (o + 0.5f) * scale;
    int a = (int)floorf(c - support + 0.5f);
    int b = (int)floorf(c + support + 0.5f);
    *centre = c;
    *lo = a < 0 ? 0 : a;
    *hi = b > in_len ? in_len : b;
}

template <typename T>
__device__ void tile_batch(const uint8_t* __restrict__ region, int region_width,
                           const int* __restrict__ rects, int n_tiles, int size,
                           const float* __restrict__ mean, const float* __restrict__ std_,
                           float tissue_threshold, T* __restrict__ out,
                           int* __restrict__ tissue_count) {
    __shared__ int block_tissue;
    const int n = blockIdx.y;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) block_tissue = 0;
    __syncthreads();
    int is_tissue = 0;
    if (n < n_tiles && p < size * size) {
        const int tx = rects[4 * n], ty = rects[4 * n + 1];
        const int tw = rects[4 * n + 2], th = rects[4 * n + 3];
        const int i = p / size, j = p % size;
        const float sy = (float)th / size, sx = (float)tw / size;
        const float fy = fmaxf(sy, 1.0f), fx = fmaxf(sx, 1.0f);
        float cy, cx;
        int y0, y1, x0, x1;
        window(i, th, sy, fy, &cy, &y0, &y1);
        window(j, tw, sx, fx, &cx, &x0, &x1);
        float wy_sum = 0.0f, wx_sum = 0.0f;
        for (int x = x0; x < x1; ++x) wx_sum += triangle((x + 0.5f - cx) / fx);
        float acc[3] = {0.0f, 0.0f, 0.0f};
        for (int y = y0; y < y1; ++y) {
            const float wy = triangle((y + 0.5f - cy) / fy);
            if (wy == 0.0f) continue;
            wy_sum += wy;
            const uint8_t* row = region + ((size_t)(ty + y) * region_width + tx) * 3;
            float r[3] = {0.0f, 0.0f, 0.0f};
            for (int x = x0; x < x1; ++x) {
                const float wx = triangle((x + 0.5f - cx) / fx);
                r[0] += wx * row[3 * x];
                r[1] += wx * row[3 * x + 1];
                r[2] += wx * row[3 * x + 2];
            }
            acc[0] += wy * r[0];
            acc[1] += wy * r[1];
            acc[2] += wy * r[2];
        }
        const float norm = 1.0f / (wy_sum * wx_sum);
        float v[3];
        for (int c = 0; c < 3; ++c) v[c] = acc[c] * norm;
        const float hi = fmaxf(fmaxf(v[0], v[1]), v[2]);
        const float lo = fminf(fminf(v[0], v[1]), v[2]);
        is_tissue = (hi - lo) > tissue_threshold;
        const size_t plane = (size_t)size * size;
        const size_t base = (size_t)n * 3 * plane + p;
        for (int c = 0; c < 3; ++c)
            store(out, base + c * plane, (v[c] * (1.0f / 255.0f) - mean[c]) / std_[c]);
    }
    // Warp vote, then one shared and one global atomic per block.
    const unsigned votes = __ballot_sync(0xffffffffu, is_tissue);
    if ((threadIdx.x & 31) == 0 && votes) atomicAdd(&block_tissue, __popc(votes));
    __syncthreads();
    if (threadIdx.x == 0 && block_tissue && n < n_tiles) atomicAdd(&tissue_count[n], block_tissue);
}

}  // namespace

extern "C" __global__ void tile_batch_f32(const uint8_t* region, int region_width,
                                          const int* rects, int n_tiles, int size,
                                          const float* mean, const float* std_,
                                          float tissue_threshold, float* out,
                                          int* tissue_count) {
    tile_batch<float>(region, region_width, rects, n_tiles, size, mean, std_,
                      tissue_threshold, out, tissue_count);
}

extern "C" __global__ void tile_batch_f16(const uint8_t* region, int region_width,
                                          const int* rects, int n_tiles, int size,
                                          const float* mean, const float* std_,
                                          float tissue_threshold, __half* out,
                                          int* tissue_count) {
    tile_batch<__half>(region, region_width, rects, n_tiles, size, mean, std_,
                       tissue_threshold, out, tissue_count);
}
