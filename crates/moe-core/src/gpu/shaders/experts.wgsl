// Dropless experts, mirroring cpu/experts.rs: the N = T*K (token, slot) pairs counting-sorted by
// expert (stable in token order), gathered into one block of rows per expert, SwiGLU expert MLPs as
// grouped GEMMs over those blocks, and the weighted combine. Sorted position p holds the pair
// rows[p] = t*K + k; pos is the inverse.
//
// Shapes: N = T*K pairs of T tokens and K slots, E experts, C channels, F the experts' width, NB =
// ceil(N / 256) sort blocks; m, n, k: a grouped GEMM's own sizes (pg.m, pg.n, pg.k). (T, C) tensors
// are views at `off`, GEMM operands at their offsets in the GemmParams; the sorted (N, ..) buffers
// start at 0. The module begins with the GEMM core (gemm.wgsl).
// Bindings:
//   permute_count:
//     0   pp           PermuteParams                             uniform
//     1   idx          u32 (N)                                   read
//     2   counts       u32 (E, NB)                               read_write
//   permute_scan:
//     0   pp           PermuteParams                             uniform
//     1   scan         u32 counts (E, NB), in place              read_write
//     2   offsets_out  u32 (E + 1)                               read_write
//     3   tiles_out    u32 (E + 1)                               read_write
//   permute_scatter:
//     0   pp           PermuteParams                             uniform
//     1   idx          u32 (N)                                   read
//     2   counts       u32 (E, NB), scanned                      read_write
//     3   rows_out     u32 (N)                                   read_write
//     4   pos_out      u32 (N)                                   read_write
//   gather_forward:
//     0   pr           RowParams                                 uniform
//     1   perm         u32 rows (N)                              read
//     2   src          f32 x (T, C)                              read
//     3   dst          f32 xs (N, C)                             read_write
//   gather_backward:
//     0   pr           RowParams                                 uniform
//     1   perm         u32 pos (N)                               read
//     2   src          f32 dxs (N, C)                            read
//     3   dst          f32 dx (T, C)                             read_write
//   combine_forward:
//     0   pr           RowParams                                 uniform
//     1   perm         u32 pos (N)                               read
//     2   src          f32 ys (N, C)                             read
//     3   dst          f32 out (T, C)                            read_write
//     4   wk           f32 w (T, K)                              read
//   combine_backward:
//     0-2              as combine_forward
//     3   dst          f32 dys (N, C)                            read_write
//     4   wk           f32 w (T, K)                              read
//     5   dout         f32 (T, C)                                read
//     6   dw           f32 (T, K)                                read_write
//   experts_gemm (every MODE, see "Grouped GEMMs" below):
//     0   pg           GemmParams                                uniform
//     1   offsets      u32 (E + 1)                               read
//     2   a            f32 A: (N, k) rows, or the (2, N, F) halves   read
//     3   b            f32 weights (E, ..), or B (N, n) in WGRAD read
//     4   c            f32 by MODE: (1|2|3, N, n), or (E, m, n)  read_write
//     5   tiles        u32 (E + 1), row tiles (all but WGRAD)    read
//     6   aux          f32 g | u (2, N, F) (DH only)             read

// ---- Counting sort ---------------------------------------------------------------------------
// Pairs go in blocks of 256. counts[e * NB + blk] = pairs of block blk choosing expert e. Its
// exclusive scan in this expert-major order is where block blk's pairs of expert e start, so the
// stable scatter needs only each pair's rank among the earlier pairs of its expert in its block.
// Correct for any N: one workgroup per block, and the scan is one workgroup looping over E * NB.

struct PermuteParams { n: u32, e: u32, nb: u32, tile: u32 }
@group(0) @binding(0) var<uniform> pp: PermuteParams;

@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> rows_out: array<u32>;
@group(0) @binding(4) var<storage, read_write> pos_out: array<u32>;
@group(0) @binding(1) var<storage, read_write> scan: array<u32>;
@group(0) @binding(2) var<storage, read_write> offsets_out: array<u32>;
@group(0) @binding(3) var<storage, read_write> tiles_out: array<u32>;

var<workgroup> sw: array<u32, 256>;

// Block index on a grid folded by groups_1d; loads its experts into sw (E marks past the end).
fn load_block(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    let blk = wg.x + wg.y * nwg.x;
    let j = blk * 256u + lid;
    sw[lid] = pp.e;
    if (j < pp.n) { sw[lid] = idx[j]; }
    workgroupBarrier();
    return blk;
}

@compute @workgroup_size(256)
fn permute_count(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let blk = load_block(wg, nwg, lid);
    if (blk >= pp.nb) { return; }
    for (var e = lid; e < pp.e; e += 256u) {
        var n = 0u;
        for (var j = 0u; j < 256u; j++) { n += u32(sw[j] == e); }
        counts[e * pp.nb + blk] = n;
    }
}

// One workgroup: exclusive scan of counts (E * NB) in place, by 256 contiguous chunks;
// offsets[e] = the scanned count at expert e's first block (offsets[E] = N);
// tiles[e] = sum_{j<e} ceil(n_j / tile), the row tiles of the grouped GEMMs (tiles[E] = all of them).
@compute @workgroup_size(256)
fn permute_scan(@builtin(local_invocation_index) lid: u32) {
    let n = pp.e * pp.nb;
    let chunk = (n + 255u) / 256u;
    let lo = min(lid * chunk, n);
    let hi = min(lo + chunk, n);
    var run = 0u;
    for (var i = lo; i < hi; i++) { run += scan[i]; }
    sw[lid] = run;
    workgroupBarrier();
    if (lid == 0u) {
        run = 0u;
        for (var i = 0u; i < 256u; i++) {
            let v = sw[i];
            sw[i] = run;
            run += v;
        }
    }
    workgroupBarrier();
    run = sw[lid];
    for (var i = lo; i < hi; i++) {
        let v = scan[i];
        scan[i] = run;
        run += v;
    }
    storageBarrier();
    for (var e = lid; e < pp.e; e += 256u) { offsets_out[e] = scan[e * pp.nb]; }
    if (lid == 0u) { offsets_out[pp.e] = pp.n; }
    storageBarrier();
    if (lid == 0u) {
        run = 0u;
        for (var e = 0u; e < pp.e; e++) {
            tiles_out[e] = run;
            run += (offsets_out[e + 1u] - offsets_out[e] + pp.tile - 1u) / pp.tile;
        }
        tiles_out[pp.e] = run;
    }
}

@compute @workgroup_size(256)
fn permute_scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let blk = load_block(wg, nwg, lid);
    let j = blk * 256u + lid;
    if (j >= pp.n) { return; }
    let e = sw[lid];
    var rank = 0u;
    for (var i = 0u; i < lid; i++) { rank += u32(sw[i] == e); }
    let p = counts[e * pp.nb + blk] + rank;
    rows_out[p] = j;
    pos_out[j] = p;
}

// ---- Gather and combine ----------------------------------------------------------------------

struct RowParams { rows: u32, c: u32, k: u32, off: u32 }
@group(0) @binding(0) var<uniform> pr: RowParams;

@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read> wk: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw: array<f32>;

fn element(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// xs[p] = x[rows[p] / K]
@compute @workgroup_size(256)
fn gather_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= pr.rows * pr.c) { return; }
    let p = i / pr.c;
    dst[i] = src[pr.off + (perm[p] / pr.k) * pr.c + i % pr.c];
}

// dx[t] = sum_k dxs[pos[t*K+k]] (overwrites: the only writer of dx before the router's +=)
@compute @workgroup_size(256)
fn gather_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= pr.rows * pr.c) { return; }
    let t = i / pr.c;
    var sum = 0.0;
    for (var k = 0u; k < pr.k; k++) { sum += src[perm[t * pr.k + k] * pr.c + i % pr.c]; }
    dst[pr.off + i] = sum;
}

// out[t] = sum_k w[t,k] * ys[pos[t*K+k]]
@compute @workgroup_size(256)
fn combine_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, nwg, lid);
    if (i >= pr.rows * pr.c) { return; }
    let t = i / pr.c;
    var sum = 0.0;
    for (var k = 0u; k < pr.k; k++) {
        let tk = t * pr.k + k;
        sum += wk[tk] * src[perm[tk] * pr.c + i % pr.c];
    }
    dst[pr.off + i] = sum;
}

var<workgroup> red: array<f32, 256>;

// One workgroup per token t, per slot k at p = pos[t*K+k]: dys[p] = w[t,k] * dout[t] and
// dw[t,k] = <dout[t], ys[p]> (strided partials, then a tree: deterministic).
@compute @workgroup_size(256)
fn combine_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + wg.y * nwg.x;
    if (t >= pr.rows) { return; }
    for (var k = 0u; k < pr.k; k++) {
        let tk = t * pr.k + k;
        let p = perm[tk];
        var part = 0.0;
        for (var c = lid; c < pr.c; c += 256u) {
            let d = dout[pr.off + t * pr.c + c];
            dst[p * pr.c + c] = wk[tk] * d;
            part += d * src[p * pr.c + c];
        }
        red[lid] = part;
        workgroupBarrier();
        for (var stride = 128u; stride > 0u; stride >>= 1u) {
            if (lid < stride) { red[lid] += red[lid + stride]; }
            workgroupBarrier();
        }
        if (lid == 0u) { dw[tk] = red[0]; }
        workgroupBarrier();
    }
}

// ---- Grouped GEMMs ---------------------------------------------------------------------------
// On the GEMM core (gemm.wgsl, which this module begins with); its MODE override picks the product. Expert e owns sorted rows offsets[e]..offsets[e+1] (n_e of them). In the first four modes
// one workgroup computes a BM x BN block of expert e's rows: row tile r over all experts (grid x, y
// folded) belongs to the last e with tiles[e] <= r, tiles being `permute_scan`'s table in units of
// BM; grid z: column tiles. W_e = the e-th block of b at b_off + e * b_es (or b_off2: up_proj).
// sec = N * F, the stride between the sections g | u | h, dg | du of the (2|3, N, F) buffers.
//   UP    (p.k = C, p.n = F):  g | u | h (3, N, F) at c_off, from xs (N, C) at a_off: one product with
//         2F interleaved columns, 2f = xs · gate_e^T and 2f + 1 = xs · up_e^T (gate_e, up_e (F, C)
//         at b_off, b_off2), so each invocation holds g and u of a column pair: h = silu(g) * u.
//   DOWN  (p.k = F, p.n = C):  ys (N, C) at c_off = h (N, F) at a_off · down_e^T (down_e (C, F)).
//   DH    (p.k = C, p.n = F):  dh = dys (N, C) at a_off · down_e (C, F); with g, u from aux (2, N, F):
//         dg = dh u s (1 + g (1 - s)), du = dh g s, s = sigmoid(g), into c (2, N, F).
//   DX    (p.k = F, p.n = C):  dxs (N, C) = [dg | du] (N, 2F) · [gate_e; up_e] (2F, C): both
//         products of the input gradient in one (dg at a_off, du at a_off + sec).
// WGRAD: one workgroup per (column tile, row tile, expert e), no atomics; over expert e's rows,
//   c[c_off + e m n ..] (m, n) += A_e^T (m, n_e) · B_e (n_e, n), A rows m wide at a_off, B rows n
//   wide at b_off. halves = 2: the gate and up weight gradients at once, A = dg | du (second half at
//   a_off + sec), rows m.. of the result into c at c_off2.

struct GemmParams {
    m: u32, n: u32, k: u32, experts: u32,
    a_off: u32, b_off: u32, b_off2: u32, b_es: u32,
    c_off: u32, c_off2: u32, sec: u32, halves: u32,
}
const UP: u32 = 0u;
const DOWN: u32 = 1u;
const DH: u32 = 2u;
const DX: u32 = 3u;
const WGRAD: u32 = 4u;

@group(0) @binding(0) var<uniform> pg: GemmParams;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> tiles: array<u32>;
@group(0) @binding(6) var<storage, read> aux: array<f32>;

// The workgroup's expert, its first sorted row and its row count.
var<private> ex_e: u32;
var<private> ex_base: u32;
var<private> ex_rows: u32;

fn load_a(m: u32, k: u32) -> f32 {
    if (MODE == WGRAD) {
        // A^T: m a channel of A's rows (in the second half when m >= p.m), k an expert row.
        if (k >= ex_rows || m >= pg.halves * pg.m) { return 0.0; }
        let half = m / pg.m;
        return a[pg.a_off + half * pg.sec + (ex_base + k) * pg.m + m - half * pg.m];
    }
    if (m >= ex_rows) { return 0.0; }
    if (MODE == DX) {
        if (k >= 2u * pg.k) { return 0.0; }
        let half = k / pg.k;
        return a[pg.a_off + half * pg.sec + (ex_base + m) * pg.k + k - half * pg.k];
    }
    if (k >= pg.k) { return 0.0; }
    return a[pg.a_off + (ex_base + m) * pg.k + k];
}

fn load_b(k: u32, n: u32) -> f32 {
    switch MODE {
        case UP: {
            // Column n: gate_e's row n / 2, or up_e's when n is odd; W (F, C) read as W^T.
            if (k >= pg.k || n >= 2u * pg.n) { return 0.0; }
            let w = select(pg.b_off, pg.b_off2, (n & 1u) == 1u) + ex_e * pg.b_es;
            return b[w + (n / 2u) * pg.k + k];
        }
        case DOWN: {
            if (k >= pg.k || n >= pg.n) { return 0.0; }
            return b[pg.b_off + ex_e * pg.b_es + n * pg.k + k];
        }
        case DH: {
            if (k >= pg.k || n >= pg.n) { return 0.0; }
            return b[pg.b_off + ex_e * pg.b_es + k * pg.n + n];
        }
        case DX: {
            if (k >= 2u * pg.k || n >= pg.n) { return 0.0; }
            let half = k / pg.k;
            return b[select(pg.b_off, pg.b_off2, half == 1u) + ex_e * pg.b_es + (k - half * pg.k) * pg.n + n];
        }
        default: {  // WGRAD
            if (k >= ex_rows || n >= pg.n) { return 0.0; }
            return b[pg.b_off + (ex_base + k) * pg.n + n];
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// g, u, h at (row, f) of the (3, N, F) output.
fn store_swiglu(row: u32, f: u32, g: f32, u: f32) {
    if (f >= pg.n) { return; }
    let at = pg.c_off + (ex_base + row) * pg.n + f;
    c[at] = g;
    c[pg.sec + at] = u;
    c[2u * pg.sec + at] = g * sigmoid(g) * u;
}

fn store_c(m: u32, n: u32, v: vec4<f32>) {
    if (MODE == UP) {
        // Columns n..n+3 are (g, u) of f = n / 2 and of f + 1.
        if (m >= ex_rows) { return; }
        store_swiglu(m, n / 2u, v.x, v.y);
        store_swiglu(m, n / 2u + 1u, v.z, v.w);
        return;
    }
    if (MODE == WGRAD) {
        if (m >= pg.halves * pg.m) { return; }
        let half = m / pg.m;
        let row = select(pg.c_off, pg.c_off2, half == 1u) + (ex_e * pg.m + m - half * pg.m) * pg.n;
        for (var j = 0u; j < 4u; j++) {
            if (n + j >= pg.n) { return; }
            c[row + n + j] += v[j];
        }
        return;
    }
    if (m >= ex_rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        let col = n + j;
        if (col >= pg.n) { return; }
        let at = pg.c_off + (ex_base + m) * pg.n + col;
        if (MODE == DH) {
            let g = aux[at];
            let u = aux[pg.sec + at];
            let s = sigmoid(g);
            c[at] = v[j] * u * s * (1.0 + g * (1.0 - s));
            c[pg.sec + at] = v[j] * g * s;
        } else {
            c[at] = v[j];
        }
    }
}

@compute @workgroup_size(WG)
fn experts_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    var row0 = wg.y * BM;
    var col0 = wg.x * BN;
    ex_e = wg.z;
    if (MODE != WGRAD) {
        // Dispatched for an upper bound of row tiles: the extra workgroups leave.
        let r = wg.x + wg.y * nwg.x;
        if (r >= tiles[pg.experts]) { return; }
        // The last e with tiles[e] <= r (experts without rows own no tiles).
        var e = 0u;
        var hi = pg.experts;
        while (hi - e > 1u) {
            let mid = (e + hi) / 2u;
            if (tiles[mid] <= r) { e = mid; } else { hi = mid; }
        }
        ex_e = e;
        row0 = (r - tiles[e]) * BM;   // within the expert's rows
        col0 = wg.z * BN;
    }
    ex_base = offsets[ex_e];
    ex_rows = offsets[ex_e + 1u] - ex_base;
    // Contiguous along K: the data products' A rows; B where it is read as W^T (UP, DOWN).
    gemm_begin(li, row0, col0, MODE != WGRAD, MODE == UP || MODE == DOWN);
    var depth = pg.k;
    if (MODE == DX) { depth = 2u * pg.k; }
    if (MODE == WGRAD) { depth = ex_rows; }
    var acc: Acc;
    acc = gemm_mainloop(acc, 0u, depth);
    gemm_store(acc);
}
