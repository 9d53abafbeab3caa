export * from './stats';
export * from './prometheus';
