"""Prediction on new files: Predictor, heatmaps, ONNX export and runtime."""
