"""The job: its sections (``data_config``, ``model_config``, ``train_config``), the whole job (``config``), the
grid (``sweep_grid``), the YAML reader (``strict_yaml``, ``job_file``).

Empty on purpose: ``core`` imports the sections' modules by their own names and never this package.
"""
