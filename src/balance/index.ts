// The balance module: scopes, the engine (Algorithm 1 and the exact variants), communicators.
export * from './balancer.js';
export * from './communicator.js';
export * from './config.js';
export * from './mpi.js';
