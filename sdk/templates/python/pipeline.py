"""{{name}}: a pipeline (world `weir:host/pipeline`, export `weir:host/pipeline-handler`).

Batch jobs: with the manifest's `model` set (`capability/model-id`, granted in
`[permissions] models`), each job's inputs go through that model of the node and its outputs
are the answer; without it the inputs come back as they are. Live streams: every segment is
published as it came; a control message `{"pause": true}` holds segments back until
`{"pause": false}`.
"""

from typing import List

import weir_sdk
from wit_world import exports
from wit_world.imports import media, models, types

from logic import model_of, pause_of

# One instance serves one stream, so its state is plain module state (reset by on_start).
_paused = False


class PipelineHandler(exports.PipelineHandler):
    def run(self, job: exports.pipeline_handler.Job) -> exports.pipeline_handler.JobOutput:
        setting = weir_sdk.config_str("model")
        if setting is None:
            count = types.Param(name="inputs", value=types.ParamValue_Integer(len(job.inputs)))
            return exports.pipeline_handler.JobOutput(blobs=job.inputs, params=[count])
        model = model_of(setting)
        if model is None:
            raise weir_sdk.config_error(f"model `{setting}` must be `capability/model-id`")
        out = models.invoke(model[0], model[1], job.request.params, job.inputs)
        return exports.pipeline_handler.JobOutput(blobs=out.blobs, params=out.params)

    def on_start(self, info: exports.pipeline_handler.StreamInfo) -> None:
        global _paused
        _paused = False
        weir_sdk.info(f"stream {info.id} started")

    def on_segment(self, segment: media.Segment) -> List[media.Segment]:
        return [] if _paused else [segment]

    def on_control(self, message: str) -> None:
        global _paused
        pause = pause_of(message)
        if pause is not None:
            _paused = pause

    def on_stop(self) -> None:
        pass
