// Cross-entropy of next-token logits on the GPU (see cpu/crossentropy.rs). One workgroup of 256 per
// row t of logits (T, V): the row's max and sum of exponentials are reduced in workgroup memory.
//   forward:  losses[t] = logsumexp(z) - z[target]                 (0 where not valid)
//   backward: dlogits[t] = scale * (softmax(z) - onehot(target))   (0 where not valid)
//
// Shapes: T positions, V the vocabulary; logits and out are views at their offsets, row t reads
// targets and valid at row0 + t (a chunk of a longer batch).
// Bindings:
//   crossentropy_forward, crossentropy_backward:
//     0 p        Params                             uniform
//     1 out      f32 losses (T), or dlogits (T, V)  read_write
//     2 logits   f32 (T, V)                         read
//     3 targets  u32 (row0 + T)                     read
//     4 valid    u32 (row0 + T), 0 or 1             read

struct Params {
    t: u32, v: u32, out_off: u32, logits_off: u32,
    scale: u32, row0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read> valid: array<u32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    let m = red[0];
    workgroupBarrier(); // red is free again for the next reduction
    return m;
}

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// (max, sum of exp(z - max)) of row z0..z0 + V, returned to every invocation.
fn max_and_sum(li: u32, z0: u32) -> vec2<f32> {
    var mx = -3.4028235e38;
    for (var i = li; i < p.v; i += WG) { mx = max(mx, logits[z0 + i]); }
    mx = reduce_max(li, mx);
    var s = 0.0;
    for (var i = li; i < p.v; i += WG) { s += exp(logits[z0 + i] - mx); }
    return vec2(mx, reduce_sum(li, s));
}

@compute @workgroup_size(256)
fn crossentropy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.t) { return; }
    let z0 = p.logits_off + row * p.v;
    let ms = max_and_sum(li, z0);
    if (li == 0u) {
        var loss = 0.0;
        if (valid[p.row0 + row] != 0u) { loss = ms.x + log(ms.y) - logits[z0 + targets[p.row0 + row]]; }
        out[p.out_off + row] = loss;
    }
}

@compute @workgroup_size(256)
fn crossentropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.t) { return; }
    let z0 = p.logits_off + row * p.v;
    let d0 = p.out_off + row * p.v;
    let ms = max_and_sum(li, z0);
    let ok = valid[p.row0 + row] != 0u;
    let scale = bitcast<f32>(p.scale);
    let tgt = targets[p.row0 + row];
    for (var i = li; i < p.v; i += WG) {
        var d = 0.0;
        if (ok) {
            d = exp(logits[z0 + i] - ms.x) * (scale / ms.y);
            if (i == tgt) { d -= scale; }
        }
        out[d0 + i] = d;
    }
}
