"""SQuAD v1.1/v2.0 extractive QA: windows (preprocess), n-best answers (postprocess), official metrics,
a generated offline set in the SQuAD schema (synthetic) and the task classes (task)."""
