"""Ensemble-Hub core engine."""
