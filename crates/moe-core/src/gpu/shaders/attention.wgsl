// Causal grouped-query attention on the GPU (see cpu/attention.rs). Layouts: q, out, dout, dq
// (T, H*D); k, v, dk, dv (T, KV*D); probs and ds (B, H, S, S), probs zero above the diagonal;
// T = B*S. Query head h reads kv head h / (H/KV); scale = 1/sqrt(D). With a sliding window
// (win > 0) query i sees keys i - win < j <= i only (`visible`); probs and ds are zero elsewhere.
//
// Every product is a GEMM within one (sequence, head) on the GEMM core (gemm.wgsl, which this
// module begins with): attn_gemm, its MODE override picking the product.
// Forward:   SCORES        probs = scale q k^T below the diagonal, 0 above   grid (S/BN, S/BM, B*H)
//            attn_softmax  each row of probs over j <= i, in place         one workgroup per row
//            PV            out = probs v                                   grid (D/BN, S/BM, B*H)
// Backward, with dP = dO V^T and delta_i = sum_j P_ij dP_ij = dO_i . O_i (as O = P V):
//            DS            ds = scale P (dP - delta) below the diagonal    grid (S/BN, S/BM, B*H)
//            DQ            dq = ds K                                       grid (D/BN, S/BM, B*H)
//            DK            dk = sum over the group's heads of ds^T Q       grid (D/BN, S/BM, B*KV)
//            DV            dv = sum over the group's heads of P^T dO       grid (D/BN, S/BM, B*KV)
// Blocks wholly above the diagonal are skipped (SCORES still writes their zeros; DS writes nothing
// there and its readers never look), the causal depth ends at the row block (PV, DQ) or starts at
// it (DK, DV), and loads mask j > i. DS first computes delta for its rows. Every output element has
// one owning workgroup that loops over heads and positions in a fixed order: deterministic sums.
//
// Bindings, output first; each tensor a view at its offset in the Params (o_off: out's in the
// forward, dout's in the backward; f_off: the forward's out in the backward):
//   attn_gemm:
//     0   p      Params                                              uniform
//     1   c      f32 probs | out | ds | dq | dk | dv, by MODE        read_write
//     2   a      f32 q | probs | dout | ds | ds | probs              read
//     3   b      f32 k | v | v | k | q | dout                        read
//     4   p_ds   f32 probs (B, H, S, S), read by DS                  read
//     5   o_ds   f32 out (T, H*D), read by DS                        read
//   (the other modes bind a's buffer at 4 and 5: a second read-only binding of it, never read)
//   attn_softmax:
//     0   p        Params                                            uniform
//     1   probs_w  f32 (B, H, S, S)                                  read_write

struct Params {
    s: u32, h: u32, kv: u32, d: u32,
    scale: u32, rows: u32, q_off: u32, k_off: u32,
    v_off: u32, p_off: u32, o_off: u32, dq_off: u32,
    dk_off: u32, dv_off: u32, ds_off: u32, f_off: u32,
    win: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}
// rows = B*H*S; scale: f32 bits.

const SCORES: u32 = 0u;
const PV: u32 = 1u;
const DS: u32 = 2u;
const DQ: u32 = 3u;
const DK: u32 = 4u;
const DV: u32 = 5u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> p_ds: array<f32>;
@group(0) @binding(5) var<storage, read> o_ds: array<f32>;
@group(0) @binding(1) var<storage, read_write> probs_w: array<f32>;

// The workgroup's sequence, query head (the current one of the group in DK, DV) and kv head.
var<private> at_b: u32;
var<private> at_h: u32;
var<private> at_g: u32;
// DS: delta of the block's rows.
var<workgroup> dl: array<f32, BM>;
var<workgroup> red_row: array<f32, 256>;

// Whether query i sees key j: causal, within the sliding window when there is one.
fn visible(i: u32, j: u32) -> bool {
    return j <= i && (p.win == 0u || j + p.win > i);
}

// Offset of (position i, head hh, column col) of sequence at_b in a (T, heads*D) tensor.
fn at(i: u32, heads: u32, hh: u32, col: u32) -> u32 {
    return ((at_b * p.s + i) * heads + hh) * p.d + col;
}

// Offset of (i, j) of head hh of sequence at_b in a (B, H, S, S) tensor.
fn sq(hh: u32, i: u32, j: u32) -> u32 {
    return ((at_b * p.h + hh) * p.s + i) * p.s + j;
}

fn load_a(m: u32, k: u32) -> f32 {
    switch MODE {
        case SCORES, DS: {  // q, dout (i = m, col = k)
            if (m >= p.s || k >= p.d) { return 0.0; }
            return a[select(p.q_off, p.o_off, MODE == DS) + at(m, p.h, at_h, k)];
        }
        case PV, DQ: {      // probs, ds (i = m, j = k <= i)
            if (m >= p.s || k > m) { return 0.0; }
            return a[select(p.p_off, p.ds_off, MODE == DQ) + sq(at_h, m, k)];
        }
        default: {          // DK, DV: ds^T, probs^T (j = m <= i = k)
            if (k >= p.s || m > k) { return 0.0; }
            return a[select(p.p_off, p.ds_off, MODE == DK) + sq(at_h, k, m)];
        }
    }
}

fn load_b(k: u32, n: u32) -> f32 {
    switch MODE {
        case SCORES, DS: {  // k^T, v^T (col = k, j = n)
            if (n >= p.s || k >= p.d) { return 0.0; }
            return b[select(p.k_off, p.v_off, MODE == DS) + at(n, p.kv, at_g, k)];
        }
        case PV, DQ: {      // v, k (j = k, col = n)
            if (k >= p.s || n >= p.d) { return 0.0; }
            return b[select(p.v_off, p.k_off, MODE == DQ) + at(k, p.kv, at_g, n)];
        }
        default: {          // DK, DV: q, dout of the current head (i = k, col = n)
            if (k >= p.s || n >= p.d) { return 0.0; }
            return b[select(p.o_off, p.q_off, MODE == DK) + at(k, p.h, at_h, n)];
        }
    }
}

fn store_c(m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.s) { return; }
    let scale = bitcast<f32>(p.scale);
    for (var e = 0u; e < 4u; e++) {
        let col = n + e;
        switch MODE {
            case SCORES: {
                if (col >= p.s) { return; }
                c[p.p_off + sq(at_h, m, col)] = select(0.0, scale * v[e], visible(m, col));
            }
            case DS: {
                if (col >= p.s) { return; }
                let at_ij = sq(at_h, m, col);
                c[p.ds_off + at_ij] = select(0.0, scale * p_ds[p.p_off + at_ij] * (v[e] - dl[m % BM]), visible(m, col));
            }
            case PV, DQ: {
                if (col >= p.d) { return; }
                c[select(p.o_off, p.dq_off, MODE == DQ) + at(m, p.h, at_h, col)] = v[e];
            }
            default: {      // DK, DV
                if (col >= p.d) { return; }
                c[select(p.dv_off, p.dk_off, MODE == DK) + at(m, p.kv, at_g, col)] = v[e];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn attn_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let group = p.h / p.kv;
    if (MODE == DK || MODE == DV) {
        at_b = wg.z / p.kv;
        at_g = wg.z % p.kv;
        at_h = at_g * group;
    } else {
        at_b = wg.z / p.h;
        at_h = wg.z % p.h;
        at_g = at_h / group;
    }
    // Along K: the A rows of SCORES, PV, DS, DQ, and B read transposed in SCORES and DS.
    gemm_begin(li, row0, col0, MODE <= DQ, MODE == SCORES || MODE == DS);
    // SCORES, DS: whether the block (columns j) reaches the diagonal.
    let below = col0 < row0 + BM;
    var acc: Acc;
    switch MODE {
        case SCORES: {
            if (below) { acc = gemm_mainloop(acc, 0u, p.d); }
        }
        case DS: {
            if (!below) { return; }
            for (var r = li; r < BM; r += WG) {
                let i = row0 + r;
                var sum = 0.0;
                if (i < p.s) {
                    for (var col = 0u; col < p.d; col++) { sum += a[p.o_off + at(i, p.h, at_h, col)] * o_ds[p.f_off + at(i, p.h, at_h, col)]; }
                }
                dl[r] = sum;
            }
            workgroupBarrier();
            acc = gemm_mainloop(acc, 0u, p.d);
        }
        case PV, DQ: {
            acc = gemm_mainloop(acc, 0u, min(row0 + BM, p.s));
        }
        default: {          // DK, DV: every head of the group, i from the block's first j
            for (var hh = 0u; hh < group; hh++) {
                acc = gemm_mainloop(acc, row0, p.s);
                at_h += 1u;
            }
        }
    }
    gemm_store(acc);
}

// Max (take_max) or sum of x over the 256 invocations, returned to all of them.
fn reduce_row(li: u32, x: f32, take_max: bool) -> f32 {
    red_row[li] = x;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            red_row[li] = select(red_row[li] + red_row[li + w], max(red_row[li], red_row[li + w]), take_max);
        }
        workgroupBarrier();
    }
    let r = red_row[0];
    workgroupBarrier(); // red_row is rewritten by the next reduction
    return r;
}

// p_ij = exp(x_ij - max_j x_ij) / sum_j exp(x_ij - max) over the visible j (lo <= j <= i), in
// place. One workgroup per row.
@compute @workgroup_size(256)
fn attn_softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let r = wg.x + wg.y * nw.x; // row (b*H + h)*S + i
    if (r >= p.rows) { return; }
    let i = r % p.s;
    let lo = select(0u, i + 1u - p.win, p.win > 0u && i + 1u > p.win);
    let base = p.p_off + r * p.s;
    var mx = -3.4028235e38;
    for (var j = lo + li; j <= i; j += 256u) { mx = max(mx, probs_w[base + j]); }
    mx = reduce_row(li, mx, true);
    var sum = 0.0;
    for (var j = lo + li; j <= i; j += 256u) {
        let e = exp(probs_w[base + j] - mx);
        probs_w[base + j] = e;
        sum += e;
    }
    sum = reduce_row(li, sum, false);
    // Each invocation rescales the entries it wrote itself.
    for (var j = lo + li; j <= i; j += 256u) { probs_w[base + j] /= sum; }
}
