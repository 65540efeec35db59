// Router, mirroring cpu/router.rs: per token fp32 softmax over the expert logits, logsumexp, top-k
// of probs + bias (ties to the lower expert index; the bias steers selection only), optional
// renormalisation of the chosen probs; its backward; and the per-sequence
// routing statistics. One invocation per token walks its E experts in the CPU's order, so the sums
// associate as on the CPU; the statistics use one workgroup per sequence with fixed-order
// reductions (deterministic, no float atomics).
//
// Shapes: T = B*S tokens, E experts, K slots. pressure is a view at p_off, stats one at st_off:
// [counts (B, E) | score_sums (B, E) | topk_score_sums (B) | z_sums (B) | valid (B)].
// Bindings:
//   router_forward:
//     0 p          Params             uniform
//     1 logits     f32 (T, E)         read
//     2 probs_out  f32 (T, E)         read_write
//     3 lse_out    f32 (T)            read_write
//     4 idx_out    u32 (T, K)         read_write
//     5 w_out      f32 (T, K)         read_write
//     6 bias       f32 (E) at b_off   read
//   router_backward:
//     0 p          Params             uniform
//     1 probs      f32 (T, E)         read
//     2 lse        f32 (T)            read
//     3 idx        u32 (T, K)         read
//     4 mask       u32 (T), 0 or 1    read
//     5 w          f32 (T, K)         read
//     6 dw         f32 (T, K)         read
//     7 pressure   f32 (B, E)         read
//     8 dlogits    f32 (T, E)         read_write
//   router_stats:
//     0-4          as router_backward
//     5 stats      f32 (2 B E + 3 B)  read_write

struct Params {
    t: u32, e: u32, k: u32, s: u32,          // tokens, experts, slots, tokens per sequence
    norm_topk: u32, z_scale: u32,            // z_scale: f32 bits
    p_off: u32, st_off: u32,                 // offsets of the pressure and statistics views
    b_off: u32, _pad0: u32, _pad1: u32, _pad2: u32,  // offset of the bias view
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx_out: array<u32>;
@group(0) @binding(5) var<storage, read_write> w_out: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

@group(0) @binding(1) var<storage, read> probs: array<f32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read> w: array<f32>;
@group(0) @binding(6) var<storage, read> dw: array<f32>;
@group(0) @binding(7) var<storage, read> pressure: array<f32>;
@group(0) @binding(8) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;

// Token of this invocation on a grid folded by groups_1d.
fn token(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn router_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let t = token(wg, nwg, lid);
    if (t >= p.t) { return; }
    let z = t * p.e;
    var mx = logits[z];
    for (var i = 1u; i < p.e; i++) { mx = max(mx, logits[z + i]); }
    var sum = 0.0;
    for (var i = 0u; i < p.e; i++) {
        let v = exp(logits[z + i] - mx);
        probs_out[z + i] = v;
        sum += v;
    }
    for (var i = 0u; i < p.e; i++) { probs_out[z + i] = probs_out[z + i] / sum; }
    lse_out[t] = mx + log(sum);
    // Slot j takes the largest score (prob + bias) after slot j-1 in the order (score desc, index
    // asc): the CPU's K argmax passes excluding earlier picks, without remembering them.
    var last_sc = 0.0;
    var last_i = 0u;
    var wsum = 0.0;
    for (var slot = 0u; slot < p.k; slot++) {
        var best = p.e;
        var best_sc = 0.0;
        for (var i = 0u; i < p.e; i++) {
            let sc = probs_out[z + i] + bias[p.b_off + i];
            let after = slot == 0u || sc < last_sc || (sc == last_sc && i > last_i);
            if (after && (best == p.e || sc > best_sc)) {
                best = i;
                best_sc = sc;
            }
        }
        let wk = probs_out[z + best];
        idx_out[t * p.k + slot] = best;
        w_out[t * p.k + slot] = wk;
        wsum += wk;
        last_sc = best_sc;
        last_i = best;
    }
    if (p.norm_topk != 0u) {
        for (var slot = 0u; slot < p.k; slot++) { w_out[t * p.k + slot] = w_out[t * p.k + slot] / wsum; }
    }
}

// dlogits (T, E) from dw (T, K), the pressure (B, E) on valid tokens and the z-loss:
//   renormalisation w_k = p_k / S:  dp_j += (dw_j - sum_k dw_k w_k) / S   (else dp_j += dw_j)
//   softmax:                        dz_i = s_i (ds_i - sum_j ds_j s_j) + 2 z_scale lse s_i
@compute @workgroup_size(64)
fn router_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let t = token(wg, nwg, lid);
    if (t >= p.t) { return; }
    let z = t * p.e;
    let tk = t * p.k;
    let valid = mask[t] != 0u;
    let pb = p.p_off + (t / p.s) * p.e;
    // dlogits holds ds = dL/ds first, then becomes dL/dz in place.
    for (var i = 0u; i < p.e; i++) { dlogits[z + i] = select(0.0, pressure[pb + i], valid); }
    if (p.norm_topk != 0u) {
        var sum_p = 0.0;
        var dot = 0.0;
        for (var j = 0u; j < p.k; j++) {
            sum_p += probs[z + idx[tk + j]];
            dot += dw[tk + j] * w[tk + j];
        }
        for (var j = 0u; j < p.k; j++) { dlogits[z + idx[tk + j]] += (dw[tk + j] - dot) / sum_p; }
    } else {
        for (var j = 0u; j < p.k; j++) { dlogits[z + idx[tk + j]] += dw[tk + j]; }
    }
    var dot = 0.0;
    for (var i = 0u; i < p.e; i++) { dot += dlogits[z + i] * probs[z + i]; }
    let z_term = select(0.0, 2.0 * bitcast<f32>(p.z_scale) * lse[t], valid);
    for (var i = 0u; i < p.e; i++) {
        let pi = probs[z + i];
        dlogits[z + i] = pi * (dlogits[z + i] - dot) + z_term * pi;
    }
}

var<workgroup> red: array<vec3<f32>, 256>;

// One workgroup per sequence b, over its valid tokens; stats at st_off, B = number of workgroups:
//   [counts (B, E) | score_sums (B, E) | topk_score_sums (B) | z_sums (B) | valid (B)].
// Invocation i sums expert i over the tokens in order (compensated: thousands of terms);
// the per-token sums go through a strided partial per invocation and a tree.
@compute @workgroup_size(256)
fn router_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    let nb = nwg.x;
    let t0 = b * p.s;
    for (var i = lid; i < p.e; i += 256u) {
        var count = 0.0;
        var sum = 0.0;
        var comp = 0.0;   // Kahan compensation
        for (var t = t0; t < t0 + p.s; t++) {
            if (mask[t] == 0u) { continue; }
            let y = probs[t * p.e + i] - comp;
            let next = sum + y;
            comp = (next - sum) - y;
            sum = next;
            for (var j = 0u; j < p.k; j++) {
                if (idx[t * p.k + j] == i) { count += 1.0; }
            }
        }
        stats[p.st_off + b * p.e + i] = count;
        stats[p.st_off + (nb + b) * p.e + i] = sum;
    }
    var acc = vec3<f32>(0.0);   // (top-k score sum, lse^2 sum, valid tokens)
    for (var t = t0 + lid; t < t0 + p.s; t += 256u) {
        if (mask[t] == 0u) { continue; }
        var topk = 0.0;
        for (var j = 0u; j < p.k; j++) { topk += probs[t * p.e + idx[t * p.k + j]]; }
        acc += vec3<f32>(topk, lse[t] * lse[t], 1.0);
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { red[lid] += red[lid + stride]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let base = p.st_off + 2u * nb * p.e;
        stats[base + b] = red[0].x;
        stats[base + nb + b] = red[0].y;
        stats[base + 2u * nb + b] = red[0].z;
    }
}
