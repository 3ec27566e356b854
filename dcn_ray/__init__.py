"""dcn-ray: tune the Deep Contextual Network for EM-stack segmentation on Ray, tracked in MLflow."""

__version__ = "0.1.0"
