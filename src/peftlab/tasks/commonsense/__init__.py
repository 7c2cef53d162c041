"""Commonsense reasoning with decoder LLMs: the LLM-Adapters protocol that SMT and DoRA report.

Train on ``commonsense_170k``, evaluate by generation on BoolQ, PIQA, SIQA, HellaSwag, WinoGrande,
ARC-e, ARC-c and OBQA. ``prompt`` (templates, label masking), ``extraction`` (answer regexes,
accuracy), ``data`` (the JSON files), ``synthetic`` (offline stand-in data), ``task`` (the Task).
"""
