"""The ComfyUI face of EchoDistill: node declarations that delegate to `echodistill_core`.

All contact with ComfyUI goes through `comfy.py`; node ids are saved in workflow files, so they are
prefixed with the pack name and never renamed.
"""

from .image_networks import LoadImageNetworks
from .loaders import LoadStudent, LoadTeacher
from .results import LoadPersonalized, SavePersonalized
from .sampling import OneStepSample, TeacherSample
from .training import ConceptImages, DemoConceptImages, EchoDistillTrain

NODES = {
    "EchoDistillLoadTeacher": (LoadTeacher, "Load Teacher (EchoDistill)"),
    "EchoDistillLoadStudent": (LoadStudent, "Load Student (EchoDistill)"),
    "EchoDistillLoadImageNetworks": (LoadImageNetworks, "Load Image Networks (EchoDistill)"),
    "EchoDistillDemoConceptImages": (DemoConceptImages, "Demo Concept Images (EchoDistill)"),
    "EchoDistillConceptImages": (ConceptImages, "Concept Images (EchoDistill)"),
    "EchoDistillTrain": (EchoDistillTrain, "EchoDistill Train"),
    "EchoDistillOneStepSample": (OneStepSample, "One-Step Personalized Sample"),
    "EchoDistillTeacherSample": (TeacherSample, "Teacher Sample (EchoDistill)"),
    "EchoDistillSavePersonalized": (SavePersonalized, "Save Personalized (EchoDistill)"),
    "EchoDistillLoadPersonalized": (LoadPersonalized, "Load Personalized (EchoDistill)"),
}
NODE_CLASS_MAPPINGS = {node_id: node for node_id, (node, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, (_, name) in NODES.items()}
