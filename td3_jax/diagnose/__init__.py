"""`td3-jax diagnose`: reads a run's TensorBoard scalars and names what went wrong and why."""
