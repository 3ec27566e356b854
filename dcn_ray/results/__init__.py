"""The science of a sweep's result rows, with no MLflow I/O: per-configuration results (``summary``), the
follow-ups' verdict (``verdict``), what the seeds can detect (``power``), the table (``report``), the charts.
"""
