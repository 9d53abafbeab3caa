export * from './identity-file';
