/*
 * Florence-2's BART decoder at one position, for B sequences, in one call: the decode loop's inner step.
 *
 * Why it exists: a base-size step reads 89 MB of int8 weights through 37 matrix-vector products. Through
 * fbgemm each product is its own call, with its own activation quantization, packing and OpenMP region,
 * and a chain of them streamed at 26-27 GB/s on a host that streams 50+ GB/s (docs/profile.md, section 5).
 * Here the whole step is one call on a fixed team of threads: every thread streams only its own rows of
 * each matrix, laid out in the order it reads them, and the threads meet at a spin barrier between
 * products instead of forking a parallel region for each.
 *
 * The maths is the served int8 recipe's: each activation row is quantized (asymmetric uint8, its own
 * scale), multiplied by the int8 weights with int32 accumulation, and rescaled by the weight scales.
 * Two kernels: AVX-512 VNNI (vpdpbusd, full 8-bit activations) and AVX2 (vpmaddubsw, 7-bit activations so
 * that the int16 pair sums cannot saturate). Everything else (LayerNorm, attention, GELU) is float32.
 *
 * Weights are packed by `native_step.py`: each matrix padded to 64-row blocks and a multiple of 4 columns,
 * then stored block by block as [columns / 4][4 x 16 rows][4 bytes], so one 64-byte load holds 4 columns
 * of 16 rows, which is vpdpbusd's operand shape.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_ROWS 64
#define MAX_THREADS 64
#define WORKER_SPIN_NS 200000 /* idle workers spin this long, then sleep: a decode calls every few hundred µs */
#define ISA_NONE 0
#define ISA_AVX2 1
#define ISA_AVX512_VNNI 2

typedef struct {
    int32_t in_features, out_features, in_padded, out_padded;
    const int8_t *weights;
    const float *scale;        /* out_padded, 0 in padding rows */
    const int32_t *row_sum;    /* out_padded: the sum of each row's int8 weights */
    const int32_t *zero_point; /* out_padded */
    const float *bias;         /* out_padded, or NULL */
} fl_linear;

typedef struct {
    fl_linear linear[6];  /* self q/k/v stacked, self out, cross q, cross out, fc1, fc2 */
    const float *norm[6]; /* weight, bias of the LayerNorms after self attention, cross attention, MLP */
    float eps[3];
} fl_layer;

typedef struct {
    int32_t layers, width, heads, vocab, position_offset, positions;
    const fl_layer *layer;
    fl_linear head;
    const int8_t *table; /* (vocab, width) int8 embedding, tied to the head */
    float table_scale;
    int32_t table_zero_point;
    float embed_scale;
    const float *position_table; /* (positions, width) */
    const float *norm_weight, *norm_bias;
    float norm_eps;
} fl_model;

typedef struct {
    int32_t batch, cache_length, memory_length;
    float *const *cache;                 /* per layer: row b at cache[l] + b * cache_stride: (2, heads, cache_length, head width) */
    int64_t cache_stride;
    const float *const *memory_keys;     /* per layer: row b at + b * memory_stride: (heads, memory_length, head width) */
    const float *const *memory_values;
    int64_t memory_stride;
    const int32_t *memory_lengths;       /* per row: how many memory tokens are real (the rest is padding) */
} fl_state;

/* ---------------------------------------------------------------- threads */

typedef struct {
    const fl_model *model;
    const fl_state *state;
    const int64_t *tokens;
    int32_t step;
    float *logits;
    int32_t threads;
} job_t;

static struct {
    pthread_mutex_t call_lock;
    int workers;    /* worker threads started (thread ids 1..workers) */
    pid_t pid;      /* the process that started them (a fork child has none) */
    _Atomic uint32_t go;
    uint32_t spawn_go; /* `go` when the workers were started: each runs the jobs posted after it */
    _Atomic int32_t sleepers;
    _Atomic int32_t finished;
    _Atomic int32_t barrier_count;
    _Atomic uint32_t barrier_generation;
    int isa;
    job_t job;
    /* scratch, grown on demand, shared by the threads */
    float *shared;  /* qkv / projections / attention outputs / MLP hidden */
    size_t shared_floats;
} engine = {.call_lock = PTHREAD_MUTEX_INITIALIZER, .isa = -1};

typedef struct {
    float *x;        /* batch x width: the running hidden state (each thread keeps an identical copy) */
    uint8_t *xq;     /* batch x in_padded: quantized activations */
    float *scores;   /* attention scores */
    size_t x_floats, xq_bytes, score_floats;
} thread_scratch_t;

static thread_scratch_t scratch[MAX_THREADS];

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *address, uint32_t expected) {
    syscall(SYS_futex, (uint32_t *)address, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *address) {
    syscall(SYS_futex, (uint32_t *)address, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void barrier(int threads) {
    if (threads == 1) return;
    uint32_t generation = atomic_load_explicit(&engine.barrier_generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&engine.barrier_count, 1, memory_order_acq_rel) == threads - 1) {
        atomic_store_explicit(&engine.barrier_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&engine.barrier_generation, 1, memory_order_release);
    } else {
        while (atomic_load_explicit(&engine.barrier_generation, memory_order_acquire) == generation) _mm_pause();
    }
}

static void run_job(int thread);

static void *worker_main(void *argument) {
    int thread = (int)(intptr_t)argument;
    uint32_t seen = engine.spawn_go; /* not `go` now: the first job may already have been posted */
    for (;;) {
        uint32_t go = atomic_load_explicit(&engine.go, memory_order_acquire);
        if (go == seen) {
            int64_t until = now_ns() + WORKER_SPIN_NS;
            for (int spins = 0; (go = atomic_load_explicit(&engine.go, memory_order_acquire)) == seen; spins++) {
                _mm_pause();
                if ((spins & 255) == 255 && now_ns() > until) break;
            }
            if (go == seen) {
                atomic_fetch_add(&engine.sleepers, 1);
                while ((go = atomic_load_explicit(&engine.go, memory_order_acquire)) == seen) futex_wait(&engine.go, seen);
                atomic_fetch_sub(&engine.sleepers, 1);
            }
        }
        seen = go;
        if (thread < engine.job.threads) run_job(thread);
        atomic_fetch_add_explicit(&engine.finished, 1, memory_order_release);
    }
    return NULL;
}

static int ensure_workers(int threads) {
    pid_t pid = getpid();
    if (engine.pid != pid) { /* a forked child inherits none of the parent's threads */
        engine.pid = pid;
        engine.workers = 0;
    }
    engine.spawn_go = atomic_load(&engine.go);
    while (engine.workers < threads - 1) {
        pthread_t handle;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&handle, &attributes, worker_main, (void *)(intptr_t)(engine.workers + 1));
        pthread_attr_destroy(&attributes);
        if (failed) return -1;
        engine.workers++;
    }
    return 0;
}

/* ---------------------------------------------------------------- scratch */

static void *grow(void *buffer, size_t *have, size_t need, size_t item) {
    if (*have >= need) return buffer;
    free(buffer);
    size_t bytes = (need * item + 63) / 64 * 64;
    void *fresh = aligned_alloc(64, bytes);
    *have = fresh ? need : 0;
    return fresh;
}

static int ensure_scratch(const fl_model *m, const fl_state *s, int threads) {
    /* the widest output of a layer's products (q/k/v stacked, fc1) and the widest input (fc2) */
    int64_t widest = 0, in_widest = m->head.in_padded;
    for (int l = 0; l < m->layers; l++)
        for (int i = 0; i < 6; i++) {
            const fl_linear *L = &m->layer[l].linear[i];
            if (L->out_padded > widest) widest = L->out_padded;
            if (L->in_padded > in_widest) in_widest = L->in_padded;
        }
    /* shared, per row: two projection outputs and one attention output (see run_job) */
    size_t shared = (size_t)s->batch * (size_t)(2 * widest + m->width);
    engine.shared = grow(engine.shared, &engine.shared_floats, shared, sizeof(float));
    if (!engine.shared) return -1;
    int64_t longest = s->cache_length > s->memory_length ? s->cache_length : s->memory_length;
    for (int t = 0; t < threads; t++) {
        thread_scratch_t *own = &scratch[t];
        own->x = grow(own->x, &own->x_floats, (size_t)s->batch * m->width, sizeof(float));
        own->xq = grow(own->xq, &own->xq_bytes, (size_t)s->batch * in_widest, 1);
        own->scores = grow(own->scores, &own->score_floats, (size_t)longest + 16, sizeof(float));
        if (!own->x || !own->xq || !own->scores) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- maths (AVX2 + FMA) */

__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
    /* Cephes' expf: 2^n * e^r with |r| <= ln2/2, a degree-6 polynomial; relative error ~2e-7 */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) static void gelu(float *x, int count) {
    /* exact GELU, 0.5 x (1 + erf(x / sqrt 2)), with Abramowitz-Stegun 7.1.26 for erf (|error| <= 1.5e-7) */
    int i = 0;
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= count; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
        __m256 a = _mm256_andnot_ps(sign_mask, z);
        __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
        __m256 p = _mm256_set1_ps(1.061405429f);
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
        p = _mm256_mul_ps(p, t);
        __m256 erf_abs = _mm256_fnmadd_ps(p, exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a))), _mm256_set1_ps(1.0f));
        __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(z, sign_mask));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), erf)));
    }
    for (; i < count; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

static void layer_norm(float *x, const float *residual, const float *weight, const float *bias, float eps, int width) {
    double sum = 0.0;
    for (int i = 0; i < width; i++) {
        x[i] += residual[i];
        sum += x[i];
    }
    float mean = (float)(sum / width);
    double squares = 0.0;
    for (int i = 0; i < width; i++) {
        float d = x[i] - mean;
        squares += (double)d * d;
    }
    float inverse = (float)(1.0 / sqrt(squares / width + eps));
    for (int i = 0; i < width; i++) x[i] = (x[i] - mean) * inverse * weight[i] + bias[i];
}

__attribute__((target("avx2,fma"))) static float dot(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    float total = _mm_cvtss_f32(half);
    for (; i < n; i++) total += a[i] * b[i];
    return total;
}

__attribute__((target("avx2,fma"))) static void add_scaled(float *out, const float *v, float weight, int n) {
    int i = 0;
    __m256 w = _mm256_set1_ps(weight);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
    for (; i < n; i++) out[i] += weight * v[i];
}

/* softmax(q . keys / sqrt(d)) . values over `count` rows of width d; out (d) */
__attribute__((target("avx2,fma"))) static void attend(const float *query, const float *keys, const float *values, int count,
                                                     int d, float *scores, float *out) {
    float scale = 1.0f / sqrtf((float)d), best = -INFINITY;
    for (int j = 0; j < count; j++) {
        scores[j] = dot(query, keys + (int64_t)j * d, d) * scale;
        if (scores[j] > best) best = scores[j];
    }
    float total = 0.0f;
    int j = 0;
    __m256 totals = _mm256_setzero_ps();
    for (; j + 8 <= count; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(best)));
        _mm256_storeu_ps(scores + j, e);
        totals = _mm256_add_ps(totals, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, totals);
    for (int k = 0; k < 8; k++) total += lanes[k];
    for (; j < count; j++) {
        scores[j] = expf(scores[j] - best);
        total += scores[j];
    }
    memset(out, 0, sizeof(float) * d);
    for (j = 0; j < count; j++) add_scaled(out, values + (int64_t)j * d, scores[j] / total, d);
}

/* ---------------------------------------------------------------- int8 products */

typedef struct {
    float scale;
    int32_t zero_point;
    int32_t sum; /* of the quantized values */
} activation_q;

/* asymmetric uint8 quantization of one row, [min(0, x), max(0, x)] onto [0, qmax]; padding columns are 0 */
static activation_q quantize_row(const float *x, int n, int padded, int qmax, uint8_t *out) {
    float low = 0.0f, high = 0.0f;
    for (int i = 0; i < n; i++) {
        low = x[i] < low ? x[i] : low;
        high = x[i] > high ? x[i] : high;
    }
    activation_q q;
    q.scale = (high - low) / (float)qmax;
    if (!(q.scale > 0.0f) || !isfinite(q.scale)) q.scale = 1.0f;
    float zero = nearbyintf(-low / q.scale);
    q.zero_point = zero < 0 ? 0 : (zero > qmax ? qmax : (int32_t)zero);
    float inverse = 1.0f / q.scale;
    int32_t sum = 0;
    for (int i = 0; i < n; i++) {
        float v = nearbyintf(x[i] * inverse) + (float)q.zero_point;
        int32_t level = v < 0.0f ? 0 : (v > (float)qmax ? qmax : (int32_t)v);
        out[i] = (uint8_t)level;
        sum += level;
    }
    if (padded > n) memset(out + n, 0, (size_t)(padded - n));
    q.sum = sum;
    return q;
}

/* one 64-row block, two activation rows (b = NULL for one): int32 sums of xq . w per row */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void block_vnni(const int8_t *w, int in_padded, const uint8_t *a,
                                                                                       const uint8_t *b, int32_t *out_a, int32_t *out_b) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    if (b) {
        __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int k = 0; k < in_padded; k += 4, w += 256) {
            __m512i xa = _mm512_set1_epi32(*(const int32_t *)(a + k)), xb = _mm512_set1_epi32(*(const int32_t *)(b + k));
            __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 64);
            __m512i w2 = _mm512_load_si512(w + 128), w3 = _mm512_load_si512(w + 192);
            a0 = _mm512_dpbusd_epi32(a0, xa, w0);
            a1 = _mm512_dpbusd_epi32(a1, xa, w1);
            a2 = _mm512_dpbusd_epi32(a2, xa, w2);
            a3 = _mm512_dpbusd_epi32(a3, xa, w3);
            b0 = _mm512_dpbusd_epi32(b0, xb, w0);
            b1 = _mm512_dpbusd_epi32(b1, xb, w1);
            b2 = _mm512_dpbusd_epi32(b2, xb, w2);
            b3 = _mm512_dpbusd_epi32(b3, xb, w3);
        }
        _mm512_storeu_si512(out_b, b0);
        _mm512_storeu_si512(out_b + 16, b1);
        _mm512_storeu_si512(out_b + 32, b2);
        _mm512_storeu_si512(out_b + 48, b3);
    } else {
        for (int k = 0; k < in_padded; k += 4, w += 256) {
            __m512i xa = _mm512_set1_epi32(*(const int32_t *)(a + k));
            a0 = _mm512_dpbusd_epi32(a0, xa, _mm512_load_si512(w));
            a1 = _mm512_dpbusd_epi32(a1, xa, _mm512_load_si512(w + 64));
            a2 = _mm512_dpbusd_epi32(a2, xa, _mm512_load_si512(w + 128));
            a3 = _mm512_dpbusd_epi32(a3, xa, _mm512_load_si512(w + 192));
        }
    }
    _mm512_storeu_si512(out_a, a0);
    _mm512_storeu_si512(out_a + 16, a1);
    _mm512_storeu_si512(out_a + 32, a2);
    _mm512_storeu_si512(out_a + 48, a3);
}

/* the same with AVX2: vpmaddubsw pairs (activations < 128, so no int16 saturation), vpmaddwd into int32 */
__attribute__((target("avx2,fma"))) static void block_avx2(const int8_t *w, int in_padded, const uint8_t *a, int32_t *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
    for (int k = 0; k < in_padded; k += 4, w += 256) {
        __m256i x = _mm256_set1_epi32(*(const int32_t *)(a + k));
        for (int i = 0; i < 8; i++) {
            __m256i pairs = _mm256_maddubs_epi16(x, _mm256_load_si256((const __m256i *)(w + 32 * i)));
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(pairs, ones));
        }
    }
    /* acc[i] lane j holds row (i / 2) * 16 + (i % 2) * 8 + j, since each 64-byte group is 16 rows of 4 bytes */
    for (int i = 0; i < 8; i++) _mm256_storeu_si256((__m256i *)(out + 8 * i), acc[i]);
}

static void finish_rows(const fl_linear *L, int first_row, const int32_t *sums, activation_q q, float *y, int gelu_rows) {
    int rows = L->out_features - first_row;
    if (rows > BLOCK_ROWS) rows = BLOCK_ROWS;
    for (int r = 0; r < rows; r++) {
        int n = first_row + r;
        int64_t exact = (int64_t)sums[r] - (int64_t)q.zero_point * L->row_sum[n] - (int64_t)L->zero_point[n] * q.sum +
                        (int64_t)L->in_features * q.zero_point * L->zero_point[n];
        float v = (float)exact * (q.scale * L->scale[n]);
        y[n] = L->bias ? v + L->bias[n] : v;
    }
    if (gelu_rows) gelu(y + first_row, rows);
}

/* y (batch rows `y_stride` apart) = x W^T + b for this thread's share of the blocks; x rows `x_stride` apart */
static void linear(const fl_linear *L, int thread, int threads, int batch, const float *x, int64_t x_stride, float *y,
                   int64_t y_stride, int gelu_rows) {
    thread_scratch_t *own = &scratch[thread];
    int isa = engine.isa, qmax = isa == ISA_AVX512_VNNI ? 255 : 127;
    activation_q q[batch];
    for (int b = 0; b < batch; b++)
        q[b] = quantize_row(x + b * x_stride, L->in_features, L->in_padded, qmax, own->xq + (int64_t)b * L->in_padded);
    int blocks = L->out_padded / BLOCK_ROWS;
    int first = (int)((int64_t)blocks * thread / threads), last = (int)((int64_t)blocks * (thread + 1) / threads);
    int32_t sums[2][BLOCK_ROWS] __attribute__((aligned(64)));
    size_t block_bytes = (size_t)BLOCK_ROWS * L->in_padded;
    for (int block = first; block < last; block++) {
        const int8_t *w = L->weights + block_bytes * block;
        int row = block * BLOCK_ROWS;
        for (int b = 0; b < batch; b += 2) {
            int pair = b + 1 < batch;
            const uint8_t *xa = own->xq + (int64_t)b * L->in_padded;
            if (isa == ISA_AVX512_VNNI) {
                block_vnni(w, L->in_padded, xa, pair ? xa + L->in_padded : NULL, sums[0], sums[1]);
            } else {
                block_avx2(w, L->in_padded, xa, sums[0]);
                if (pair) block_avx2(w, L->in_padded, xa + L->in_padded, sums[1]);
            }
            finish_rows(L, row, sums[0], q[b], y + b * y_stride, gelu_rows);
            if (pair) finish_rows(L, row, sums[1], q[b + 1], y + (b + 1) * y_stride, gelu_rows);
        }
    }
}

/* ---------------------------------------------------------------- the step */

/* A post-LN residual: out = in W^T + b (this thread's rows), then every row of x = LayerNorm(x + out) on
 * every thread alike, once all rows of `out` are written. */
static void residual_norm(const fl_linear *L, int thread, int threads, int batch, const float *in, int64_t in_stride,
                          float *out, int64_t out_stride, float *x, int width, const float *const norm[2], float eps) {
    linear(L, thread, threads, batch, in, in_stride, out, out_stride, 0);
    barrier(threads);
    for (int b = 0; b < batch; b++) layer_norm(x + b * width, out + b * out_stride, norm[0], norm[1], eps, width);
}

static void run_job(int thread) {
    const job_t *job = &engine.job;
    const fl_model *m = job->model;
    const fl_state *s = job->state;
    int threads = job->threads, batch = s->batch, width = m->width, heads = m->heads, hw = width / heads;
    int step = job->step;
    thread_scratch_t *own = &scratch[thread];
    float *x = own->x;
    /* Three shared buffers, so that no thread writes one that another may still be reading without a
     * barrier between: P (self q/k/v, then the out projections), Q (cross q, then fc1), A (attention
     * outputs, then fc2). Every thread reads all of P or A in its LayerNorms, which end without a barrier. */
    int64_t widest = (int64_t)(engine.shared_floats / batch - width) / 2;
    float *P = engine.shared, *Q = engine.shared + batch * widest, *A = engine.shared + 2 * batch * widest;

    /* input: token embedding (int8 row, dequantized, scaled) + learned position, LayerNorm; every thread alike */
    const float *position = m->position_table + (int64_t)(m->position_offset + step) * width;
    for (int b = 0; b < batch; b++) {
        const int8_t *row = m->table + job->tokens[b] * (int64_t)width;
        float *xb = x + b * width;
        for (int i = 0; i < width; i++) xb[i] = ((float)row[i] - (float)m->table_zero_point) * m->table_scale * m->embed_scale;
        layer_norm(xb, position, m->norm_weight, m->norm_bias, m->norm_eps, width);
    }

    int pairs = batch * heads;
    int pair_first = pairs * thread / threads, pair_last = pairs * (thread + 1) / threads;
    for (int l = 0; l < m->layers; l++) {
        const fl_layer *layer = &m->layer[l];
        /* self attention: this position's keys and values go into the cache, then one query over [0, step] */
        linear(&layer->linear[0], thread, threads, batch, x, width, P, widest, 0);
        barrier(threads);
        for (int p = pair_first; p < pair_last; p++) {
            int b = p / heads, h = p % heads;
            const float *qkv = P + b * widest;
            float *keys = s->cache[l] + b * s->cache_stride + ((int64_t)h * s->cache_length) * hw;
            float *values = keys + (int64_t)heads * s->cache_length * hw;
            memcpy(keys + (int64_t)step * hw, qkv + width + h * hw, sizeof(float) * hw);
            memcpy(values + (int64_t)step * hw, qkv + 2 * width + h * hw, sizeof(float) * hw);
            attend(qkv + h * hw, keys, values, step + 1, hw, own->scores, A + b * width + h * hw);
        }
        barrier(threads);
        residual_norm(&layer->linear[1], thread, threads, batch, A, width, P, widest, x, width, &layer->norm[0], layer->eps[0]);
        /* cross attention over each row's real memory tokens */
        linear(&layer->linear[2], thread, threads, batch, x, width, Q, widest, 0);
        barrier(threads);
        for (int p = pair_first; p < pair_last; p++) {
            int b = p / heads, h = p % heads;
            int64_t offset = b * s->memory_stride + (int64_t)h * s->memory_length * hw;
            attend(Q + b * widest + h * hw, s->memory_keys[l] + offset, s->memory_values[l] + offset, s->memory_lengths[b], hw,
                   own->scores, A + b * width + h * hw);
        }
        barrier(threads);
        residual_norm(&layer->linear[3], thread, threads, batch, A, width, P, widest, x, width, &layer->norm[2], layer->eps[1]);
        /* MLP: fc1 with GELU on each thread's own rows, then fc2 */
        linear(&layer->linear[4], thread, threads, batch, x, width, Q, widest, 1);
        barrier(threads);
        residual_norm(&layer->linear[5], thread, threads, batch, Q, widest, A, width, x, width, &layer->norm[4], layer->eps[2]);
    }
    linear(&m->head, thread, threads, batch, x, width, job->logits, m->vocab, 0);
}

/* ---------------------------------------------------------------- entry points */

static int detect_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        return ISA_AVX512_VNNI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
    return ISA_NONE;
}

/* The best kernel this CPU runs (2 AVX-512 VNNI, 1 AVX2, 0 none: the caller keeps its own step). */
int fl_best_isa(void) { return detect_isa(); }

/* Use `isa` (at most fl_best_isa()) from now on; returns the one in use. */
int fl_use_isa(int isa) {
    int best = detect_isa();
    pthread_mutex_lock(&engine.call_lock);
    engine.isa = isa < best ? isa : best;
    pthread_mutex_unlock(&engine.call_lock);
    return engine.isa;
}

/* Logits (batch, vocab) of `tokens` (batch) at decoder position `step`, writing their keys and values into
 * the state's caches. Returns 0; -1 when the threads or scratch could not be had, -2 for a token, step or
 * memory length out of range (nothing written either way). */
int fl_step(const fl_model *model, const fl_state *state, const int64_t *tokens, int32_t step, int32_t threads, float *logits) {
    if (state->batch < 1 || step < 0 || step >= state->cache_length || model->position_offset + step >= model->positions) return -2;
    for (int b = 0; b < state->batch; b++) {
        if (tokens[b] < 0 || tokens[b] >= model->vocab) return -2;
        if (state->memory_lengths[b] < 1 || state->memory_lengths[b] > state->memory_length) return -2;
    }
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    pthread_mutex_lock(&engine.call_lock);
    if (engine.isa < 0) engine.isa = detect_isa();
    if (engine.isa == ISA_NONE || ensure_workers(threads) != 0 || ensure_scratch(model, state, threads) != 0) {
        pthread_mutex_unlock(&engine.call_lock);
        return -1;
    }
    engine.job = (job_t){model, state, tokens, step, logits, threads};
    atomic_store_explicit(&engine.finished, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&engine.go, 1, memory_order_release);
    if (atomic_load(&engine.sleepers) > 0) futex_wake_all(&engine.go);
    run_job(0);
    while (atomic_load_explicit(&engine.finished, memory_order_acquire) < engine.workers) _mm_pause();
    pthread_mutex_unlock(&engine.call_lock);
    return 0;
}
