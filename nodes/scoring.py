"""EchoDistill Paper Metrics: CLIP-I, DINO and CLIP-T of a personalized model against its concept's photos."""

from __future__ import annotations

from ..echodistill_core.paper_metrics import (PAPER_SEEDS, dreambench_prompts, evaluate_concept, load_judges,
                                              read_prompts)
from . import comfyui_host as host
from .comfyui_host import io
from .sockets import CATEGORY, CONCEPT, ONE_STEP_MODEL, PERSONALIZED_TEACHER, Concept, Personalized

NONE = "none"
NETWORKS = {  # input -> ComfyUI's model folder kind it lists (weights files and transformers folders)
    "clip": "clip_vision",
    "dino": host.DINO_KIND,
}


def network_choices(name: str) -> list[str]:
    return [NONE] + host.weights_and_model_folders(NETWORKS[name])


class PaperMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillPaperMetrics", display_name="EchoDistill Paper Metrics", category=CATEGORY,
            description="Score a personalized model by the paper's protocol (seeds 0-3 per prompt, one step for "
                        "the student): CLIP-I and DINO (how much its samples look like the photos) and CLIP-T (how "
                        "well they follow the prompts), beside the same model untouched, given the class word. Uses "
                        "your CLIP and DINO files; without them, what the pack has (named in the table).",
            is_output_node=True, hidden=[io.Hidden.unique_id], inputs=[
                io.Custom(ONE_STEP_MODEL).Input("one_step_model", tooltip="From EchoDistill Train or EchoDistill "
                                                "Load Personalized."),
                io.Custom(PERSONALIZED_TEACHER).Input("teacher", tooltip="The teacher output of the same node: "
                                                      "scored when role is teacher, and its features stand in when "
                                                      "no image network is chosen."),
                io.Custom(CONCEPT).Input("concept", tooltip="The concept's photos (EchoDistill Concept Images)."),
                io.Combo.Input("clip", options=network_choices("clip"), default=NONE, tooltip="A CLIP model in "
                               "models/clip_vision for CLIP-I and CLIP-T. CLIP-T needs the whole model (a "
                               "transformers folder such as openai/clip-vit-large-patch14-336, the paper's, or its "
                               "model.safetensors); an image tower alone gives CLIP-I. none: no CLIP figure."),
                io.Combo.Input("dino", options=network_choices("dino"), default=NONE, tooltip="DINO or DINOv2 in "
                               "models/dino (the paper's: DINOv2 ViT-L/14, facebook/dinov2-large), a transformers "
                               "folder or weights file. none: no DINO figure."),
                io.String.Input("prompts", multiline=True, default="", tooltip="One prompt a line, {} where the "
                                "subject goes ('<token> <class word>', or the class word for the untouched model). "
                                "Empty: DreamBench's 25 (its live subjects' for a dog or a cat)."),
                io.Int.Input("seeds", default=len(PAPER_SEEDS), min=1, max=16, tooltip="Seeds 0 to seeds - 1 for "
                             "every prompt (the paper: 4)."),
                io.Combo.Input("role", options=["student", "teacher"], default="student", tooltip="student: one "
                               "step (the paper's figures); teacher: DDIM 25 steps with the run's guidance."),
            ],
            outputs=[io.String.Output("table", tooltip="The figures as a Markdown table, with the networks."),
                     io.Image.Output("grid", tooltip="The photos on the first row, then a row per prompt: the "
                                     "personalized model's samples, a gap, the untouched model's.")])

    @classmethod
    def validate_inputs(cls, prompts=None, clip=None, dino=None):
        """At queue time: prompts with a place for the subject, and chosen networks that are there."""
        for name, value in (("clip", clip), ("dino", dino)):
            if value not in (None, NONE) and value not in network_choices(name):
                return (f"{name}: {value} is not in ComfyUI's models/{NETWORKS[name]} folder; put it there and "
                        "refresh the page, or choose another")
        if prompts is not None and prompts.strip():
            try:
                read_prompts(prompts)
            except ValueError as error:
                return str(error)
        return True

    @classmethod
    def execute(cls, one_step_model: Personalized, teacher: Personalized, concept: Concept, clip, dino, prompts,
                seeds, role):
        paths = {name: None if value == NONE else host.model_path(NETWORKS[name], value)
                 for name, value in (("clip", clip), ("dino", dino))}
        judges = load_judges(paths["clip"], paths["dino"])
        prompt_list = read_prompts(prompts) if prompts.strip() else list(dreambench_prompts(concept.class_word))
        progress = host.Progress(2 * len(prompt_list), cls.hidden.unique_id)

        def after_each_prompt(done, total):  # the bar moves; Cancel stops between prompts
            progress.update(done)
            host.throw_if_interrupted()

        host.use([teacher.base.model, one_step_model.base.model], [one_step_model.text],
                  personalization=one_step_model.personalization)  # onto the device through ComfyUI
        scores = evaluate_concept(teacher.base.model, one_step_model.base.model, one_step_model.text,
                                  one_step_model.personalization, concept.images, judges, prompts=tuple(prompt_list),
                                  seeds=tuple(range(seeds)), role=role, progress=after_each_prompt)
        table = scores.table()
        return io.NodeOutput(table, scores.grid[None], ui={"text": table.splitlines()})
