// The MPI communicator: the same Communicator as the in-process LocalGroup, across processes and
// machines (Open MPI, through the optional addon in mpi/, built by `npm run build:mpi`).
// Per step it all-reduces the token count, per micro-step L x (E + 1) expert counts (dp and global
// scopes), and once the flat gradient, in buckets.

import { MoeTrainerError } from '../errors.js';
import type { Communicator } from './communicator.js';

type Addon = typeof import('../../mpi/index.js');

/** Gradient all-reduce bucket: 4 M floats (16 MiB) per MPI call. */
const BUCKET = 1 << 22;

export class MpiCommunicator implements Communicator {
  private constructor(
    private readonly mpi: Addon,
    readonly rank: number,
    readonly size: number,
  ) {}

  /** Initialises MPI (once per process); rank and size come from the MPI environment (mpirun). */
  static async create(): Promise<MpiCommunicator> {
    let mpi: Addon;
    try {
      mpi = await import('../../mpi/index.js');
    } catch (e) {
      throw new MoeTrainerError(
        'MPI_UNAVAILABLE',
        `the MPI addon is not built (${(e as Error).message.split('\n')[0]}). Install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev pkg-config) and run \`npm run build:mpi\``,
      );
    }
    const [rank, size] = mpi.mpiInit();
    return new MpiCommunicator(mpi, rank, size);
  }

  async allReduceSum(data: Float64Array | Float32Array): Promise<void> {
    if (data instanceof Float64Array) {
      data.set(await this.mpi.mpiAllReduceF64(data));
      return;
    }
    for (let at = 0; at < data.length; at += BUCKET) {
      const part = data.subarray(at, at + BUCKET);
      part.set(await this.mpi.mpiAllReduceF32(part));
    }
  }

  async broadcast(data: Float32Array, root: number): Promise<void> {
    for (let at = 0; at < data.length; at += BUCKET) {
      const part = data.subarray(at, at + BUCKET);
      part.set(await this.mpi.mpiBroadcastF32(part, root));
    }
  }

  barrier(): Promise<void> {
    return this.mpi.mpiBarrier();
  }

  /** MPI_Abort: every rank of the job stops now. */
  abort(err: Error): void {
    process.stderr.write(`moe: rank ${this.rank}: ${err.message}; aborting all ranks\n`);
    this.mpi.mpiAbort(1);
  }

  /** MPI_Finalize; required before a clean exit of every rank. */
  finalize(): void {
    this.mpi.mpiFinalize();
  }
}
