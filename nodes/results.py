"""Save Personalized (files stock ComfyUI uses) and Load Personalized."""

from __future__ import annotations

import torch

from ..echodistill_core.export import save_embedding, save_student_lora
from ..echodistill_core.personalization import Personalization
from . import comfy
from .sockets import CATEGORY, ONE_STEP_MODEL, PERSONALIZED_TEACHER, STUDENT, TEACHER, Personalized


class SavePersonalized:
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    DESCRIPTION = ("Save the personalized student as a LoRA (models/loras) and the token as an embedding "
                   "(models/embeddings), for stock ComfyUI nodes; plus the whole result for Load Personalized. "
                   "Existing files are never overwritten: a number is added.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (ONE_STEP_MODEL, {"tooltip": "From EchoDistill Train."}),
            "name": ("STRING", {"default": "echodistill", "tooltip": "File name (no folders). In prompts of stock "
                                "workflows use embedding:<name>."}),
        }}

    def save(self, model: Personalized, name):
        stem = comfy.safe_file_name(name)
        embedding = comfy.unused_path(comfy.model_folder("embeddings"), stem)
        lora = comfy.unused_path(comfy.model_folder("loras"), embedding.stem)
        result = comfy.unused_path(comfy.results_folder(), embedding.stem)
        save_embedding(embedding, model.personalization)
        save_student_lora(lora, model.personalization, model.base.model.unet, embedding.stem)
        model.personalization.save(result)
        for kind in ("loras", "embeddings", comfy.RESULTS_KIND):
            comfy.refresh_model_list(kind)
        lines = [f"LoRA: {lora}", f"embedding: {embedding} (prompt: embedding:{embedding.stem} "
                 f"{model.personalization.config.class_word})", f"result: {result}"]
        return {"ui": {"text": lines}}


class LoadPersonalized:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (ONE_STEP_MODEL, PERSONALIZED_TEACHER)
    RETURN_NAMES = ("one_step_model", "teacher")
    OUTPUT_TOOLTIPS = ("The personalized one-step student.", "The personalized teacher.")
    DESCRIPTION = "Bring a saved EchoDistill result back onto the base models it was trained on."

    @classmethod
    def INPUT_TYPES(cls):
        folder = comfy.results_folder()
        saved = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        return {"required": {
            "teacher": (TEACHER, {"tooltip": "The same teacher the result was trained with."}),
            "student": (STUDENT, {"tooltip": "The same student the result was trained with."}),
            "result": (saved or ["(no saved results yet)"], {"tooltip": "A file written by Save Personalized "
                       "(models/echodistill)."}),
        }}

    def load(self, teacher, student, result):
        path = comfy.results_folder() / result
        if not path.is_file():
            raise ValueError(f"no saved result {result!r} in {comfy.results_folder()}; save one with Save Personalized")
        with torch.inference_mode(False):
            personalization = Personalization.load(path, teacher.model, student.model, teacher.text)
        return (Personalized(student, teacher.text, personalization, "student", personalization.history),
                Personalized(teacher, teacher.text, personalization, "teacher", personalization.history))
