"""`td3-jax bench`: speed of the update, acting, replay, the simulator and the training loop, against PyTorch references."""
