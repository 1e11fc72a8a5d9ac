"""xnornet: binary neural networks (XNOR-Net, Bi-Real) for CIFAR-10, trained in PyTorch and run
by a native bitwise engine. Importing the package imports neither torch nor the native engine."""

__version__ = "0.1.0"
