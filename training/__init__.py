"""Accelerate-based training: recipes (YAML), the trainer, export to ``models/<id>`` and regeneration."""
