export * from './packets';
export * from './compat';
