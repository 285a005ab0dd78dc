"""Bench: takes a trained run's weights and gives its model's size, FLOPs, latency (the paper's procedure and a
correct one), throughput and memory on the GPU and the CPU."""
