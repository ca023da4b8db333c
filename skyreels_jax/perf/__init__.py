"""What a step costs, as library code train/ and the planning tools share: analytic FLOPs of
the MMDiT (flops.py, for MFU) and the per-device memory model of a training step (memory.py).
The command-line front ends are in tools/ (aot.py, max_sequence.py)."""
