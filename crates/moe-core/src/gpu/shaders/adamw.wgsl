// AdamW with global gradient-norm clipping on the GPU (see gpu/adamw.rs), without a readback between
// the norm and the update:
//   grad_norm_partials  partials[k] = sum of grads² over chunk k of 1024 elements
//   grad_norm_finish    norm = sqrt(sum of partials), partials summed in a fixed order
//   adamw_update        the update, clipped by min(1, max_norm / norm) read from `scalars` itself,
//                       and skipped entirely when norm is not finite (the host reports NON_FINITE)
// The step's scalars sit in a small buffer, [norm | lr | 1 - beta1^t | 1 - beta2^t]: the host
// writes the last three each step, so the uniforms (and their bind groups) stay the same.
// Reductions are workgroup tree sums in a fixed order: deterministic without atomics. f32 sums
// (the CPU's are f64): a gradient norm past ~1.8e19 overflows and counts as non-finite.
//
// Shapes: N elements (of a view of the flat buffers, at the offsets in the Params), NC = ceil(N /
// 1024) partial sums.
// Bindings:
//   grad_norm_partials:
//     0 pn      NormParams         uniform
//     1 dst     f32 partials (NC)  read_write
//     2 src     f32 grads (N)      read
//   grad_norm_finish:
//     0 pn      NormParams         uniform
//     1 dst     f32 norm (1)       read_write
//     2 src     f32 partials (NC)  read
//   adamw_update:
//     0 pu      UpdateParams       uniform
//     1 params  f32 (N)            read_write
//     2 m_mem   f32 (N)            read_write
//     3 v_mem   f32 (N)            read_write
//     4 grads   f32 (N)            read
//     5 scalars f32 (4)            read

struct NormParams {
    n: u32, dst_off: u32, src_off: u32, _pad: u32,
}

struct UpdateParams {
    n: u32, p_off: u32, m_off: u32, v_off: u32,
    g_off: u32, s_off: u32, clip: u32, max_norm: u32,
    beta1: u32, beta2: u32, eps: u32, wd: u32,
}

@group(0) @binding(0) var<uniform> pn: NormParams;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

@group(0) @binding(0) var<uniform> pu: UpdateParams;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> m_mem: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_mem: array<f32>;
@group(0) @binding(4) var<storage, read> grads: array<f32>;
@group(0) @binding(5) var<storage, read> scalars: array<f32>;

const WG: u32 = 256u;
const CHUNK: u32 = 1024u; // = NORM_CHUNK in adamw.rs
var<workgroup> red: array<f32, 256>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    return red[0];
}

// dst[dst_off + k] = sum of src[src_off + i]² over chunk k (i in k * CHUNK ..), for n elements
@compute @workgroup_size(256)
fn grad_norm_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let k = wid.x + wid.y * nwg.x;
    if (k * CHUNK >= pn.n) { return; }
    var acc = 0.0;
    for (var i = k * CHUNK + li; i < min((k + 1u) * CHUNK, pn.n); i += WG) {
        let g = src[pn.src_off + i];
        acc += g * g;
    }
    let total = reduce_sum(li, acc);
    if (li == 0u) { dst[pn.dst_off + k] = total; }
}

// dst[dst_off] = sqrt(sum of src[src_off ..][..n]); one workgroup
@compute @workgroup_size(256)
fn grad_norm_finish(@builtin(local_invocation_index) li: u32) {
    var acc = 0.0;
    for (var i = li; i < pn.n; i += WG) { acc += src[pn.src_off + i]; }
    let total = reduce_sum(li, acc);
    if (li == 0u) { dst[pn.dst_off] = sqrt(total); }
}

// Inf and NaN have all exponent bits set; tested on the bits, which fast-math cannot fold away.
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// min(1, max_norm / norm) when clipping (adamw.rs clip_scale)
fn clip_scale(n: f32) -> f32 {
    let mx = bitcast<f32>(pu.max_norm);
    if (pu.clip != 0u && n > mx) { return mx / n; }
    return 1.0;
}

// g *= clip_scale;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  m̂ = m / bc1;  v̂ = v / bc2
// p -= lr (m̂ / (sqrt(v̂) + eps) + wd p)      (lr, bc = 1 - beta^t and wd (0 for vectors) from the host)
@compute @workgroup_size(256)
fn adamw_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= pu.n) { return; }
    let nrm = scalars[pu.s_off];
    if (!is_finite(nrm)) { return; }
    let b1 = bitcast<f32>(pu.beta1);
    let b2 = bitcast<f32>(pu.beta2);
    let g = grads[pu.g_off + i] * clip_scale(nrm);
    let m = b1 * m_mem[pu.m_off + i] + (1.0 - b1) * g;
    let v = b2 * v_mem[pu.v_off + i] + (1.0 - b2) * g * g;
    m_mem[pu.m_off + i] = m;
    v_mem[pu.v_off + i] = v;
    let mh = m / scalars[pu.s_off + 2u];
    let vh = v / scalars[pu.s_off + 3u];
    let p = params[pu.p_off + i];
    params[pu.p_off + i] = p - scalars[pu.s_off + 1u] * (mh / (sqrt(vh) + bitcast<f32>(pu.eps)) + bitcast<f32>(pu.wd) * p);
}
