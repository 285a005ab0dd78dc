"""Data: takes a dataset's source (torchvision files, npz, synthetic) and gives the compact uint8 file training
reads, its class counts, and each run's splits on the training device, augmented per batch there."""
