/* The softmax statistics of one query chunk, row by row, for workbench.kernels.cpu (see its docstring for the math).
 *
 * Input: the chunk's scores s [rows, width], s_ij = scale * q_i . k_j for the keys k0 .. k0 + width - 1 (one
 * matmul in PyTorch). Each row is edited, masked, exponentiated, summed and normalized while it sits in the
 * core's cache, and overwritten with its probabilities p_ij (0 on keys it may not see), ready for the p @ V and
 * `received` matmuls. Per row it writes the statistics of workbench.kernels.contract:
 *     m = max_j s_ij,  l = sum_j exp(s_ij - m),  t = sum_j exp(s_ij - m) (s_ij - m)
 *     lse = m + log l,  entropy = log l - t / l,  max_prob = 1 / l  (the maximal key has exp(0) = 1)
 * A learned sink logit u (GPT-OSS) joins the denominator, log L = logaddexp(log l, u - m) (m stays the keys'
 * maximum: nothing is rescaled, and nothing overflows however large u is); with the keys' share P = l / L:
 *     lse = logaddexp(m + log l, u),  entropy = P log L - t / L,  max_prob = 1 / L,
 *     learned_sink_mass = exp(u - m - log L)
 * (lse is not m + log L, which would lose u's precision in m when the sink dominates a row of very low logits).
 * With the VAR redistribution the row's sources give up the fraction f of their mass S to the targets, in
 * proportion to the targets' mass T (workbench.kernels.contract.HeadEdits); the entropy is corrected on those few
 * keys, and the max and argmax are read again off the edited row.
 * Rows are independent and split over the OpenMP threads (the runtime PyTorch itself loaded). `received`
 * (sum_i p_ij) is added while each row is still in cache: into a buffer per thread (rows of one head may fall
 * to two threads), summed into the result after the rows; a separate pass over the chunk would read it again.
 */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct chunk {
    float *scores;                 /* [rows, width], rows = batch * heads * n_queries, query index fastest */
    int64_t rows, width, heads, n_queries;
    int64_t first_query;           /* key position of the chunk's first query row */
    int64_t first_key;             /* key position of column 0 */
    int64_t n_keys;                /* Lk */
    int64_t causal, window;        /* window <= 0: no sliding window */
    const uint8_t *valid;          /* [batch, n_keys] 1 for real tokens, or NULL: nothing padded */
    const int64_t *start;          /* [batch] position of the first real key */
    const float *inv_temperature;  /* [heads] or NULL */
    const float *bias;             /* [batch, heads, n_keys] additive logit bias, or NULL */
    const int64_t *sink_keys;      /* [n_sink] positions counted from the first real key */
    int64_t n_sink;
    float distance_cap;            /* INFINITY: no cap */
    const float *fraction;         /* [heads] VAR redistribution (HeadEdits.redistribute), or NULL */
    const int64_t *source_keys, *target_keys;  /* its keys, counted like sink keys */
    int64_t n_source, n_target;
    int64_t out_length, out_offset;  /* per-query outputs are [batch, heads, out_length], this chunk at offset */
    float *lse, *entropy, *sink_mass, *max_prob, *window_distance, *self_mass;  /* NULL: not requested */
    int64_t *argmax_key;
    const float *sink_logit;       /* [heads] learned sink logits (edited), or NULL: no learned sinks */
    float *learned_sink_mass;      /* NULL: not requested */
    float *received;               /* [batch, heads, n_keys], the chunk's columns added to it; NULL: not requested */
};

/* exp(x) for x <= 0, 0 below -87.3 (where expf leaves the normal range), in a form the compiler vectorizes:
 * Cephes' expf, x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by its degree-6 polynomial (about 1 ulp), 2^n put
 * into the exponent bits. */
static inline float exp_nonpositive(float x) {
    const float low = -87.3f;
    float xc = x > low ? x : low;
    float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float poly = 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    poly = poly * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return x > low ? poly * two_n : 0.0f;
}

static void empty_row(const struct chunk *a, float *row, int64_t out) {
    memset(row, 0, (size_t)a->width * sizeof *row);
    float *per_query[] = {a->lse, a->entropy, a->sink_mass, a->max_prob, a->window_distance, a->self_mass,
                          a->learned_sink_mass};
    for (size_t i = 0; i < sizeof per_query / sizeof *per_query; i++)
        if (per_query[i]) per_query[i][out] = NAN;
    if (a->argmax_key) a->argmax_key[out] = -1;
}

/* Edited logits on the visible columns [lo, hi): temperature, key bias, padding keys to -inf; returns the max. */
static float edit_and_max(const struct chunk *a, float *row, int64_t b, int64_t h, int64_t lo, int64_t hi) {
    if (a->inv_temperature) {
        float inv = a->inv_temperature[h];
        for (int64_t j = lo; j < hi; j++) row[j] *= inv;
    }
    if (a->bias) {
        const float *bias = a->bias + (b * a->heads + h) * a->n_keys + a->first_key;
        for (int64_t j = lo; j < hi; j++) row[j] += bias[j];
    }
    if (a->valid) {
        const uint8_t *valid = a->valid + b * a->n_keys + a->first_key;
        for (int64_t j = lo; j < hi; j++) row[j] = valid[j] ? row[j] : -INFINITY;
    }
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = lo; j < hi; j++) m = row[j] > m ? row[j] : m;
    return m;
}

/* Sum of p over the keys `keys` (counted from the first real key) that the row sees, or scale them by `factor`. */
static float key_mass(const struct chunk *a, float *row, int64_t b, int64_t lo, int64_t hi, const int64_t *keys,
                      int64_t n, float factor, float *entropy_change) {
    float mass = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        int64_t col = a->start[b] + keys[i] - a->first_key;
        if (col < lo || col >= hi || row[col] <= 0.0f) continue;
        mass += row[col];
        if (entropy_change) {
            float edited = row[col] * factor;
            *entropy_change += row[col] * logf(row[col]) - (edited > 0.0f ? edited * logf(edited) : 0.0f);
            row[col] = edited;
        }
    }
    return mass;
}

/* The VAR redistribution of a normalized row in place; returns the change of its entropy. */
static float redistribute(const struct chunk *a, float *row, int64_t b, int64_t h, int64_t lo, int64_t hi) {
    float moved = key_mass(a, row, b, lo, hi, a->source_keys, a->n_source, 1.0f, NULL);
    float held = key_mass(a, row, b, lo, hi, a->target_keys, a->n_target, 1.0f, NULL);
    if (held <= 0.0f) return 0.0f;
    float f = a->fraction[h], change = 0.0f;
    key_mass(a, row, b, lo, hi, a->source_keys, a->n_source, 1.0f - f, &change);
    key_mass(a, row, b, lo, hi, a->target_keys, a->n_target, 1.0f + f * moved / held, &change);
    return change;
}

/* The first column of [lo, hi) that holds `top` (hi - 1 if none): a vectorized min over the row, which is in cache,
 * instead of a scalar scan that stops at the column. */
static int64_t first_of(const float *row, int64_t lo, int64_t hi, float top) {
    int64_t first = hi - 1;
#pragma omp simd reduction(min : first)
    for (int64_t j = lo; j < hi; j++) first = row[j] == top && j < first ? j : first;
    return first;
}

/* |query - key| as a float for the columns j of a row whose own column is `offset` (positions fit in 32 bits, so the
 * compiler converts them in vector registers). */
static inline float distance_of(int64_t offset, int64_t j) {
    int32_t d = (int32_t)(offset - j);
    return (float)(d < 0 ? -d : d);
}

/* One row: its statistics, p in place of its scores, and p added to `received` [batch * heads, width] if given. */
static void one_row(const struct chunk *a, int64_t r, float *received) {
    float *row = a->scores + r * a->width;
    int64_t c = r % a->n_queries, h = (r / a->n_queries) % a->heads, b = r / (a->n_queries * a->heads);
    int64_t query = a->first_query + c, own = query - a->first_key;
    int64_t out = (b * a->heads + h) * a->out_length + a->out_offset + c;
    int64_t lo = 0, hi = a->width;
    if (a->causal && own + 1 < hi) hi = own + 1;
    if (a->window > 0) {
        if (own - a->window + 1 > lo) lo = own - a->window + 1;
        if (!a->causal && own + a->window < hi) hi = own + a->window;
    }
    if (hi <= lo || (a->valid && !a->valid[b * a->n_keys + query])) {  /* a padding query sees nothing */
        empty_row(a, row, out);
        return;
    }
    memset(row, 0, (size_t)lo * sizeof *row);
    memset(row + hi, 0, (size_t)(a->width - hi) * sizeof *row);
    float m = edit_and_max(a, row, b, h, lo, hi);
    if (m == -INFINITY) {  /* every key the row may see is masked (padding, a dropped block): it sees nothing */
        empty_row(a, row, out);
        return;
    }
    if (a->argmax_key) a->argmax_key[out] = a->first_key + first_of(row, lo, hi, m) - a->start[b];
    float l = 0.0f, t = 0.0f;
    if (a->entropy) {
#pragma omp simd reduction(+ : l, t)
        for (int64_t j = lo; j < hi; j++) {
            float d = row[j] - m, e = exp_nonpositive(d);
            row[j] = e;
            l += e;
            t += e > 0.0f ? e * d : 0.0f;
        }
    } else {
#pragma omp simd reduction(+ : l)
        for (int64_t j = lo; j < hi; j++) {
            float e = exp_nonpositive(row[j] - m);
            row[j] = e;
            l += e;
        }
    }
    float inv = 1.0f / l, log_l = logf(l), share = 1.0f, sink_share = 0.0f, lse = m + log_l;
    if (a->sink_logit) {
        float u = a->sink_logit[h], d = u - m, top = d > log_l ? d : log_l;
        lse = (lse > u ? lse : u) + log1pf(expf(-fabsf(lse - u)));
        float log_total = top + log1pf(expf(-fabsf(log_l - d)));
        share = expf(log_l - log_total);
        sink_share = expf(d - log_total);
        log_l = log_total;
        inv = expf(-log_total);
    }
    float entropy = share * log_l - t * inv, max_prob = inv;
    int64_t offset = query - a->first_key;
    if (a->window_distance && !a->fraction) {
        float distance = 0.0f, cap = a->distance_cap;
#pragma omp simd reduction(+ : distance)
        for (int64_t j = lo; j < hi; j++) {
            float p = row[j] * inv, d = distance_of(offset, j);
            row[j] = p;
            distance += p * (d < cap ? d : cap);
        }
        a->window_distance[out] = distance;
    } else {
        for (int64_t j = lo; j < hi; j++) row[j] *= inv;
    }
    if (a->fraction) {
        entropy += redistribute(a, row, b, h, lo, hi);
        max_prob = 0.0f;
#pragma omp simd reduction(max : max_prob)
        for (int64_t j = lo; j < hi; j++) max_prob = row[j] > max_prob ? row[j] : max_prob;
        if (a->argmax_key) a->argmax_key[out] = a->first_key + first_of(row, lo, hi, max_prob) - a->start[b];
        if (a->window_distance) {
            float distance = 0.0f, cap = a->distance_cap;
#pragma omp simd reduction(+ : distance)
            for (int64_t j = lo; j < hi; j++) {
                float d = distance_of(offset, j);
                distance += row[j] * (d < cap ? d : cap);
            }
            a->window_distance[out] = distance;
        }
    }
    if (a->lse) a->lse[out] = lse;
    if (a->entropy) a->entropy[out] = entropy;
    if (a->max_prob) a->max_prob[out] = max_prob;
    if (a->self_mass) a->self_mass[out] = row[own];
    if (a->learned_sink_mass) a->learned_sink_mass[out] = sink_share;
    if (a->sink_mass) {
        float mass = 0.0f;
        for (int64_t n = 0; n < a->n_sink; n++) {
            int64_t col = a->start[b] + a->sink_keys[n] - a->first_key;
            if (col >= lo && col < hi) mass += row[col];
        }
        a->sink_mass[out] = mass;
    }
    if (received) {
        float *column = received + (b * a->heads + h) * a->width;
#pragma omp simd
        for (int64_t j = lo; j < hi; j++) column[j] += row[j];
    }
}

/* Every row of the chunk; returns 0, or 1 when the buffers of `received` cannot be allocated. */
int softmax_rows(const struct chunk *a) {
    int64_t heads = a->rows / a->n_queries, size = heads * a->width;
    int threads = omp_get_max_threads();
    float *partial = a->received ? calloc((size_t)threads * (size_t)size, sizeof *partial) : NULL;
    if (a->received && !partial) return 1;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < a->rows; r++) one_row(a, r, partial ? partial + omp_get_thread_num() * size : NULL);
    if (!partial) return 0;
#pragma omp parallel for schedule(static)
    for (int64_t x = 0; x < heads; x++) {
        float *sum = a->received + x * a->n_keys + a->first_key;
        for (int t = 0; t < threads; t++) {
            const float *part = partial + t * size + x * a->width;
#pragma omp simd
            for (int64_t j = 0; j < a->width; j++) sum[j] += part[j];
        }
    }
    free(partial);
    return 0;
}
