"""Evaluation outputs: the reports written by test runs."""
