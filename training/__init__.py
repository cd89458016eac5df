"""vcesdk.training: paired data (digital phantom), networks, methods, trainer.

Needs the ``train`` extra (torch, PyYAML, SciPy).
"""
