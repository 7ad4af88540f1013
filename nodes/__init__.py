"""The ComfyUI face of EchoDistill: node declarations that delegate to `echodistill_core`.

The nodes themselves (Load Teacher / Student, Concept Images, EchoDistill Train, One-Step
Personalized Sample, Teacher Sample, Save / Load Personalized) are the ComfyUI node-pack issue's
work; until they land the pack registers no nodes, so ComfyUI loads it without error.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
