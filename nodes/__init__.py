"""The ComfyUI face of EchoDistill: V3 node declarations that delegate to `echodistill_core`.

All contact with ComfyUI goes through `comfyui_host.py`; node ids are saved in workflow files, so they are
prefixed with the pack name and never renamed. Display names all begin with "EchoDistill", so the node
search finds every node of the pack by that word and lists them together.
"""

from .comfyui_host import ComfyExtension
from .image_networks import LoadImageNetworks
from .loaders import LoadStudent, LoadTeacher
from .results import LoadPersonalized, SavePersonalized
from .sampling import OneStepSample, TeacherSample
from .scoring import PaperMetrics
from .stock import EncodePrompt, PersonalizedModel, StudentFromCheckpoint, TeacherFromCheckpoint
from .training import ConceptImages, DemoConceptImages, EchoDistillTrain

NODES = [LoadTeacher, LoadStudent, TeacherFromCheckpoint, StudentFromCheckpoint, LoadImageNetworks, DemoConceptImages,
         ConceptImages, EchoDistillTrain, OneStepSample, TeacherSample, SavePersonalized, LoadPersonalized,
         PersonalizedModel, EncodePrompt, PaperMetrics]


class EchoDistillExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> EchoDistillExtension:
    """ComfyUI's V3 entry point: it registers each node under its schema's node_id."""
    return EchoDistillExtension()
