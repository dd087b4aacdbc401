// pipeline-fps-js: a live pipeline (world `weir:host/pipeline`, export
// `weir:host/pipeline-handler`) that re-encodes every segment at the source size and a target
// frame rate, through the host's transcoder (`transcode.ladder` with one rendition).
//
// Start param `fps` (1..=60, default 15, or the manifest's `default_fps`); control message
// `{"fps": N}` changes it from the next segment on; `{"keep":"alive"}` is ignored. Bad values
// are `invalid-request` errors; a bad control message leaves the rate as it was.

import { ladder } from 'weir:host/transcode@0.1.0';

import { configBigInt, invalidRequest, log, unsupported } from '../../sdk/js/weir.js';
import { DEFAULT_FPS, FpsError, MAX_FPS, MIN_FPS, parseControl, rendition, startFps } from './fps.js';

// One instance serves one stream, so the rate is plain module state (reset by onStart).
let fps = DEFAULT_FPS;

/** Run `f`, turning a bad client value (FpsError) into an `invalid-request` error. */
function clientValue(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof FpsError) throw invalidRequest(e.message);
    throw e;
  }
}

/** `run: func(job: job) -> result<job-output, error>` */
function run(_job) {
  throw unsupported('pipeline-fps-js only processes live streams; batch jobs are not supported');
}

/** `on-start: func(info: stream-info) -> result<_, error>` */
function onStart(info) {
  const fallback = Number(
    configBigInt('default_fps', String(DEFAULT_FPS), { min: BigInt(MIN_FPS), max: BigInt(MAX_FPS) }),
  );
  fps = clientValue(() => startFps(info.params, fallback));
  log.info(`stream ${info.id}: re-encoding at ${fps} fps`);
}

/** `on-segment: func(segment: segment) -> result<list<segment>, error>` */
function onSegment(segment) {
  try {
    const info = segment.probe();
    const target = clientValue(() => rendition(info, fps));
    return ladder(segment, [target]);
  } finally {
    // Give the source segment back to the host now rather than whenever the GC runs.
    segment[Symbol.dispose]?.();
  }
}

/** `on-control: func(message: string) -> result<_, error>` */
function onControl(message) {
  const next = clientValue(() => parseControl(message));
  if (next !== null && next !== fps) {
    log.info(`fps ${fps} -> ${next}`);
    fps = next;
  }
}

/** `on-stop: func()` */
function onStop() {}

/** The `weir:host/pipeline-handler` interface this component exports. */
export const pipelineHandler = { run, onStart, onSegment, onControl, onStop };
