// Token embedding on the GPU (see cpu/embedding.rs). Forward: one invocation per output element.
// Backward: dtable[tok] += dout[t] without atomics or races: the host groups positions by token id
// (TokenIndex, a CSR list) and each invocation owns one (distinct token, channel), summing its
// positions in ascending t, the CPU's order, so the result is the CPU's bit for bit.
//
// Shapes: T positions (in the backward, the index's capacity), V the vocabulary, C channels; R <= T
// distinct tokens in the batch.
// Bindings:
//   embedding_forward:
//     0 pf      FwdParams                                     uniform
//     1 out     f32 (T, C)                                    read_write
//     2 tokens  u32 (T)                                       read
//     3 table   f32 (V, C)                                    read
//   embedding_backward:
//     0 pb      BwdParams                                     uniform
//     1 dtable  f32 (V, C)                                    read_write
//     2 dout    f32 (T, C)                                    read
//     3 csr     u32 [R | rows (T) | start (T + 1) | pos (T)]  read

struct FwdParams {
    t: u32, c: u32, out_off: u32, table_off: u32,
}

struct BwdParams {
    // cap: the index's capacity T; csr = [R | rows (T) | start (T + 1) | pos (T)], R rows in use.
    cap: u32, c: u32, dtable_off: u32, dout_off: u32,
}

@group(0) @binding(0) var<uniform> pf: FwdParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;

@group(0) @binding(0) var<uniform> pb: BwdParams;
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> csr: array<u32>;

const WG: u32 = 256u;

// out (T, C) = table[tokens[t]]
@compute @workgroup_size(256)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= pf.t * pf.c) { return; }
    let t = i / pf.c;
    let ch = i % pf.c;
    out[pf.out_off + i] = table[pf.table_off + tokens[t] * pf.c + ch];
}

// dtable[rows[r], ch] += sum over k in start[r]..start[r+1] of dout[pos[k], ch], for r < R
@compute @workgroup_size(256)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    let r = i / pb.c;
    let ch = i % pb.c;
    if (r >= csr[0]) { return; }  // also bounds i: R <= cap
    let rows = 1u;
    let start = 1u + pb.cap;
    let pos = 2u + 2u * pb.cap;
    let at = pb.dtable_off + csr[rows + r] * pb.c + ch;
    var acc = dtable[at];
    for (var k = csr[start + r]; k < csr[start + r + 1u]; k++) {
        acc += dout[pb.dout_off + csr[pos + k] * pb.c + ch];
    }
    dtable[at] = acc;
}
