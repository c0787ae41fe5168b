"""
Coverage-guided fuzz targets (atheris, libFuzzer), one per file; see README.md.
"""
