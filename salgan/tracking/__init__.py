"""MLflow, by concern: where it is and what to do when it does not answer (:mod:`.store`), the run of a
pipeline run and its tags (:mod:`.runs`), the generator as an MLflow model (:mod:`.models`), and the
registry with its alias policy and promotion rule (:mod:`.registry`).

One MLflow run per pipeline run: train opens it, evaluate, predict and package continue it. MLflow never
stops the pipeline: a failing server costs one warning. Import the submodule you need (this package's
own import stays empty, so a stage loads only the MLflow code it uses).
"""
