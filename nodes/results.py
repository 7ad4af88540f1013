"""EchoDistill Save Personalized (files stock ComfyUI uses) and EchoDistill Load Personalized."""

from __future__ import annotations

import torch

from ..echodistill_core.export import save_embedding, save_student_lora
from ..echodistill_core.personalization import Personalization
from . import comfyui_host as host
from .comfyui_host import io
from .loaders import file_fingerprint
from .sockets import CATEGORY, ONE_STEP_MODEL, PERSONALIZED_TEACHER, STUDENT, TEACHER, Personalized


def one_step_model_input(name: str, tooltip: str = "From EchoDistill Train or EchoDistill Load Personalized."):
    return io.Custom(ONE_STEP_MODEL).Input(name, tooltip=tooltip)


class SavePersonalized(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillSavePersonalized", display_name="EchoDistill Save Personalized", category=CATEGORY,
            description="Save the personalized student as a LoRA (models/loras) and the token as an embedding "
                        "(models/embeddings), for stock ComfyUI nodes; plus the whole result for EchoDistill Load "
                        "Personalized (models/echodistill). The node lists each file it wrote and its folder.",
            is_output_node=True, inputs=[
                one_step_model_input("model", "From EchoDistill Train."),
                io.String.Input("name", default="echodistill", tooltip="File name (no folders). In prompts of "
                                "stock workflows use embedding:<name>."),
                io.Boolean.Input("overwrite", default=False, optional=True, tooltip="Replace the files of this "
                                 "name from an earlier save. Off: a number is added (name_00001), nothing is "
                                 "replaced."),
            ])

    @classmethod
    def validate_inputs(cls, name=None):
        """At queue time: a plain file name."""
        if name is not None:
            try:
                host.safe_file_name(name)
            except ValueError as error:
                return f"name: {error}. Change it on the node and queue again."
        return True

    @classmethod
    def execute(cls, model: Personalized, name, overwrite=False):
        stem = host.safe_file_name(name)
        folders = {kind: host.model_folder(kind) for kind in ("embeddings", "loras")}
        folders[host.RESULTS_KIND] = host.results_folder()
        chosen, counter = stem, 0
        while not overwrite and any((folder / f"{stem}.safetensors").exists() for folder in folders.values()):
            counter += 1  # one name free in all three folders: the three files keep one name together
            stem = f"{chosen}_{counter:05d}"
        embedding, lora, result = (folders[kind] / f"{stem}.safetensors" for kind in folders)
        save_embedding(embedding, model.personalization)
        save_student_lora(lora, model.personalization, model.base.model.unet, stem)
        model.personalization.save(result)
        for kind in folders:
            host.refresh_model_list(kind)
        lines = [f"LoRA: {lora.name} in {lora.parent}",
                 f"embedding: {embedding.name} in {embedding.parent}; in prompts: embedding:{stem} "
                 f"{model.personalization.config.class_word}",
                 f"result: {result.name} in {result.parent} (EchoDistill Load Personalized lists it)"]
        return io.NodeOutput(ui={"text": lines})


NO_RESULTS = "(no saved results yet)"


def saved_results() -> list[str]:
    folder = host.results_folder()
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


class LoadPersonalized(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillLoadPersonalized", display_name="EchoDistill Load Personalized", category=CATEGORY,
            description="Bring a saved EchoDistill result back onto the base models it was trained on.",
            inputs=[
                io.Custom(TEACHER).Input("teacher", tooltip="The same teacher the result was trained with."),
                io.Custom(STUDENT).Input("student", tooltip="The same student the result was trained with."),
                io.Combo.Input("result", options=saved_results() or [NO_RESULTS], tooltip="A result in "
                               "models/echodistill: written by EchoDistill Save Personalized, or by EchoDistill "
                               "Train when a run finishes."),
            ],
            outputs=[io.Custom(ONE_STEP_MODEL).Output("one_step_model", display_name="one_step_model",
                                                      tooltip="The personalized one-step student."),
                     io.Custom(PERSONALIZED_TEACHER).Output(
                "personalized_teacher", display_name="teacher", tooltip="The personalized teacher.")])

    @classmethod
    def fingerprint_inputs(cls, result=None, **_):
        """The saved file as it is on disk: a result saved again under its name is loaded again."""
        return result, file_fingerprint(host.results_folder() / result) if result else None

    @classmethod
    def execute(cls, teacher, student, result):
        path = host.results_folder() / result
        if not path.is_file():
            raise ValueError(f"no saved result {result!r} in {host.results_folder()}; save one with EchoDistill Save "
                             "Personalized, or refresh the page and choose another")
        with torch.inference_mode(False):
            personalization = Personalization.load(path, teacher.model, student.model, teacher.text)
        return io.NodeOutput(Personalized(student, teacher.text, personalization, "student", personalization.history),
                             Personalized(teacher, teacher.text, personalization, "teacher", personalization.history))

