"""tap-edge: fit neural networks onto phones and microcontrollers."""

__version__ = "0.1.0"
