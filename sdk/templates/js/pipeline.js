// {{name}}: a pipeline (world `weir:host/pipeline`, export `weir:host/pipeline-handler`).
//
// Batch jobs: with the manifest's `model` set (`capability/model-id`, granted in
// `[permissions] models`), each job's inputs go through that model of the node and its outputs
// are the answer; without it the inputs come back as they are. Live streams: every segment is
// published as it came; a control message `{"pause": true}` holds segments back until
// `{"pause": false}`.

import { invoke } from 'weir:host/models@0.1.0';

import { configError, configString, log } from './.weir/sdk/js/weir.js';
import { modelOf, pauseOf } from './logic.js';

// One instance serves one stream, so its state is plain module state (reset by onStart).
let paused = false;

/** `run: func(job: job) -> result<job-output, error>` */
function run(job) {
  const setting = configString('model');
  if (setting === undefined) {
    return {
      blobs: job.inputs,
      params: [{ name: 'inputs', value: { tag: 'integer', val: BigInt(job.inputs.length) } }],
    };
  }
  const model = modelOf(setting);
  if (model === null) throw configError(`model \`${setting}\` must be \`capability/model-id\``);
  const out = invoke(model.capability, model.modelId, job.request.params, job.inputs);
  return { blobs: out.blobs, params: out.params };
}

/** `on-start: func(info: stream-info) -> result<_, error>` */
function onStart(info) {
  paused = false;
  log.info(`stream ${info.id} started`);
}

/** `on-segment: func(segment: segment) -> result<list<segment>, error>` */
function onSegment(segment) {
  if (paused) {
    // Give the segment back to the host now rather than whenever the GC runs.
    segment[Symbol.dispose]?.();
    return [];
  }
  return [segment];
}

/** `on-control: func(message: string) -> result<_, error>` */
function onControl(message) {
  const pause = pauseOf(message);
  if (pause !== null) paused = pause;
}

/** `on-stop: func()` */
function onStop() {}

/** The `weir:host/pipeline-handler` interface this component exports. */
export const pipelineHandler = { run, onStart, onSegment, onControl, onStop };
