"""The embedded lane-keeping simulator: roads, traffic, the camera, the env and the pure-pursuit baseline."""
