"""The lab: the proving ground the method is tried on, not the method.

- `world.py`: a procedural world of coloured shapes on plain backgrounds at 32 px, where every generated
  image can be checked against its prompt from its pixels; the bundled tiny models are trained on it
  (their files stay in `echodistill_core/assets/tiny/`);
- `judge.py`: a small CNN trained on world images only, the feature space for concept fidelity (as DINO
  is in the paper), and the attribute metrics built on it;
- `evaluation.py`: the yardstick: calibrated fidelity, recognition, prompt fidelity and what a
  personalization kept, for the demo's report and `bench/quality.py`;
- `baselines.py`: the alternatives EchoDistill is compared with (Textual Inversion, Custom Diffusion on
  one model);
- `demo.py`: the demo concept ("my circle") and the default models a fresh machine runs;
- `tiny.py`: tiny random teacher/student pairs built from configs (tests, benchmarks) and the bundled
  trained pairs.

The method itself (the trainer, its losses, the adapters, the samplers) lives one level up and never
imports from here; the command line, the run recipe (which knows the bundled tiny models by their
folder), the paper's metrics (the judge stands in for DINO on the tiny models), the nodes, the tools, the
benchmarks and the tests do.
"""
