"""EchoDistill Save Personalized (files stock ComfyUI uses) and EchoDistill Load Personalized."""

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
                   "(models/embeddings), for stock ComfyUI nodes; plus the whole result for EchoDistill Load "
                   "Personalized (models/echodistill). The node lists each file it wrote and its folder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (ONE_STEP_MODEL, {"tooltip": "From EchoDistill Train."}),
            "name": ("STRING", {"default": "echodistill", "tooltip": "File name (no folders). In prompts of stock "
                                "workflows use embedding:<name>."}),
        }, "optional": {
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace the files of this name from an earlier "
                          "save. Off: a number is added (name_00001), nothing is replaced."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        """At queue time: a plain file name."""
        if name is not None:
            try:
                comfy.safe_file_name(name)
            except ValueError as error:
                return f"name: {error}. Change it on the node and queue again."
        return True

    def save(self, model: Personalized, name, overwrite=False):
        stem = comfy.safe_file_name(name)
        folders = {kind: comfy.model_folder(kind) for kind in ("embeddings", "loras")}
        folders[comfy.RESULTS_KIND] = comfy.results_folder()
        chosen, counter = stem, 0
        while not overwrite and any((folder / f"{stem}.safetensors").exists() for folder in folders.values()):
            counter += 1  # one name free in all three folders: the three files keep one name together
            stem = f"{chosen}_{counter:05d}"
        embedding, lora, result = (folders[kind] / f"{stem}.safetensors" for kind in folders)
        save_embedding(embedding, model.personalization)
        save_student_lora(lora, model.personalization, model.base.model.unet, stem)
        model.personalization.save(result)
        for kind in folders:
            comfy.refresh_model_list(kind)
        lines = [f"LoRA: {lora.name} in {lora.parent}",
                 f"embedding: {embedding.name} in {embedding.parent}; in prompts: embedding:{stem} "
                 f"{model.personalization.config.class_word}",
                 f"result: {result.name} in {result.parent} (EchoDistill Load Personalized lists it)"]
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
            "result": (saved or ["(no saved results yet)"], {"tooltip": "A result in models/echodistill: written by "
                       "EchoDistill Save Personalized, or by EchoDistill Train when a run finishes."}),
        }}

    def load(self, teacher, student, result):
        path = comfy.results_folder() / result
        if not path.is_file():
            raise ValueError(f"no saved result {result!r} in {comfy.results_folder()}; save one with EchoDistill Save "
                             "Personalized, or refresh the page and choose another")
        with torch.inference_mode(False):
            personalization = Personalization.load(path, teacher.model, student.model, teacher.text)
        return (Personalized(student, teacher.text, personalization, "student", personalization.history),
                Personalized(teacher, teacher.text, personalization, "teacher", personalization.history))
