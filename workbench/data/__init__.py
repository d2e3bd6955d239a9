"""Images, benchmark sets, MATLAB-compatible resizing and training data."""
