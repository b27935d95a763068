"""Helpers the test modules share (pytest's `pythonpath` holds `tests/`): test data (`helpers.data`), project
copies and tiny stage projects (`helpers.projects`), drop-area projects (`helpers.drops`), the CLIP-ES
reference and tiny CLIPs (`helpers.clip_es`). Test modules import these, never each other."""
