// Run under `mpirun -np 2` by benches/bench.ts: the collectives of one training step of the demo
// model (R = 2 processes, A = 2, global scope), timed alone — T_glob, the stop flag, A expert-count
// all-reduces of L x (E + 1), the step's logged values, the loss and the flat gradient — and the
// whole step of a real `moe train --comm mpi` run for comparison. Rank 0 prints one JSON line.

import { MoeModel } from '../index.js';
import { MpiCommunicator } from '../src/balance/mpi.js';
import { DEMO_MODEL } from '../src/presets.js';

const comm = await MpiCommunicator.create();
const model = new MoeModel(DEMO_MODEL);
const L = DEMO_MODEL.num_hidden_layers;
const E = DEMO_MODEL.num_experts;
const A = 2;
const grads = new Float32Array(model.numParameters);
const times: number[] = [];
for (let step = 0; step < 12; step++) {
  await comm.barrier();
  const t0 = performance.now();
  await comm.allReduceSum(new Float64Array(1)); // stop flag
  await comm.allReduceSum(new Float64Array(1)); // T_glob
  for (let m = 0; m < A; m++) await comm.allReduceSum(new Float64Array(L * (E + 1))); // Algorithm 1 counts
  await comm.allReduceSum(new Float64Array(3 * L + 2 * L * E + L + 1)); // endStep: logged values
  await comm.allReduceSum(grads); // gradient
  await comm.allReduceSum(new Float64Array(1)); // loss
  if (step >= 2) times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
if (comm.rank === 0) console.log(JSON.stringify({ kind: 'mpi-comm', ranks: comm.size, params: grads.length, ms: times[times.length >> 1] }));
model.dispose();
comm.finalize();
