"""Using a trained model on new images: decision thresholds, the detector, the model card and
export to other runtimes.
"""
