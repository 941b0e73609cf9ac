"""The scoring core: a prepared image -> p(malignant), and the patch classifier's maps over a whole image.

Below `data` and `engine` (training, evaluation and hard-negative patch mining score with it) and below `infer`
(the prediction runtime runs the same graph through its backends); it imports only `run`, `preprocess`, `utils`.
"""
