"""The ComfyUI face of EchoDistill: node declarations that delegate to `echodistill_core`.

All contact with ComfyUI goes through `comfy.py`; node ids are saved in workflow files, so they are
prefixed with the pack name and never renamed. Display names all begin with "EchoDistill", so the node
search finds every node of the pack by that word and lists them together.
"""

from .image_networks import LoadImageNetworks
from .loaders import LoadStudent, LoadTeacher
from .results import LoadPersonalized, SavePersonalized
from .sampling import OneStepSample, TeacherSample
from .stock import EncodePrompt, PersonalizedModel, StudentFromCheckpoint, TeacherFromCheckpoint
from .training import ConceptImages, DemoConceptImages, EchoDistillTrain

NODES = {
    "EchoDistillLoadTeacher": (LoadTeacher, "EchoDistill Load Teacher"),
    "EchoDistillLoadStudent": (LoadStudent, "EchoDistill Load Student"),
    "EchoDistillTeacherFromCheckpoint": (TeacherFromCheckpoint, "EchoDistill Teacher from Checkpoint"),
    "EchoDistillStudentFromCheckpoint": (StudentFromCheckpoint, "EchoDistill Student from Checkpoint"),
    "EchoDistillLoadImageNetworks": (LoadImageNetworks, "EchoDistill Load Image Networks"),
    "EchoDistillDemoConceptImages": (DemoConceptImages, "EchoDistill Demo Concept Images"),
    "EchoDistillConceptImages": (ConceptImages, "EchoDistill Concept Images"),
    "EchoDistillTrain": (EchoDistillTrain, "EchoDistill Train"),
    "EchoDistillOneStepSample": (OneStepSample, "EchoDistill One-Step Sample"),
    "EchoDistillTeacherSample": (TeacherSample, "EchoDistill Teacher Sample"),
    "EchoDistillSavePersonalized": (SavePersonalized, "EchoDistill Save Personalized"),
    "EchoDistillLoadPersonalized": (LoadPersonalized, "EchoDistill Load Personalized"),
    "EchoDistillPersonalizedModel": (PersonalizedModel, "EchoDistill Personalized Model"),
    "EchoDistillEncodePrompt": (EncodePrompt, "EchoDistill Encode Prompt"),
}
NODE_CLASS_MAPPINGS = {node_id: node for node_id, (node, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, (_, name) in NODES.items()}
