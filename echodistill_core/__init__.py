"""EchoDistill: personalize a one-step text-to-image model by co-training it with a multi-step teacher.

The core library: no ComfyUI import anywhere below this package. See `trainer.py` for one iteration
of the method and `losses.py` for its losses; `recipe.py` puts a run together (its defaults, and every
check made before a model loads) for the command line, the nodes and the benchmarks alike. `lab/` is the
proving ground the method is tried on (the tiny world of coloured shapes, its judge, the yardstick, the
baselines, the demo), not the method.
"""

from .config import PRESETS, EchoDistillConfig
from .data import ConceptDataset
from .loading import load_diffusers_folder, load_model
from .models import DiffusionModel, TextConditioner, check_pair
from .personalization import Personalization
from .sampling import generate_student, generate_teacher
from .trainer import EchoDistillTrainer, StepReport

__all__ = [
    "PRESETS", "EchoDistillConfig", "ConceptDataset", "load_diffusers_folder", "load_model", "DiffusionModel", "TextConditioner",
    "check_pair", "Personalization", "generate_student", "generate_teacher", "EchoDistillTrainer", "StepReport",
]
