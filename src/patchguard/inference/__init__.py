"""Using a trained model on new images: decision thresholds, the detector, the model card,
export to other runtimes, and the import of the authors' checkpoints.
"""
