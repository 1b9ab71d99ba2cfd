"""Batched VQA generation, metrics and scorers, zero-shot classification, chatbot judging."""
