"""The plugin's trainer (nerfstudio's, with non-finite steps skipped, exact resume, CPU multi-process runs)."""
