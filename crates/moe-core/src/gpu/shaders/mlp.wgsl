// The sigmoid gate of a shared expert (Qwen2-MoE), elementwise part (see cpu/mlp.rs): the gate's
// logits l (T) = x · w come from a GEMM; here out += sigmoid(l) * m and its backward.
//
// Shapes: T rows of C channels; m, out, dout, dm (T, C); logits, dlogits (T). out and dout are
// views at o_off.
// Bindings:
//   sigmoid_gate_forward:
//     0 p        Params        uniform
//     1 logits   f32 (T)       read
//     2 m        f32 (T, C)    read
//     3 out      f32 (T, C)    read_write
//   sigmoid_gate_backward:
//     0 p        Params        uniform
//     1 logits   f32 (T)       read
//     2 m        f32 (T, C)    read
//     3 dout     f32 (T, C)    read  (binding 3 of the forward's layout, read only here)
//     4 dm       f32 (T, C)    read_write
//     5 dlogits  f32 (T)       read_write

struct Params { t: u32, c: u32, o_off: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> dm: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<f32>;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// out[t, j] += sigmoid(logits[t]) * m[t, j]
@compute @workgroup_size(256)
fn sigmoid_gate_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                        @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nw.x) * 256u + li;
    if (i >= p.t * p.c) { return; }
    out[p.o_off + i] += sigmoid(logits[i / p.c]) * m[i];
}

var<workgroup> red: array<f32, 256>;

// One workgroup per row t: dm[t, :] = s dout[t, :];  dlogits[t] = <dout[t, :], m[t, :]> s (1 - s),
// s = sigmoid(logits[t]); the row's dot product summed in a fixed tree order.
@compute @workgroup_size(256)
fn sigmoid_gate_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                         @builtin(local_invocation_index) li: u32) {
    let t = wg.x + wg.y * nw.x;
    if (t >= p.t) { return; }
    let s = sigmoid(logits[t]);
    var sum = 0.0;
    for (var j = li; j < p.c; j += 256u) {
        let d = out[p.o_off + t * p.c + j];
        sum += d * m[t * p.c + j];
        dm[t * p.c + j] = s * d;
    }
    red[li] = sum;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) { red[li] += red[li + w]; }
        workgroupBarrier();
    }
    if (li == 0u) { dlogits[t] = red[0] * s * (1.0 - s); }
}
