// The balance module: scopes, the engine (Algorithm 1 and the exact variants), the frequency
// estimators, auxiliary-loss-free balancing, communicators.
export * from './balancer.js';
export * from './communicator.js';
export * from './config.js';
export * from './frequency.js';
export * from './loss-free.js';
export * from './mpi.js';
