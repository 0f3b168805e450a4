"""Front-ends: PyTorch (torch.fx), ONNX and TFLite files to one ModelGraph."""
