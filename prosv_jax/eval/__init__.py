"""Evaluation: judges, the AxBench steering score, baselines, utility and robustness."""
