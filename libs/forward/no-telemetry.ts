// Imported before onnxruntime-node: its telemetry, on unless this is set, writes mat-debug-<pid>.log and .ses into
// $TMPDIR and a device id database under ~/.cache on every session, outside anything a build may write.
process.env.ORT_DISABLE_TELEMETRY = '1';

export {};
