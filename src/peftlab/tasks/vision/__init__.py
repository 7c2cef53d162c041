"""Image-classification task families (timm backbones, head ``image_cls``).

- :mod:`.vtab` — VTAB-1k, 19 tasks in 3 groups (``task=vtab/<folder>``), read from the prepared list-file layout.
- :mod:`.digits` — scikit-learn's 8×8 digits in the same path, the offline stand-in (``task=digits``).
- :mod:`.report` — per-task top-1, group means and both overall VTAB averages from run records.

The families register themselves with ``peftlab.tasks.TASKS`` when the registry discovers these modules.
"""
