// moe-trainer: the library entry point.
export { MoeLayer } from '../index.js';
export type { AdamWOptions, ForwardOptions, ForwardResult, MoeLayerConfig, ParameterInfo, RoutingStats } from '../index.js';
export * from './balance/index.js';
