"""The engines that read pages: base.py is the seam, one module per engine (see base.py)."""
