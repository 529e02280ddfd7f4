"""Experiment tooling: seed sweeps, result tables against published numbers, plots."""
